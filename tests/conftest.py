import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def rule_errors_raise(monkeypatch):
    """A rule that raises is a bug: in the tests it fails the test instead of becoming a refusal
    (tests of that safety net set RULE_ERRORS back to "refuse")."""
    from onnxrep.rewrite import engine

    monkeypatch.setattr(engine, "RULE_ERRORS", "raise")
