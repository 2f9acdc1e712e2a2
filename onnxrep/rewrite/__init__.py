"""The rewrite engine: rules applied to a fixed point, each applied rewrite recorded."""
