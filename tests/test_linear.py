"""Gemm is a conv with no spatial axes: BN1d folds on either side, parallel heads merge."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import codes, optimize_and_check, reasons

from onnxrep.testing import GraphBuilder

F, OUT = 16, 10


def gemm(b: GraphBuilder, x: str, out: int = OUT, trans_b: int = 1, alpha=1.0, beta=1.0, bias_shape=None) -> str:
    w = (b.rng.standard_normal((out, F) if trans_b else (F, out)) / 4).astype(np.float32)
    bias = (b.rng.standard_normal(bias_shape or (out,)) * 0.1).astype(np.float32)
    y = b.node("Gemm", [x, b.constant(w), b.constant(bias)], transB=trans_b, alpha=alpha, beta=beta)
    b.channels[y] = out
    return y


def features(seed=50):
    b = GraphBuilder(seed)
    return b, b.input("x", ["N", F])


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [(1, 1.0, 1.0, None), (0, 0.5, 2.0, (1, OUT)),
                                                           (1, 1.0, 1.0, (1,))])
def test_gemm_then_bn(trans_b, alpha, beta, bias_shape):
    b, x = features()
    b.output(b.bn(gemm(b, x, trans_b=trans_b, alpha=alpha, beta=beta, bias_shape=bias_shape)))
    _, report = optimize_and_check(b.model(), {"Gemm": 1})
    assert report.fired["fold_conv_affine"] == 1


def test_bn_then_gemm():
    b, x = features()
    b.output(gemm(b, b.bn(x)))
    _, report = optimize_and_check(b.model(), {"Gemm": 1})
    assert report.fired["fold_sequential"] == 1


def test_repvit_classifier_with_distillation_head():
    """(Linear(BN(x)) + Linear(BN'(x))) / 2 → one Gemm."""
    b, x = features()
    head, dist = gemm(b, b.bn(x)), gemm(b, b.bn(x))
    b.output(b.node("Div", [b.op("Add", head, dist), b.constant(np.float32(2.0))]))
    _, report = optimize_and_check(b.model(), {"Gemm": 1})
    assert report.fired == {"fold_sequential": 2, "merge_parallel": 1, "fold_conv_affine": 1}


def test_summed_heads_and_identity_stay_when_costlier():
    """BN(x) + x on features has no Gemm to merge into: a dense F×F Gemm would cost more."""
    b, x = features()
    b.output(b.op("Add", b.bn(x), x))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "Add": 1})
    assert "would cost" in reasons(report) and "costlier" in codes(report)


def test_refuses_transposed_input():
    b, x = features()
    w = b.constant((b.rng.standard_normal((F, 3)) / 4).astype(np.float32))
    y = b.node("Gemm", [x, w], transA=1)
    b.channels[y] = 3
    b.output(b.bn(y))
    feeds = {"x": np.random.default_rng(0).standard_normal((F, F)).astype(np.float32)}
    b.inputs[0].type.tensor_type.shape.dim[0].dim_value = F
    _, report = optimize_and_check(b.model(), {"Gemm": 1, "BatchNormalization": 1}, feeds=feeds)
    assert "transA" in reasons(report) and "unsupported" in codes(report)


def test_refuses_per_row_bias():
    b = GraphBuilder(51)
    x = b.input("x", [4, F])
    b.output(b.bn(gemm(b, x, bias_shape=(4, OUT))))
    _, report = optimize_and_check(b.model(), {"Gemm": 1, "BatchNormalization": 1})
    assert "not per output feature" in reasons(report) and "not-per-channel" in codes(report)


def test_bn_then_padded_conv_is_not_exact():
    """BN before a zero-padding conv: the border would see BN's shift, not zero."""
    b = GraphBuilder(52)
    x = b.input("x", [1, 4, 8, 8])
    b.output(b.conv(b.bn(x), 4, 3))
    _, report = optimize_and_check(b.model(), {"BatchNormalization": 1, "Conv": 1})
    assert "not exact" in reasons(report)


def test_bn_then_unpadded_conv_folds():
    b = GraphBuilder(53)
    x = b.input("x", [1, 4, 8, 8])
    b.output(b.conv(b.bn(x), 4, 3, pads=[0] * 4))
    optimize_and_check(b.model(), {"Conv": 1})
