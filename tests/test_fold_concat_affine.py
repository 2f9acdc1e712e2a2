"""fold_concat_affine: a BatchNormalization or per-channel affine after a Concat folds into each part's
linear op, a part that cannot keeps its own segment, and every refusal is honoured."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import codes, histogram, optimize_and_check, random_feeds, reasons, run
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["fold_concat_affine"])}


def cat(b: GraphBuilder, parts: list[str], axis: int = 1) -> str:
    out = b.node("Concat", parts, axis=axis)
    b.channels[out] = sum(b.channels[p] for p in parts)
    return out


def affine_after(b: GraphBuilder, t: str, op: str, shape, const_first: bool = False) -> str:
    value = b.rng.uniform(0.5, 1.5, shape) * b.rng.choice([-1.0, 1.0], shape)
    const = b.constant(value.astype(np.float32))
    return b.op(op, *([const, t] if const_first else [t, const]))


def weights(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bias,group,stride", [(True, 1, 1), (False, 1, 1), (True, 2, 2), (False, 4, 1)])
def test_bn_folds_into_every_segments_conv(seed, bias, group, stride):
    """Three conv parts (3x3, 1x1, 5x5 of different inputs), random BatchNorm statistics."""
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 8, 10, 10])
    h = b.op("Relu", x)
    parts = [b.conv(x, 4, 3, stride=stride, group=group, bias=bias), b.conv(h, 8, 1, stride=stride, bias=bias),
             b.conv(h, 4, 5, stride=stride, group=group, bias=not bias)]
    b.output(b.op("Sigmoid", b.bn(cat(b, parts))))
    _, report = optimize_and_check(b.model(), {"Conv": 3, "Concat": 1, "Relu": 1, "Sigmoid": 1}, **ONLY)
    assert report.fired["fold_concat_affine"] == 1 and not report.refusals


def test_negative_axis_and_1d_convs():
    b = GraphBuilder(11)
    x = b.input("x", ["N", 6, 16])
    parts = [b.conv(x, 3, (3,)), b.conv(x, 5, (1,), bias=False)]
    b.output(b.bn(cat(b, parts, axis=-2)))
    optimize_and_check(b.model(), {"Conv": 2, "Concat": 1}, **ONLY)


@pytest.mark.parametrize("op,shape,const_first", [
    ("Mul", (1, 10, 1, 1), False), ("Div", (10, 1, 1), False), ("Add", (1, 10, 1, 1), True),
    ("Sub", (10, 1, 1), False), ("Sub", (1, 10, 1, 1), True), ("Mul", (), False), ("Add", (1,), True),
])
def test_per_channel_or_scalar_elementwise_folds(op, shape, const_first):
    b = GraphBuilder(12)
    x = b.input("x", ["N", 6, 8, 8])
    parts = [b.conv(x, 4, 3, bias=False), b.conv(b.op("Sigmoid", x), 6, 1)]
    b.output(affine_after(b, cat(b, parts), op, shape, const_first))
    optimize_and_check(b.model(), {"Conv": 2, "Concat": 1, "Sigmoid": 1}, **ONLY)


def test_neg_folds():
    b = GraphBuilder(13)
    x = b.input("x", ["N", 6, 8, 8])
    b.output(b.op("Neg", cat(b, [b.conv(x, 4, 3), b.conv(x, 2, 1)])))
    optimize_and_check(b.model(), {"Conv": 2, "Concat": 1}, **ONLY)


def test_scalar_after_a_concat_on_a_spatial_axis_folds():
    """A scalar is the same on every channel: the Concat's axis does not matter."""
    b = GraphBuilder(14)
    x = b.input("x", ["N", 6, 8, 8])
    joined = cat(b, [b.conv(x, 4, 3), b.conv(x, 4, 1)], axis=2)
    b.output(affine_after(b, joined, "Mul", ()))
    optimize_and_check(b.model(), {"Conv": 2, "Concat": 1}, **ONLY)


def test_gemm_parts_take_a_batchnorm1d():
    b = GraphBuilder(15)
    x = b.input("x", ["N", 8])
    parts = []
    for cout, bias in ((4, True), (6, False)):
        w = b.constant(b.rng.standard_normal((cout, 8)).astype(np.float32) / 3)
        extra = [b.constant(b.rng.standard_normal(cout).astype(np.float32))] if bias else []
        parts.append(b.node("Gemm", [x, w, *extra], transB=1))
        b.channels[parts[-1]] = cout
    b.output(b.bn(cat(b, parts)))
    optimize_and_check(b.model(), {"Gemm": 2, "Concat": 1}, **ONLY)


def test_channels_last_matmul_parts_take_a_layer_scale_and_shift():
    """Tokens [N, T, C]: MatMul + bias Add and a bare MatMul, concatenated on the features; the bare
    MatMul gains a bias Add, one node for the two it replaces."""
    b = GraphBuilder(16)
    x = b.input("x", ["N", 5, 8])
    with_bias = b.op("Add", b.node("MatMul", [x, b.constant(b.rng.standard_normal((8, 4)).astype(np.float32))]),
                     b.constant(b.rng.standard_normal(4).astype(np.float32)))
    bare = b.node("MatMul", [x, b.constant(b.rng.standard_normal((8, 6)).astype(np.float32))])
    joined = b.node("Concat", [with_bias, bare], axis=-1)
    y = affine_after(b, affine_after(b, joined, "Mul", (10,)), "Add", (10,))
    b.output(y)
    optimize_and_check(b.model(), {"MatMul": 2, "Add": 2, "Concat": 1}, **ONLY)


def test_a_part_that_cannot_fold_keeps_its_own_segment_bit_for_bit():
    """DenseNet's cat(conv(x), relu(x), conv(x)): the relu segment keeps a BatchNormalization of its 6
    channels, which computes exactly what the whole one computed there."""
    b = GraphBuilder(17)
    x = b.input("x", ["N", 6, 8, 8])
    b.output(b.bn(cat(b, [b.conv(x, 4, 3), b.op("Relu", x), b.conv(x, 2, 1)])))
    model = b.model()
    optimized, _ = optimize_and_check(model, {"Relu": 1, "BatchNormalization": 1, "Conv": 2, "Concat": 1}, **ONLY)
    (bn,) = [n for n in optimized.graph.node if n.op_type == "BatchNormalization"]
    assert {weights(optimized)[name].shape for name in bn.input[1:]} == {(6,)}
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(optimized, feeds)[0][:, 4:10], run(model, feeds)[0][:, 4:10])


@pytest.mark.parametrize("shape,const_first", [((1, 8, 1, 1), False), ((8, 1, 1), True)])
def test_a_part_that_cannot_fold_keeps_its_slice_of_the_constant(shape, const_first):
    b = GraphBuilder(18)
    x = b.input("x", ["N", 4, 8, 8])
    joined = cat(b, [b.conv(x, 4, 3), b.op("Relu", x)])
    b.output(affine_after(b, joined, "Sub", shape, const_first))
    model = b.model()
    optimized, _ = optimize_and_check(model, {"Relu": 1, "Sub": 1, "Conv": 1, "Concat": 1}, **ONLY)
    (sub,) = [n for n in optimized.graph.node if n.op_type == "Sub"]
    const = weights(optimized)[sub.input[0 if const_first else 1]]
    assert const.size == 4
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(optimized, feeds)[0][:, 4:], run(model, feeds)[0][:, 4:])


def test_shape_readers_of_the_concat_read_the_result():
    b = GraphBuilder(19)
    x = b.input("x", ["N", 6, 8, 8])
    joined = cat(b, [b.conv(x, 4, 3), b.conv(x, 2, 1)])
    b.output(b.bn(joined))
    b.outputs.append(helper.make_tensor_value_info(b.node("Shape", [joined]), TensorProto.INT64, [4]))
    optimize_and_check(b.model(), {"Conv": 2, "Concat": 1, "Shape": 1}, **ONLY)


# ---- left alone, each with its reason ---------------------------------------------------------------

def two_convs(seed: int, axis: int = 1):
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 6, 8, 8])
    return b, x, cat(b, [b.conv(x, 4, 3), b.conv(x, 6 if axis == 1 else 4, 1)], axis)


def assert_left_alone(model, code: str, **kwargs):
    optimized, report = optimize_and_check(model, **{**ONLY, **kwargs})
    assert histogram(optimized) == histogram(model), report.format(verbose=True)
    assert code in codes(report), report.format(verbose=True)
    return optimized, report


def test_refuses_a_concat_on_another_axis():
    b, x, joined = two_convs(20, axis=2)
    b.channels[joined] = 4
    b.output(b.bn(joined))
    _, report = assert_left_alone(b.model(), "layout")
    assert "joins axis 2" in reasons(report)


def test_refuses_a_concat_output_read_elsewhere():
    b, x, joined = two_convs(21)
    b.output(b.bn(joined))
    b.output(b.op("Relu", joined))
    _, report = assert_left_alone(b.model(), "read-elsewhere")
    assert "Concat output is also read by" in reasons(report)


@pytest.mark.parametrize("shape,code", [((1, 1, 1, 8), "layout"), ((1, 1, 8, 1), "layout"),
                                        ((8, 8), "not-per-channel"), ((2, 10, 1, 1), "not-per-channel")])
def test_refuses_a_broadcasting_constant(shape, code):
    b, x, joined = two_convs(22)
    b.output(affine_after(b, joined, "Mul", shape))
    assert_left_alone(b.model(), code)


def test_refuses_when_two_segments_would_keep_an_affine():
    b = GraphBuilder(23)
    x = b.input("x", ["N", 6, 8, 8])
    b.output(b.bn(cat(b, [b.op("Relu", x), b.conv(x, 4, 3), b.op("Sigmoid", x)])))
    _, report = assert_left_alone(b.model(), "costlier")
    assert "2 nodes where there is one" in reasons(report)


def test_a_part_read_twice_by_the_concat_does_not_fold():
    b = GraphBuilder(24)
    x = b.input("x", ["N", 6, 8, 8])
    a = b.conv(x, 4, 3)
    b.output(b.bn(cat(b, [a, a, b.conv(x, 2, 1)])))
    _, report = assert_left_alone(b.model(), "costlier")
    assert "read-elsewhere" in codes(report)


def test_a_part_read_elsewhere_keeps_its_weights_and_its_segment():
    b = GraphBuilder(25)
    x = b.input("x", ["N", 6, 8, 8])
    a = b.conv(x, 4, 3, name="conv_a")
    b.output(b.bn(cat(b, [a, b.conv(x, 6, 1)])))
    b.output(a)
    model = b.model()
    optimized, report = optimize_and_check(model, {"Conv": 2, "BatchNormalization": 1, "Concat": 1}, **ONLY)
    conv_a = next(n for n in optimized.graph.node if n.output[0] == a)
    np.testing.assert_array_equal(weights(optimized)[conv_a.input[1]], weights(model)[conv_a.input[1]])
    assert report.fired["fold_concat_affine"] == 1


def test_refuses_when_no_part_folds_and_says_why():
    """The only conv part's weight is a graph input: nothing folds, the refusal is the conv's."""
    b = GraphBuilder(26)
    x = b.input("x", [1, 6, 8, 8])
    w = b.input("w", [4, 6, 3, 3])
    conv = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    b.channels[conv] = 4
    b.output(b.bn(cat(b, [conv, b.op("Relu", x)])))
    model = b.model()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 6, 8, 8)).astype(np.float32),
             "w": rng.standard_normal((4, 6, 3, 3)).astype(np.float32)}
    assert_left_alone(model, "graph-input", feeds=feeds)


def test_a_batchnorm_after_a_concat_of_no_linear_part_says_so():
    b = GraphBuilder(27)
    x = b.input("x", ["N", 6, 8, 8])
    b.output(b.bn(cat(b, [b.op("Relu", x), b.op("Sigmoid", x)])))
    _, report = assert_left_alone(b.model(), "no-linear-op")
    assert "nothing to fold it into" in reasons(report)


def test_an_elementwise_op_after_a_concat_of_no_linear_part_is_no_candidate():
    """ViT's cat(cls token, patches) + position embedding: nothing to say."""
    b = GraphBuilder(28)
    x = b.input("x", [2, 4, 16])
    cls = b.constant(b.rng.standard_normal((2, 1, 16)).astype(np.float32))
    tokens = b.node("Concat", [cls, b.op("Relu", x)], axis=1)
    b.output(affine_after(b, tokens, "Add", (1, 5, 16)))
    model = b.model()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 16)).astype(np.float32)}
    optimized, report = onnxrep.optimize(model)
    assert histogram(optimized) == histogram(model) and not report.refusals, report.format(verbose=True)
    np.testing.assert_array_equal(run(optimized, feeds)[0], run(model, feeds)[0])
