"""fold_constant_sums: constant subexpressions with float sums (DoRA's c = m / ‖W + s·BA‖) become constants,
computed in float64 and rounded once; verification judges them against the original's own values.

What must stay: cones of exact ops only (fold_constants' business), anything a run-time input can change
(an overridable weight), transcendental functions, graph outputs, and results that would grow the model.
The rule refuses nothing (a node that is no such cone is no candidate): there are no refusal codes to test.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import histogram, optimize_and_check
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["fold_constant_sums"])}
WITH_EXACT = {"rules": select_rules(only=["fold_constants", "fold_constant_sums"])}
I64 = np.int64


def dora_scale(b: GraphBuilder, w_t: np.ndarray, a_t: str, b_t: str, s: float, near_one: bool = False) -> str:
    """TorchScript's DoRA scale for a Linear of weight W (out, in), given as Wᵀ (in, out): c = m / ‖W + s·BA‖
    per output row, shaped (1, out); the LoRA product as PEFT exports it: EyeLike(zeros(in, in)) @ Aᵀ @ Bᵀ."""
    fan_in, out = w_t.shape
    zeros = b.node("ConstantOfShape", [b.constant(np.array([fan_in, fan_in], I64))],
                   value=helper.make_tensor("v", b.elem_type, [1], [0.0]))
    product = b.node("MatMul", [b.node("MatMul", [b.node("EyeLike", [zeros]), a_t]), b_t])
    delta = b.node("Mul", [b.node("Transpose", [product], perm=[1, 0]), b.constant(np.array(s, b.dtype))])
    norm = b.node("ReduceL2", [b.node("Add", [b.constant(np.ascontiguousarray(w_t.T)), delta])], axes=[1],
                  keepdims=0)
    factors = [numpy_helper.to_array(t).astype(np.float64) for t in b.initializers if t.name in (a_t, b_t)]
    exact = np.linalg.norm(w_t.T.astype(np.float64) + s * (factors[0] @ factors[1]).T, axis=1)
    magnitude = exact * (1 + b.rng.uniform(-1e-4, 1e-4, out) if near_one else b.rng.uniform(0.5, 1.5, out))
    return b.node("Reshape", [b.node("Div", [b.constant(magnitude.astype(b.dtype)), norm]),
                              b.constant(np.array([1, -1], I64))], name="c")


def dora_linear(seed: int, features: int = 16, near_one: bool = False, dtype=np.float32,
                rank: int = 2, s: float = 2.0) -> onnx.ModelProto:
    """PEFT's DoRA on a Linear without bias: base + (c − 1)·base + c·s·((x @ Aᵀ) @ Bᵀ), base = x @ Wᵀ, as
    TorchScript exports it (Aᵀ and Bᵀ read by the data path and by c's computation)."""
    b = GraphBuilder(seed, dtype)
    x = b.input("x", ["N", 5, features])
    w_t = (b.rng.standard_normal((features, features)) / np.sqrt(features)).astype(dtype)
    a_t = b.constant((b.rng.standard_normal((features, rank)) / np.sqrt(features)).astype(dtype))
    b_t = b.constant((b.rng.standard_normal((rank, features)) * 0.5).astype(dtype))
    c = dora_scale(b, w_t, a_t, b_t, s, near_one)
    base = b.node("MatMul", [x, b.constant(w_t)])
    lora = b.node("Mul", [b.node("MatMul", [b.node("MatMul", [x, a_t]), b_t]), b.constant(np.array(s, dtype))])
    c_minus_1 = b.node("Sub", [c, b.constant(np.array(1.0, dtype))], name="c_minus_1")
    delta = b.node("Add", [b.node("Mul", [c_minus_1, base]), b.node("Mul", [c, lora])])
    b.output(b.node("Add", [base, delta]))
    return b.model()


def test_doras_scale_is_folded():
    """c is folded where it is read (by c − 1 and by the LoRA branch's Mul); c − 1 is fold_constants' to fold."""
    model = dora_linear(1)
    optimized, report = optimize_and_check(model, {"MatMul": 3, "Sub": 1, "Mul": 3, "Add": 2}, **ONLY)
    assert report.fired["fold_constant_sums"] == 1 and not report.dropped
    assert "c_out" in {i.name for i in optimized.graph.initializer}


def test_the_factors_are_no_longer_shared():
    """Once c is a constant, Aᵀ and Bᵀ are read by the LoRA branch alone (fold_sequential would otherwise
    see them shared)."""
    model = dora_linear(2)
    factors = [t.name for t in model.graph.initializer if tuple(t.dims) in ((16, 2), (2, 16))]
    optimized, _ = optimize_and_check(model, None, **WITH_EXACT)
    assert [sum(name in n.input for n in optimized.graph.node) for name in factors] == [1, 1]


def test_the_value_is_the_float64_one_rounded_once():
    b = GraphBuilder(3)
    x = b.input("x", ["N", 8])
    w_t = (b.rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    product = b.node("MatMul", [b.constant(w_t), b.constant(w_t.T.copy())])
    norm = b.node("ReduceL2", [product], axes=[0], keepdims=0)
    b.output(b.node("Mul", [x, norm]))
    optimized, _ = optimize_and_check(b.model(), {"Mul": 1}, **ONLY)
    (value,) = [numpy_helper.to_array(i) for i in optimized.graph.initializer]
    w = w_t.astype(np.float64)
    np.testing.assert_array_equal(value, np.linalg.norm(w @ w.T, axis=0).astype(np.float32))


def test_a_conv_doras_scale_gemm_form():
    """conv_dora.ts: Gemm(B, A) → Reshape → ·s → + W → ReduceL2 over (1, 2, 3) → Transpose → m / ·."""
    b = GraphBuilder(4)
    x = b.input("x", ["N", 3, 8, 8])
    w, _ = b.conv_weights(3, 6, (3, 3), bias=False)
    a = (b.rng.standard_normal((2, 27)) / np.sqrt(27)).astype(np.float32)
    lora_b = (b.rng.standard_normal((6, 2)) * 0.5).astype(np.float32)
    product = b.node("Reshape", [b.node("Gemm", [b.constant(lora_b), b.constant(a)], alpha=1.0, beta=0.0),
                                 b.constant(np.array(w.shape, I64))])
    merged = b.node("Add", [b.constant(w), b.node("Mul", [product, b.constant(np.array(2.0, np.float32))])])
    norm = b.node("Transpose", [b.node("ReduceL2", [merged], axes=[1, 2, 3], keepdims=1)], perm=[1, 0, 2, 3])
    magnitude = b.rng.uniform(0.5, 1.5, (1, 6, 1, 1)).astype(np.float32)
    c = b.node("Div", [b.constant(magnitude), norm])
    b.channels[c] = 6
    b.output(b.node("Relu", [b.op("Mul", b.conv(x, 6, 3, bias=False, weight=w), c)]))
    optimize_and_check(b.model(), {"Conv": 1, "Relu": 1})


def test_c_minus_one_near_zero_is_judged_by_the_rounding_of_its_computation():
    """Trained DoRA: m ≈ ‖W + s·BA‖, c ≈ 1 and c − 1 ≈ 1e-4. Our c (float64, rounded once) and onnxruntime's
    (float32 sums) differ by an ulp here and there: c − 1, folded from it, differs by an ulp of 1, far more
    than the rounding of its own small value, and well within that of c − 1's computation. Verification
    must pass it, not roll it back (with nothing but the folds: c − 1 stays a constant)."""
    model = dora_linear(5, features=64, near_one=True)
    optimized, report = optimize_and_check(model, {"MatMul": 3, "Mul": 3, "Add": 2}, **WITH_EXACT)
    assert report.fired["fold_constant_sums"] == 1 and report.verification.passed and not report.dropped
    (c_minus_1,) = [numpy_helper.to_array(i) for i in optimized.graph.initializer if i.name == "c_minus_1_out"]
    assert 0 < np.abs(c_minus_1).max() < 1e-3


def test_a_wrong_fold_is_still_caught():
    """The check against the original's computation is a rounding bound, not a pass: a fold off by 3e-5
    (four times the bound of c − 1, 64·u·(|c| + 1)) is rolled back."""
    from onnxrep.rewrite.contract import Rule
    from onnxrep.rules import fold_constant_sums

    def wrong(ctx, node):
        m = fold_constant_sums.match(ctx, node)
        return m and fold_constant_sums.Cone(m.node, m.removed, m.value + np.float32(3e-5))
    rule = Rule("wrong_sums", "", fold_constant_sums.RULE.anchors, wrong, fold_constant_sums.build)
    rules = (*select_rules(only=["fold_constants"]), rule)
    _, report = onnxrep.optimize(dora_linear(6, features=64, near_one=True), rules=rules)
    # c's readers fail their checks; with c's fold blocked, c − 1 is the frontier of the cone, and fails too
    assert {(d.rewrite.rule, d.rewrite.anchor) for d in report.dropped} == {("wrong_sums", "c_out"),
                                                                           ("wrong_sums", "c_minus_1_out")}


def test_float16():
    model = dora_linear(7, dtype=np.float16)
    optimized, _ = optimize_and_check(model, {"MatMul": 3, "Mul": 3, "Add": 2}, rtol=2e-2, atol=2e-2,
                                      **WITH_EXACT)
    assert all(i.data_type == TensorProto.FLOAT16 for i in optimized.graph.initializer)


# --- what stays ---------------------------------------------------------------------------------------------------

def stays(model: onnx.ModelProto, rules=ONLY) -> None:
    _, report = optimize_and_check(model, histogram(model), **rules)
    assert not report.fired["fold_constant_sums"] and not report.dropped


def test_exact_ops_alone_are_left_to_fold_constants():
    b = GraphBuilder(8)
    x = b.input("x", ["N", 4])
    b.output(b.node("Mul", [x, b.node("Sqrt", [b.constant(np.full(4, 2.0, np.float32))])]))
    stays(b.model())


def test_an_overridable_weight_keeps_its_cone():
    b = GraphBuilder(9)
    x = b.input("x", ["N", 4])
    w = b.constant(np.eye(4, dtype=np.float32) * 2, name="w")
    b.output(b.node("Mul", [x, b.node("ReduceL2", [w], axes=[0], keepdims=0)]))
    model = b.model()
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4]))
    stays(model)


def test_a_transcendental_function_stays_the_sum_under_it_folds():
    b = GraphBuilder(10)
    x = b.input("x", ["N", 4])
    w = b.constant(b.rng.standard_normal((4, 4)).astype(np.float32))
    b.output(b.node("Mul", [x, b.node("Exp", [b.node("ReduceSum", [w, b.constant(np.array([0], I64))],
                                                     keepdims=0)])]))
    optimize_and_check(b.model(), {"Exp": 1, "Mul": 1}, **ONLY)


def test_a_graph_output_stays():
    b = GraphBuilder(11)
    x = b.input("x", ["N", 4])
    w = b.constant(b.rng.standard_normal((4, 4)).astype(np.float32))
    norm = b.node("ReduceL2", [w], axes=[0], keepdims=0)
    b.output(b.node("Mul", [x, norm]))
    b.output(norm, [4])
    stays(b.model())


@pytest.mark.parametrize("private", [True, False], ids=["factors-read-by-the-cone-only", "factors-shared"])
def test_a_product_bigger_than_its_factors_stays(private):
    """B·A of rank-4 factors as a 512x512 dense matrix (1 MiB, over the 512 KiB always folded) is bigger than
    the factors it frees: the model would grow."""
    b = GraphBuilder(12)
    x = b.input("x", ["N", 512])
    a = b.constant((b.rng.standard_normal((512, 4)) / 8).astype(np.float32))
    f = b.constant((b.rng.standard_normal((4, 512)) / 8).astype(np.float32))
    y = b.node("MatMul", [x, b.node("MatMul", [a, f])])
    b.output(y if private else b.node("Add", [y, b.node("MatMul", [b.node("MatMul", [x, a]), f])]))
    stays(b.model())


def test_a_graph_output_inside_a_cone_stays_and_the_cone_folds_beside_it():
    """x · (‖W‖ · 2) with ‖W‖ a graph output too: the product folds, the norm stays for the output."""
    b = GraphBuilder(13)
    x = b.input("x", ["N", 4])
    w = b.constant(b.rng.standard_normal((4, 4)).astype(np.float32))
    norm = b.node("ReduceL2", [w], axes=[0], keepdims=0)
    b.output(b.node("Mul", [x, b.node("Mul", [norm, b.constant(np.array(2.0, np.float32))])]))
    b.output(norm, [4])
    _, report = optimize_and_check(b.model(), {"ReduceL2": 1, "Mul": 1}, **ONLY)
    assert report.fired["fold_constant_sums"] == 1
