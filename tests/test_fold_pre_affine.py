"""fold_pre_affine: a BN read through reshapes only by linear ops (NextViT's pre-norm q, k, v) folds into each."""

from __future__ import annotations

import numpy as np
from helpers import optimize_and_check, reasons
from test_matmul import linear

from onnxrep.testing import GraphBuilder

C, H, W = 8, 3, 4


def images(seed=100):
    b = GraphBuilder(seed)
    return b, b.input("x", [2, C, H, W])


def to_tokens(b: GraphBuilder, x: str) -> str:
    flat = b.node("Reshape", [x, b.constant(np.array([2, C, H * W], np.int64))])
    return b.node("Transpose", [flat], perm=[0, 2, 1])


def test_pre_norm_into_q_k_v():
    b, x = images()
    tokens = to_tokens(b, b.bn(x))
    for out in (6, 6, 4):
        b.output(linear(b, tokens, out=out))
    _, report = optimize_and_check(b.model(), {"Reshape": 1, "Transpose": 1, "MatMul": 3, "Add": 3})
    assert report.fired["fold_pre_affine"] == 1


def test_two_convs_read_one_bn():
    b, x = images(101)
    normed = b.bn(x)
    b.output(b.conv(normed, 4, 1, pads=[0] * 4))
    b.output(b.conv(normed, 5, 1, pads=[0] * 4))
    optimize_and_check(b.model(), {"Conv": 2})


def test_refuses_when_another_op_reads_it():
    b, x = images(102)
    tokens = to_tokens(b, b.bn(x))
    b.output(linear(b, tokens))
    b.output(b.op("Relu", tokens))
    optimize_and_check(b.model(), {"BatchNormalization": 1, "Reshape": 1, "Transpose": 1, "MatMul": 1, "Add": 1,
                                   "Relu": 1})


def test_refuses_a_padded_conv_among_the_readers():
    b, x = images(103)
    normed = b.bn(x)
    b.output(b.conv(normed, 4, 1, pads=[0] * 4))
    b.output(b.conv(normed, 4, 3))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "Conv": 2})
    assert "pads with zeros" in reasons(report)


def test_refuses_when_it_would_add_nodes():
    """Bias-free MatMuls would each need an Add for the BN's shift: more nodes than the one BN."""
    b, x = images(104)
    tokens = to_tokens(b, b.bn(x))
    for _ in range(3):
        b.output(linear(b, tokens, bias=False))
    optimize_and_check(b.model(), {"BatchNormalization": 1, "Reshape": 1, "Transpose": 1, "MatMul": 3})
