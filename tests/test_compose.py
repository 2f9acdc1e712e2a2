"""onnxrep composes with onnx-simplifier and onnxslim, in either order (integration tests: tests/integration.py).

The README says so: a user who already runs one of them keeps it, before or after onnxrep.
"""

from __future__ import annotations

from pathlib import Path

import integration
import numpy as np
import onnx
import pytest
from helpers import histogram, random_feeds, run

import onnxrep

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # model: the ops onnxrep alone leaves
    ROOT / "models" / "repvgg.train.onnx": {"Conv": 8, "Relu": 8, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
    ROOT / "tests" / "fixtures" / "torch" / "dbb.ts.train.onnx": None,  # the deploy twin's, below
}


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    onnxsim = integration.module("onnxsim")
    simplified, ok = onnxsim.simplify(model)
    assert ok
    return simplified


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    onnxslim = integration.module("onnxslim")
    return onnxslim.slim(model)


@pytest.mark.parametrize("tool", [_simplify, _slim], ids=["onnxsim", "onnxslim"])
@pytest.mark.parametrize("path", list(MODELS), ids=lambda p: p.name)
def test_either_order_gives_the_deploy_graph(path, tool):
    original = onnx.load(path)
    expected = MODELS[path] or histogram(onnx.load(str(path).replace(".train.", ".deploy.")))
    feeds = random_feeds(original)
    reference = run(original, feeds)
    ours, _ = onnxrep.optimize(original)
    theirs_then_ours, _ = onnxrep.optimize(tool(original))
    for label, model in (("onnxrep, then the tool", tool(ours)), ("the tool, then onnxrep", theirs_then_ours)):
        onnx.checker.check_model(model, full_check=True)
        assert histogram(model) == expected, label
        for want, got in zip(reference, run(model, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=label)
