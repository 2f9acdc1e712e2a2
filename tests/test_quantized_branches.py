"""quantized_branches: a QDQ model's separately quantized branches stay, bit for bit, with one line
for the whole model; float models, quantized residuals and plain quantized chains get no such line."""

from __future__ import annotations

import numpy as np
from helpers import histogram, random_feeds, run

import onnxrep
from onnxrep.testing import GraphBuilder


def q_dq(b: GraphBuilder, t: str, quantize: bool) -> str:
    """QuantizeLinear → DequantizeLinear (int8, per tensor), as quantize_static writes after each op."""
    if not quantize:
        return t
    scale, zero = b.constant(np.array(0.05, np.float32)), b.constant(np.array(0, np.int8))
    out = b.node("DequantizeLinear", [b.node("QuantizeLinear", [t, scale, zero]), scale, zero])
    b.channels[out] = b.channels.get(t)
    return out


def conv(b: GraphBuilder, x: str, cout: int, k: int, quantize: bool) -> str:
    """A Conv whose weight is an int8 initializer behind a DequantizeLinear (or a float one)."""
    w, bias = b.conv_weights(b.channels[x], cout, (k, k))
    if quantize:
        scale = float(np.abs(w).max()) / 127
        weight = b.node("DequantizeLinear", [b.constant(np.round(w / scale).astype(np.int8)),
                                             b.constant(np.array(scale, np.float32)),
                                             b.constant(np.array(0, np.int8))])
    else:
        weight = b.constant(w)
    out = b.node("Conv", [x, weight, b.constant(bias)], pads=[k // 2] * 4)
    b.channels[out] = cout
    return out


def repvgg_block(quantize: bool, seed: int = 0):
    """relu(BN(conv3x3(x)) + conv1x1(x) + BN(x)), with a Q/DQ pair after every op when ``quantize``."""
    b = GraphBuilder(seed)
    x = q_dq(b, b.input("x", ["N", 4, 8, 8]), quantize)
    dense = q_dq(b, b.bn(q_dq(b, conv(b, x, 4, 3, quantize), quantize)), quantize)
    point = q_dq(b, conv(b, x, 4, 1, quantize), quantize)
    skip = q_dq(b, b.bn(x), quantize)
    total = b.op("Add", q_dq(b, b.op("Add", dense, point), quantize), skip)
    b.output(b.op("Relu", total))
    return b.model()


def optimize_unchanged(model):
    """Optimized: the same graph, the same outputs to the bit."""
    optimized, report = onnxrep.optimize(model)
    assert report.verification.passed and histogram(optimized) == histogram(model), report.format(verbose=True)
    feeds = random_feeds(model)
    for want, got in zip(run(model, feeds), run(optimized, feeds), strict=True):
        np.testing.assert_array_equal(got, want)
    return report


def test_quantized_branches_stay_with_one_line():
    report = optimize_unchanged(repvgg_block(quantize=True))
    (finding,) = report.refusals
    assert finding.rule == "quantized_branches" and finding.code == "not-exact"
    assert finding.where == "3 quantized branches at 1 join, 2 BatchNormalizations after a DequantizeLinear"
    assert "then quantize" in finding.reason
    assert "deploy graph already" not in report.format(verbose=True)


def test_the_float_block_merges_and_gets_no_such_line():
    optimized, report = onnxrep.optimize(repvgg_block(quantize=False))
    assert histogram(optimized) == {"Conv": 1, "Relu": 1}
    assert all(f.rule != "quantized_branches" for f in report.refusals)


def test_a_quantized_residual_is_no_quantized_branch():
    """ResNet's x + conv(relu(conv(x))): the branches start from different tensors, nothing to merge in
    the float model either."""
    b = GraphBuilder(1)
    x = q_dq(b, b.input("x", ["N", 4, 8, 8]), True)
    inner = q_dq(b, b.op("Relu", conv(b, x, 4, 3, True)), True)
    b.output(b.op("Add", q_dq(b, conv(b, inner, 4, 3, True), True), x))
    report = optimize_unchanged(b.model())
    assert not report.refusals and "deploy graph already" in report.format()


def test_a_batchnorm_quantized_apart_from_its_conv_gets_the_line():
    b = GraphBuilder(2)
    x = q_dq(b, b.input("x", ["N", 4, 8, 8]), True)
    b.output(b.op("Relu", b.bn(q_dq(b, conv(b, x, 4, 3, True), True))))
    report = optimize_unchanged(b.model())
    (finding,) = report.refusals
    assert finding.rule == "quantized_branches" and finding.where == "1 BatchNormalization after a DequantizeLinear"
