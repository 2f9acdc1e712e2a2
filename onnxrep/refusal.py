"""Why a rewrite is not made: :class:`Refused`, raised by the algebra, the IR and the rules alike.

Every refusal carries a stable ``code`` (tests, hints and the JSON report use it;
the list is :data:`CODES`) and a human ``reason`` naming the nodes involved. The
engine turns a refusal raised while matching into a report line; a function that
can refuse says so by raising, never by returning a refusal.
"""

from __future__ import annotations

#: Every refusal code, with what it means.
CODES = {
    "read-elsewhere": "a tensor the rewrite removes is also read by another node, or is a graph output",
    "graph-input": "a parameter is a graph input: it can be overridden at run time",
    "not-constant": "a parameter is computed at run time",
    "shared-weight": "a weight other nodes read too, too big to copy",
    "training-mode": "a BatchNormalization in training mode, or whose running statistics are read",
    "not-per-channel": "an elementwise constant that is not per channel: it broadcasts, or has another dtype",
    "layout": "the ops do not run along the same channel axis, or a reshape mixes it with others",
    "shape-unknown": "a rank, channel count or dim the rewrite needs is not known",
    "costlier": "the result would cost more multiply-adds per pixel, or more nodes, than what it replaces",
    "no-linear-op": "an affine with no Conv, Gemm or MatMul right before it to fold into (a Cast, a Relu between)",
    "not-aligned": "the branches' strides, pads, taps, channels or output shapes do not line up",
    "not-exact": "the rewrite would change values (zero padding where a bias would be seen, ...)",
    "unsupported": "a form the rule does not handle (ceil_mode, auto_pad with strides, transA, rank, ...)",
    "not-zero-pad": "a Pad that is not a zero pad of the spatial axes",
    "border": "border writes that are not the conv's bias on exactly its padded border",
    "fused-pattern": "an op that runtimes fuse with its neighbours (a GELU's closing Mul)",
    "rule-error": "the rule raised an unexpected exception: a bug, left alone and counted in the report",
}


class Refused(Exception):
    """A rewrite that is not exact, not worth it, or not understood: ``code`` (a key of CODES) and ``reason``.

    ``where`` names the place when the rule knows better than the node it started from.
    """

    def __init__(self, code: str, reason: str, where: str | None = None):
        assert code in CODES, code
        super().__init__(reason)
        self.code, self.reason, self.where = code, reason, where

    def __repr__(self) -> str:
        return f"Refused({self.code!r}, {self.reason!r})"
