"""nn.Linear on [B, T, C] tokens exports as MatMul (+ Add of the bias), channels last: lifted as a
conv with no spatial axes, so affines after it fold, parallel heads merge, and the result is
written back as MatMul + Add (as a Gemm on rank-2 inputs)."""

from __future__ import annotations

import numpy as np
from helpers import codes, optimize_and_check, reasons

from onnxrep.testing import GraphBuilder

T, C, OUT = 5, 8, 6


def linear(b: GraphBuilder, x: str, out: int = OUT, cin: int = C, bias: bool = True) -> str:
    w = b.constant((b.rng.standard_normal((cin, out)) / 3).astype(np.float32))
    y = b.node("MatMul", [x, w])
    if bias:
        y = b.node("Add", [y, b.constant((b.rng.standard_normal(out) * 0.1).astype(np.float32))])
    return y


def vector(b: GraphBuilder, shape, low=0.5, high=1.5) -> str:
    return b.constant(b.rng.uniform(low, high, shape).astype(np.float32))


def tokens(seed=70, shape=("N", T, C)):
    b = GraphBuilder(seed)
    return b, b.input("x", list(shape))


def test_affine_after_linear_folds_into_its_bias():
    b, x = tokens()
    scaled = b.node("Mul", [linear(b, x), vector(b, (OUT,))])
    b.output(b.node("Sub", [scaled, vector(b, (1, 1, OUT))]))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1})
    assert report.fired["fold_conv_affine"] == 2


def test_layer_scale_on_a_residual_branch():
    """x + γ·Linear(relu(x)), γ of shape (C,): the Mul folds, the residual Add stays."""
    b, x = tokens(71)
    b.output(b.node("Add", [x, b.node("Mul", [vector(b, (C,)), linear(b, b.op("Relu", x), out=C)])]))
    optimize_and_check(b.model(), {"MatMul": 1, "Add": 2, "Relu": 1})


def test_layer_scaled_linear_and_identity_merge():
    """x + γ·Linear(x) is one Linear (W' = I + γ·W) that costs no more."""
    b, x = tokens(71)
    b.output(b.node("Add", [x, b.node("Mul", [vector(b, (C,)), linear(b, x, out=C)])]))
    optimize_and_check(b.model(), {"MatMul": 1, "Add": 1})


def test_parallel_heads_averaged():
    """(head(x) + head_dist(x)) / 2 on tokens → one MatMul + Add."""
    b, x = tokens(72)
    summed = b.node("Add", [linear(b, x), linear(b, x)])
    b.output(b.node("Div", [summed, b.constant(np.float32(2.0))]))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1})
    assert report.fired["merge_parallel"] == 1


def test_parallel_heads_concatenated():
    b, x = tokens(73)
    b.output(b.node("Concat", [linear(b, x, out=4), linear(b, x, out=3, bias=False)], axis=-1))
    optimize_and_check(b.model(), {"MatMul": 1, "Add": 1})


def test_rank_two_matmul_is_written_as_gemm():
    b, x = tokens(74, ("N", C))
    b.output(b.node("Mul", [linear(b, x), vector(b, (OUT,))]))
    optimize_and_check(b.model(), {"Gemm": 1})


def test_bare_matmul_and_its_bias_stay_two_nodes():
    b, x = tokens(75)
    b.output(linear(b, x))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1})
    assert not report.fired


def test_refuses_weight_that_is_not_constant():
    """A MatMul by a graph input (or of two computed tensors: attention) is no Linear."""
    b, x = tokens(76)
    w = b.input("w", [C, OUT])
    b.output(b.node("Mul", [b.node("MatMul", [x, w]), vector(b, (OUT,))]))
    b.output(b.node("Mul", [b.node("MatMul", [x, b.node("Transpose", [x], perm=[0, 2, 1])]),
                            b.constant(np.float32(0.5))]))
    _, report = optimize_and_check(b.model(), {"MatMul": 2, "Mul": 2, "Transpose": 1})
    assert not report.fired


def test_refuses_bias_on_the_wrong_axis():
    """An Add of shape (T, 1) after the MatMul runs along the tokens: not a bias, and nothing after
    it folds into the MatMul."""
    b, x = tokens(77)
    y = b.node("Add", [linear(b, x, bias=False), vector(b, (T, 1))])
    b.output(b.node("Mul", [y, vector(b, (OUT,))]))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Mul": 1})
    assert "not per-channel" in reasons(report) and "not-per-channel" in codes(report)


def test_refuses_batchnorm_of_the_token_axis():
    """BatchNormalization on [B, T, C] normalizes axis 1 (tokens), not the Linear's features."""
    b, x = tokens(78, ("N", OUT, C))
    y = linear(b, x, out=C)
    b.channels[y] = OUT
    b.output(b.bn(y))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "BatchNormalization": 1})
    assert "not per-channel" in reasons(report) and "not-per-channel" in codes(report)


def test_refuses_shared_weight():
    b, x = tokens(79)
    w = b.constant((b.rng.standard_normal((C, C)) / 3).astype(np.float32))
    y = b.node("MatMul", [x, w])
    b.output(b.node("Mul", [y, vector(b, (C,))]))
    b.output(b.node("MatMul", [x, w]))
    _, report = optimize_and_check(b.model(), {"MatMul": 2, "Mul": 1})
    assert "shared" in reasons(report) and "shared-weight" in codes(report)
