"""fold_pre_affine: a BN read through reshapes only by linear ops (NextViT's pre-norm q, k, v) folds into each."""

from __future__ import annotations

import numpy as np
from helpers import codes, optimize_and_check, reasons
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
    assert "pads with zeros" in reasons(report) and "not-exact" in codes(report)


def test_refuses_when_it_would_add_nodes():
    """Bias-free MatMuls would each need an Add for the BN's shift: more nodes than the one BN."""
    b, x = images(104)
    tokens = to_tokens(b, b.bn(x))
    for _ in range(3):
        b.output(linear(b, tokens, bias=False))
    optimize_and_check(b.model(), {"BatchNormalization": 1, "Reshape": 1, "Transpose": 1, "MatMul": 3})


def test_through_an_average_pool_into_k_and_v():
    """NextViT's E_MHSA: q reads the normed tokens, k and v read them pooled (sr_ratio)."""
    b, x = images(105)
    tokens = to_tokens(b, b.bn(x))
    pooled = b.node("Transpose", [b.node("AveragePool", [b.node("Transpose", [tokens], perm=[0, 2, 1])],
                                         kernel_shape=[2], strides=[2])], perm=[0, 2, 1])
    b.output(linear(b, tokens))
    b.output(linear(b, pooled))
    b.output(linear(b, pooled))
    optimize_and_check(b.model(), {"Reshape": 1, "Transpose": 3, "AveragePool": 1, "MatMul": 3, "Add": 3})


def test_refuses_an_average_pool_counting_pads():
    b, x = images(106)
    normed = b.bn(x)
    b.output(b.conv(normed, 4, 1, pads=[0] * 4))
    pooled = b.op("AveragePool", normed, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    b.output(b.conv(pooled, 4, 1, pads=[0] * 4))
    optimize_and_check(b.model(), {"BatchNormalization": 1, "AveragePool": 1, "Conv": 2})


def test_final_norm_through_global_average_into_the_head():
    """NextViT's head: BN → ReduceMean over H, W → Flatten → Linear."""
    b, x = images(107)
    pooled = b.node("ReduceMean", [b.bn(x)], axes=[2, 3], keepdims=0)
    w = b.constant((b.rng.standard_normal((5, C)) / 3).astype(np.float32))
    b.output(b.node("Gemm", [pooled, w, b.constant(np.zeros(5, np.float32))], transB=1))
    optimize_and_check(b.model(), {"ReduceMean": 1, "Gemm": 1})


def test_refuses_a_mean_over_the_channels():
    b, x = images(108)
    pooled = b.node("ReduceMean", [b.bn(x)], axes=[1], keepdims=1)
    b.channels[pooled] = 1
    b.output(b.conv(pooled, 4, 1, pads=[0] * 4))
    optimize_and_check(b.model(), {"BatchNormalization": 1, "ReduceMean": 1, "Conv": 1})
