"""Issue 21: PEFT adapters (LoRA, DoRA), BatchNorm after Concat, quantized (Q/DQ) graphs.

Fixtures from tools/export_adapters.py (tests/fixtures/adapters/): each train export, optimized,
verifies, reaches its twin's op histogram (PEFT's merge_and_unload(), or a hand fusion of the
BatchNorm after a Concat) or fewer nodes with no more of any op, and equals the twin's outputs.
The negatives (a Concat on another axis, a producer read elsewhere, a broadcasting constant, a
Q/DQ model's branches) hold too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import histogram, optimize_and_check, run
from onnx import numpy_helper

import onnxrep
from onnxrep.testing import GraphBuilder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "adapters"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

CASES = [pytest.param(case, exporter, id=f"{case}.{exporter}")
         for case, entry in MANIFEST["cases"].items() for exporter in entry["files"]]


def load_pair(case: str, exporter: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    files = MANIFEST["cases"][case]["files"][exporter]
    return onnx.load(FIXTURES / files["train"]), onnx.load(FIXTURES / files["twin"])


def feeds(model: onnx.ModelProto, seed: int = 5) -> dict[str, np.ndarray]:
    """Batch 2 (the exports' example batch was 2 too, the check inputs another size) of random inputs."""
    (value,) = model.graph.input
    shape = [d.dim_value if d.HasField("dim_value") else 2 for d in value.type.tensor_type.shape.dim]
    return {value.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def reaches(got: dict[str, int], twin: dict[str, int]) -> bool:
    """The twin's op histogram, or fewer nodes with no more of any op."""
    return got == twin or (sum(got.values()) < sum(twin.values())
                           and all(n <= twin.get(op, 0) for op, n in got.items()))


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    scale = max(float(np.abs(want).max()), 1e-12)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("case,exporter", CASES)
def test_train_export_reaches_its_twin(case, exporter):
    train, twin = load_pair(case, exporter)
    optimized, report = onnxrep.optimize(train)
    assert report.verification.passed and not report.dropped, report.format(verbose=True)
    x = feeds(train)
    assert_close(run(optimized, x)[0], run(twin, x)[0])
    got, want = histogram(optimized), histogram(twin)
    assert reaches(got, want), f"onnxrep {dict(sorted(got.items()))}\ntwin    {dict(sorted(want.items()))}\n" + \
        report.format(verbose=True)


def test_fixtures_are_what_they_claim():
    """The adapters are in the train exports (more MatMul/Conv than the twin), the twins have none, and the
    PEFT exports' twins are the models merge_and_unload() gives: the adapter changes the output."""
    for case, entry in MANIFEST["cases"].items():
        for exporter in entry["files"]:
            train, twin = load_pair(case, exporter)
            t, w = histogram(train), histogram(twin)
            if "lora" in case or "dora" in case:
                linear = "MatMul" if case.startswith("vit") else "Conv"
                assert t[linear] > w[linear], (case, exporter)
            else:
                assert t["BatchNormalization"] > w.get("BatchNormalization", 0), (case, exporter)
                assert t["Concat"] == w["Concat"]


# --- a BatchNormalization or affine next to a fold-able producer always gets a refusal line ---------

@pytest.mark.parametrize("case,exporter", CASES)
def test_every_batchnorm_left_has_a_refusal_line(case, exporter):
    train, _ = load_pair(case, exporter)
    optimized, report = onnxrep.optimize(train)
    said = " ".join(f"{f.where} {f.reason}" for f in report.refusals)
    silent = [n.name for n in optimized.graph.node if n.op_type == "BatchNormalization" and n.name not in said]
    assert not silent, report.format(verbose=True)


# --- BatchNorm / affine after Concat: built by hand ---------------------------------------------------

def concat_graph(seed: int, axis: int = 1, after=("bn",), read_elsewhere: bool = False, identity_part: bool = False):
    """cat(conv3x3(x) → 4 ch, conv1x1(relu(x)) → 6 ch) on ``axis``, then ``after``: "bn", or ("mul", shape)
    and ("add", shape) with random constants of those shapes. Outputs: the result; with
    ``read_elsewhere`` the first conv's output too. ``identity_part``: the first part is relu(x), no conv."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 6, 8, 8])
    first = b.op("Relu", x) if identity_part else b.conv(x, 6 if axis != 1 else 4, 3, bias=False, name="conv_a")
    second = b.conv(b.op("Sigmoid", x), 6, 1, name="conv_b")
    cat = b.node("Concat", [first, second], axis=axis)
    b.channels[cat] = b.channels[first] + 6 if axis == 1 else 6
    y = cat
    for step in after:
        if step == "bn":
            y = b.bn(y)
        else:
            op, shape = step
            y = b.op(op.capitalize(), y, b.constant(b.rng.uniform(0.5, 1.5, shape).astype(np.float32)))
    b.output(y)
    if read_elsewhere:
        b.output(first)
    return b.model()


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def conv_weight(model: onnx.ModelProto, output: str) -> np.ndarray:
    (node,) = [n for n in model.graph.node if n.op_type == "Conv" and n.output[0] == output]
    return weights(model)[node.input[1]]


def test_concat_on_another_axis_is_left_alone():
    """Concat on the height axis: a BN channel is not a segment of it, nothing folds into the convs."""
    model = concat_graph(70, axis=2)
    optimized, _ = optimize_and_check(model)
    assert histogram(optimized) == histogram(model)


def test_concat_producer_read_elsewhere_keeps_its_output():
    """conv_a's output is also a graph output: its weights must stay, its BN segment with it."""
    model = concat_graph(71, read_elsewhere=True)
    optimized, _ = optimize_and_check(model)
    first = model.graph.output[1].name
    np.testing.assert_array_equal(conv_weight(optimized, first), conv_weight(model, first))
    assert "BatchNormalization" in histogram(optimized) or "Mul" in histogram(optimized)


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (1, 1, 8, 1), (8, 8)], ids=["per-column", "per-row", "spatial"])
def test_broadcasting_constant_after_concat_is_left_alone(shape):
    """A Mul whose constant varies along the spatial axes is no per-channel affine."""
    model = concat_graph(72, after=[("mul", shape)])
    optimized, _ = optimize_and_check(model)
    assert histogram(optimized) == histogram(model)


def test_bn_after_concat_folds_into_each_segments_conv():
    optimize_and_check(concat_graph(73), {"Conv": 2, "Concat": 1, "Sigmoid": 1})


def test_per_channel_mul_add_after_concat_folds_into_each_segments_conv():
    model = concat_graph(74, after=[("mul", (1, 10, 1, 1)), ("add", (1, 10, 1, 1))])
    optimize_and_check(model, {"Conv": 2, "Concat": 1, "Sigmoid": 1})


def test_bn_after_concat_keeps_a_smaller_affine_on_a_segment_that_cannot_fold():
    """DenseNet's cat(x-like part, conv(x)): the relu segment keeps a 6-channel affine, the conv takes its own."""
    model = concat_graph(75, identity_part=True)
    optimized, _ = optimize_and_check(model)
    params = [weights(optimized)[name] for n in optimized.graph.node
              if n.op_type in ("BatchNormalization", "Mul", "Add") for name in n.input[1:] if name]
    assert params and all(p.size <= 6 for p in params)


# --- Q/DQ models: correct, untouched, and (issue 21) one grouped reason ---------------------------------

QDQ = [pytest.param(name, kind, id=f"qdq_{name}.{kind}")
       for name, entry in MANIFEST["qdq"].items() for kind in entry["files"]]
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "Conv", "BatchNormalization", "Add")


@pytest.mark.parametrize("name,kind", QDQ)
def test_qdq_model_stays_correct_and_unmerged(name, kind):
    """Branches quantized separately do not merge exactly: each keeps its Q/DQ, the outputs stay the same."""
    model = onnx.load(FIXTURES / MANIFEST["qdq"][name]["files"][kind])
    optimized, report = onnxrep.optimize(model)
    assert report.verification.passed, report.format(verbose=True)
    before, after = histogram(model), histogram(optimized)
    assert {op: after.get(op, 0) for op in QDQ_OPS} == {op: before.get(op, 0) for op in QDQ_OPS}
    x = feeds(model)
    for want, got in zip(run(model, x), run(optimized, x), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", list(MANIFEST["qdq"]))
def test_qdq_branches_get_one_grouped_reason(name):
    model = onnx.load(FIXTURES / MANIFEST["qdq"][name]["files"]["train"])
    _, report = onnxrep.optimize(model)
    text = report.format(verbose=True)
    assert "deploy graph already" not in text
    assert sum("quantiz" in f.reason.lower() for f in report.refusals) == 1, text


def test_qdq_of_onnxrep_output_is_smaller():
    """The order the docs recommend: re-parameterize the float model, then quantize."""
    for name, entry in MANIFEST["qdq"].items():
        nodes = {kind: Counter(n.op_type for n in onnx.load(FIXTURES / f).graph.node)
                 for kind, f in entry["files"].items()}
        assert nodes["onnxrep"]["Conv"] < nodes["train"]["Conv"], name
        assert "BatchNormalization" not in nodes["onnxrep"], name
