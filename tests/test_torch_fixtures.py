"""Real PyTorch exports (tools/export_fixtures.py): train becomes deploy, for every variant users export.

For every block and variant (exporter, opset, float32/float16, dynamic batch or
batch+height+width, trained or untrained), optimize(train) verifies, has the
deploy twin's op histogram or fewer nodes, and equals the deploy twin's outputs:
at the example size, and for dynamic height and width at an odd size too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import histogram, run

import onnxrep
from onnxrep.verify.check import verify_at

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [(block, variant) for block, entry in MANIFEST["blocks"].items() for variant in entry["files"]]
IDS = [f"{b}-{v}" for b, v in CASES]


def feeds(model: onnx.ModelProto, hw: tuple[int, int], seed: int = 5) -> dict[str, np.ndarray]:
    """Random inputs: the declared dims, batch 2 and ``hw`` for the dynamic ones."""
    (value,) = model.graph.input
    declared = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    shape = [d if d is not None else (2, None, *hw)[i] for i, d in enumerate(declared)]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return {value.name: np.random.default_rng(seed).standard_normal(shape).astype(dtype)}


def sizes(block: str, variant: str) -> list[tuple[int, int]]:
    dynamic_hw = MANIFEST["blocks"][block]["input_shape"][variant][2] == "height"
    return [(16, 16), tuple(MANIFEST["odd_input_hw"])] if dynamic_hw else [(16, 16)]


def tolerance(model: onnx.ModelProto) -> float:
    """float16's outputs differ by its own roundings (the twins fold in another order): 1e-2 of the scale."""
    half = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    return 1e-2 if half else 1e-5


@pytest.mark.parametrize("block,variant", CASES, ids=IDS)
def test_train_export_becomes_deploy(block, variant):
    files = MANIFEST["blocks"][block]["files"][variant]
    train = onnx.load(FIXTURES / files["train"])
    deploy = onnx.load(FIXTURES / files["deploy"])
    optimized, report = onnxrep.optimize(train)
    assert report.verification.passed and not report.dropped, report.format(verbose=True)
    assert report.fired, report.format(verbose=True)
    if histogram(optimized) != histogram(deploy):
        assert len(optimized.graph.node) < len(deploy.graph.node), report.format(verbose=True)
    atol = tolerance(train)
    for hw in sizes(block, variant):
        x = feeds(train, hw)
        want = run(deploy, x)[0].astype(np.float64)
        got = run(optimized, x)[0].astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=max(atol, 1e-4), atol=atol * float(np.abs(want).max()),
                                   err_msg=f"input {hw}")


@pytest.mark.parametrize("block,variant", CASES, ids=IDS)
def test_deploy_twin_passes_the_output_check(block, variant):
    """The author's own conversion is exact: the noise-floor check must accept it."""
    files = MANIFEST["blocks"][block]["files"][variant]
    result = verify_at(onnx.load(FIXTURES / files["train"]), onnx.load(FIXTURES / files["deploy"]), local=False)
    assert result.passed, result.outputs


UNTRAINED = [(b, v) for b, v in CASES if not MANIFEST["variants"][v]["trained"]]


@pytest.mark.parametrize("block,variant", UNTRAINED, ids=[f"{b}-{v}" for b, v in UNTRAINED])
def test_untrained_export_shares_weights_and_still_folds(block, variant):
    """torch's initialization makes BatchNorm parameters equal: TorchScript deduplicates them (one
    initializer read by several nodes, or renamed through Identity). Every BatchNormalization folds."""
    train = onnx.load(FIXTURES / MANIFEST["blocks"][block]["files"][variant]["train"])
    reads = [name for node in train.graph.node for name in node.input]
    shared = {i.name for i in train.graph.initializer if reads.count(i.name) > 1}
    aliases = [n for n in train.graph.node if n.op_type == "Identity"]
    assert shared or aliases
    optimized, report = onnxrep.optimize(train)
    assert "BatchNormalization" not in histogram(optimized), report.format(verbose=True)
    assert "Identity" not in histogram(optimized)
    assert not any("is shared with" in f.reason for f in report.refusals), report.format(verbose=True)
