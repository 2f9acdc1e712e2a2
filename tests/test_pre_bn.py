"""A BatchNormalization (or per-channel scale and shift) *before* a conv or linear (NextViT's
merge_pre_bn) folds into it when exact: the conv does not zero-pad what the shift reaches."""

from __future__ import annotations

from helpers import codes, optimize_and_check, reasons
from test_matmul import linear, tokens, vector

from onnxrep.testing import GraphBuilder


def images(seed=80):
    b = GraphBuilder(seed)
    return b, b.input("x", ["N", 6, 9, 9])


def test_bn_before_unpadded_convs():
    for kernel in (1, 3):
        b, x = images()
        b.output(b.conv(b.bn(x), 5, kernel, pads=[0, 0, 0, 0], stride=2))
        _, report = optimize_and_check(b.model(), {"Conv": 1})
        assert report.fired["fold_sequential"] == 1


def test_scale_without_shift_before_a_padded_conv():
    b, x = images(81)
    b.output(b.conv(b.op("Mul", x, vector(b, (6, 1, 1))), 5, 3))
    optimize_and_check(b.model(), {"Conv": 1})


def test_refuses_shift_before_a_padded_conv():
    """The conv pads BN(x) with zeros; the merged conv would pad x with zeros, which BN maps to its
    shift: the border differs."""
    b, x = images(82)
    b.channels[x] = 6
    b.output(b.conv(b.bn(x), 5, 3))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "Conv": 1})
    assert "pads with zeros" in reasons(report) and "not-exact" in codes(report)


def test_affine_before_a_linear_on_tokens():
    b, x = tokens(83)
    shifted = b.node("Add", [b.node("Mul", [x, vector(b, (8,))]), vector(b, (8,), -1, 1)])
    b.output(linear(b, shifted))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1})
    assert report.fired["fold_sequential"] == 2


def test_refuses_token_axis_batchnorm_before_a_linear():
    """BatchNormalization on [B, T, C] normalizes the tokens (axis 1): the Linear reads the last axis."""
    b, x = tokens(84, ("N", 8, 8))
    b.output(linear(b, b.bn(x)))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "MatMul": 1, "Add": 1})
    assert "axis" in reasons(report)


def test_refuses_bn_read_elsewhere():
    b, x = images(85)
    normed = b.bn(x)
    b.output(b.conv(normed, 5, 1, pads=[0, 0, 0, 0]))
    b.output(b.op("Relu", normed))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "Conv": 1, "Relu": 1})
    assert "also read by" in reasons(report) and "read-elsewhere" in codes(report)


def test_bn_whose_mean_another_node_reads_folds_into_a_private_copy():
    """The BN's running mean is also read by an Add: the fold writes fresh weights, the mean stays
    for the Add, and the report counts what stays as a shared copy."""
    b, x = images(86)
    normed = b.bn(x)
    bn = b.nodes[-1]
    b.output(b.conv(normed, 5, 1, pads=[0, 0, 0, 0]))
    b.output(b.node("Add", [b.input("z", [6]), bn.input[3]]))
    optimized, report = optimize_and_check(b.model(), {"Conv": 1, "Add": 1})
    assert bn.input[3] in report.shared_copies
    assert bn.input[3] in next(n for n in optimized.graph.node if n.op_type == "Add").input


def test_refuses_bn_whose_statistics_are_computed_in_training_mode():
    """A BN in training mode computes its statistics from the batch (and writes running ones):
    not an affine of constants, so it stays before the conv."""
    b, x = images(87)
    params = [b.constant(p) for p in b.bn_params(6)]
    normed, mean, var = b.node("BatchNormalization", [x, *params], outputs=3, training_mode=1)
    b.channels[normed] = 6
    b.output(b.conv(normed, 5, 1, pads=[0, 0, 0, 0]))
    b.output(b.op("Add", mean, var))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "Conv": 1, "Add": 1})
    assert "training mode" in reasons(report) and "training-mode" in codes(report)
