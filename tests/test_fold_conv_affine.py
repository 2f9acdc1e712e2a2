"""fold_conv_affine: Conv → BatchNormalization becomes one Conv, and every refusal is honoured."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import codes, histogram, optimize_and_check, reasons
from onnx import TensorProto, helper

from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["fold_conv_affine"])}


@pytest.mark.parametrize("kernel,stride,dilation,group,bias,pads", [
    ((3, 3), 1, 1, 1, True, None),
    ((3, 3), 1, 1, 1, False, None),
    ((1, 1), 2, 1, 1, True, [0, 0, 0, 0]),
    ((3, 3), 2, 2, 2, True, None),
    ((5, 3), 1, 1, 8, False, [2, 1, 1, 0]),  # depthwise, asymmetric pads
    ((3,), 1, 1, 1, True, None),             # 1-D
    ((3, 3, 3), 1, 1, 4, False, None),       # 3-D, grouped
])
def test_folds(kernel, stride, dilation, group, bias, pads):
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 8] + [10] * len(kernel))
    y = b.bn(b.conv(x, 8, kernel, stride=stride, dilation=dilation, group=group, bias=bias, pads=pads))
    b.output(b.op("Relu", y))
    _, report = optimize_and_check(b.model(), {"Conv": 1, "Relu": 1}, **ONLY)
    assert report.fired["fold_conv_affine"] == 1


def test_folds_constant_node_weights_and_old_opset():
    """Weights as Constant nodes behind Identity; opset 9 BatchNormalization."""
    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 4, 8, 8])
    w, bias = b.conv_weights(4, 6, (3, 3))
    const = b.node("Constant", [], value=helper.make_tensor("cw", TensorProto.FLOAT, w.shape, w.ravel()))
    weight = b.node("Identity", [const])
    y = b.node("Conv", [x, weight, b.constant(bias)], pads=[1, 1, 1, 1])
    b.channels[y] = 6
    b.output(b.bn(y))
    _, report = optimize_and_check(b.model(opset=9), {"Conv": 1}, **ONLY)
    assert report.fired["fold_conv_affine"] == 1


def build_conv_bn(**kwargs):
    b = GraphBuilder(seed=5)
    x = b.input("x", [1, 4, 8, 8])
    conv = b.conv(x, 4, 3)
    return b, x, conv


def test_refuses_conv_output_read_elsewhere():
    b, x, conv = build_conv_bn()
    b.output(b.op("Add", b.bn(conv), b.op("Relu", conv)))
    optimized, report = optimize_and_check(b.model(), {"Conv": 1, "BatchNormalization": 1, "Relu": 1,
                                                       "Add": 1}, **ONLY)
    assert "also read by" in reasons(report) and "read-elsewhere" in codes(report)


def test_refuses_conv_output_that_is_a_graph_output():
    b, x, conv = build_conv_bn()
    b.output(b.bn(conv))
    b.output(conv)
    _, report = optimize_and_check(b.model(), {"Conv": 1, "BatchNormalization": 1}, **ONLY)
    assert "a graph output" in reasons(report)


def test_refuses_weight_that_is_a_graph_input():
    b = GraphBuilder(seed=6)
    x = b.input("x", [1, 4, 8, 8])
    w = b.input("w", [4, 4, 3, 3])
    y = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    b.channels[y] = 4
    b.output(b.bn(y))
    model = b.model()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
             "w": rng.standard_normal((4, 4, 3, 3)).astype(np.float32)}
    _, report = optimize_and_check(model, {"Conv": 1, "BatchNormalization": 1}, feeds=feeds, **ONLY)
    assert "graph input" in reasons(report) and "graph-input" in codes(report)


def test_refuses_initializer_that_is_also_a_graph_input():
    """IR 3 style: a weight listed among the inputs can be overridden at run time."""
    b, x, conv = build_conv_bn()
    b.output(b.bn(conv))
    model = b.model()
    weight = next(i for i in model.graph.initializer if i.dims == [4, 4, 3, 3])
    model.graph.input.append(helper.make_tensor_value_info(weight.name, TensorProto.FLOAT, weight.dims))
    optimized, report = optimize_and_check(model, {"Conv": 1, "BatchNormalization": 1}, **ONLY)
    assert "graph input" in reasons(report) and "graph-input" in codes(report)


def test_refuses_shared_weight_and_never_edits_it():
    b = GraphBuilder(seed=7)
    x = b.input("x", [1, 4, 8, 8])
    w, _ = b.conv_weights(4, 4, (3, 3), bias=False)
    shared = b.constant(w, "shared_w")
    y1 = b.node("Conv", [x, shared], pads=[1, 1, 1, 1])
    y2 = b.node("Conv", [x, shared], pads=[1, 1, 1, 1])
    b.channels[y1] = 4
    b.output(b.bn(y1))
    b.output(y2)
    optimized, report = optimize_and_check(b.model(), {"Conv": 2, "BatchNormalization": 1}, **ONLY)
    assert "shared" in reasons(report) and "shared-weight" in codes(report)
    kept = next(i for i in optimized.graph.initializer if i.name == "shared_w")
    np.testing.assert_array_equal(np.frombuffer(kept.raw_data, np.float32).reshape(w.shape), w)


def test_refuses_training_mode_bn():
    b, x, conv = build_conv_bn()
    y = b.node("BatchNormalization", [conv, *[b.constant(p) for p in b.bn_params(4)]], training_mode=1)
    b.output(y)
    model = b.model(opset=15)
    optimized, report = __import__("onnxrep").optimize(model, verify=False, **ONLY)
    assert histogram(optimized) == {"Conv": 1, "BatchNormalization": 1}
    assert "training mode" in reasons(report) and "training-mode" in codes(report)


def test_refuses_non_constant_bn_parameters():
    b, x, conv = build_conv_bn()
    mean = b.input("mean", [4])
    params = [b.constant(p) for p in b.bn_params(4)]
    b.output(b.node("BatchNormalization", [conv, params[0], params[1], mean, params[3]]))
    model = b.model()
    feeds = {"x": np.ones((1, 4, 8, 8), np.float32), "mean": np.arange(4, dtype=np.float32)}
    _, report = optimize_and_check(model, {"Conv": 1, "BatchNormalization": 1}, feeds=feeds, **ONLY)
    assert "graph input" in reasons(report) and "graph-input" in codes(report)


def test_preserves_io_names_dynamic_dims_opset_and_metadata():
    b, x, conv = build_conv_bn()
    b.inputs[0] = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    b.output(b.bn(conv), ["batch", 4, "h", "w"])
    model = b.model(opset=13)
    helper.set_model_props(model, {"author": "someone"})
    model.doc_string = "doc"
    optimized, _ = optimize_and_check(model, {"Conv": 1}, **ONLY)
    assert optimized.graph.input == model.graph.input
    assert optimized.graph.output == model.graph.output
    assert optimized.opset_import == model.opset_import
    assert optimized.metadata_props == model.metadata_props
    assert optimized.doc_string == "doc" and optimized.ir_version == model.ir_version


# ---- per-channel elementwise ops ---------------------------------------------------------------

def per_channel(b, shape):
    return b.constant((b.rng.uniform(0.5, 1.5, shape) * b.rng.choice([-1, 1], shape)).astype(np.float32))


@pytest.mark.parametrize("op,const_shape,const_first", [
    ("Mul", (8, 1, 1), False), ("Mul", (1, 8, 1, 1), True), ("Mul", (), False),
    ("Div", (8, 1, 1), False), ("Add", (8, 1, 1), True), ("Sub", (8, 1, 1), False),
    ("Sub", (1, 8, 1, 1), True), ("Add", (1,), False),
])
def test_folds_per_channel_elementwise(op, const_shape, const_first):
    b = GraphBuilder(seed=8)
    x = b.input("x", [1, 4, 8, 8])
    conv = b.conv(x, 8, 3, bias=False)
    c = per_channel(b, const_shape)
    b.output(b.node(op, [c, conv] if const_first else [conv, c]))
    _, report = optimize_and_check(b.model(), {"Conv": 1})
    assert report.fired["fold_conv_affine"] == 1


def test_folds_neg_and_chains_of_affines():
    b = GraphBuilder(seed=9)
    x = b.input("x", [1, 4, 8, 8])
    y = b.op("Neg", b.conv(x, 4, 3))
    y = b.node("Mul", [y, per_channel(b, (4, 1, 1))])
    b.output(b.node("Add", [y, per_channel(b, (1, 4, 1, 1))]))
    optimize_and_check(b.model(), {"Conv": 1})


@pytest.mark.parametrize("const_shape,reason", [
    ((8,), "not per-channel"),          # a 1-D constant broadcasts along the last axis (W)
    ((8, 1, 1), "not per-channel"),     # for a 3-D conv (rank 5) this is axis 2, not channels
    ((1, 8, 8, 8), "not per-channel"),  # per position
    ((2, 1, 8, 1, 1), "not per-channel"),
])
def test_refuses_non_per_channel_constants(const_shape, reason):
    rank3 = len(const_shape) >= 3 and const_shape != (1, 8, 8, 8)
    b = GraphBuilder(seed=10)
    shape = [1, 4, 8, 8, 8] if rank3 else [1, 4, 8, 8]
    x = b.input("x", shape)
    conv = b.conv(x, 8, (3,) * (len(shape) - 2), bias=False)
    b.output(b.node("Mul", [conv, per_channel(b, const_shape)]))
    _, report = optimize_and_check(b.model(), {"Conv": 1, "Mul": 1})
    assert reason in reasons(report)


def test_layer_scale_branch_merges():
    """conv(x) + γ·x: the scaled identity is a diagonal branch."""
    b = GraphBuilder(seed=11)
    x = b.input("x", [1, 8, 8, 8])
    y = b.op("Add", b.conv(x, 8, 3, group=8), b.node("Mul", [x, per_channel(b, (8, 1, 1))]))
    b.output(y)
    optimize_and_check(b.model(), {"Conv": 1})


def test_fastvit_repmixer():
    """x + γ·(BN(dwconv(x)) − BN(x)) → one depthwise conv."""
    b = GraphBuilder(seed=12)
    x = b.input("x", ["N", 8, 8, 8])
    mixer = b.op("Sub", b.bn(b.conv(x, 8, 3, group=8, bias=False)), b.bn(x))
    b.output(b.op("Add", x, b.node("Mul", [mixer, per_channel(b, (8, 1, 1))])))
    optimized, _ = optimize_and_check(b.model(), {"Conv": 1})


def test_repvit_bn_after_join():
    """BN(BN(dw3x3(x)) + dw1x1(x) + x) → one depthwise conv (RepViT's RepVGGDW)."""
    b = GraphBuilder(seed=13)
    x = b.input("x", ["N", 8, 8, 8])
    y = b.op("Add", b.op("Add", b.bn(b.conv(x, 8, 3, group=8)), b.conv(x, 8, 1, group=8, pads=[0] * 4)), x)
    b.output(b.bn(y))
    _, report = optimize_and_check(b.model(), {"Conv": 1})
    assert report.fired == {"fold_conv_affine": 2, "merge_parallel": 1}


# ---- an affine with nothing to fold into says why (issue 21) ------------------------------------------

def test_says_why_a_batchnorm_after_a_relu_stays():
    b = GraphBuilder(seed=14)
    x = b.input("x", ["N", 4, 8, 8])
    b.output(b.bn(b.op("Relu", b.conv(x, 4, 3)), name="bn_after_relu"))
    _, report = optimize_and_check(b.model(), {"Conv": 1, "Relu": 1, "BatchNormalization": 1}, **ONLY)
    assert codes(report) == {"no-linear-op"}
    assert "bn_after_relu reads Relu" in reasons(report) and "nothing to fold it into" in reasons(report)


def test_says_why_a_batchnorm_of_a_graph_input_stays():
    b = GraphBuilder(seed=15)
    x = b.input("x", ["N", 4, 8, 8])
    b.output(b.op("Relu", b.bn(x, name="input_bn")))
    _, report = optimize_and_check(b.model(), {"Relu": 1, "BatchNormalization": 1})
    assert "input_bn reads the graph input 'x'" in reasons(report) and "no-linear-op" in codes(report)


def cast_between(seed: int, shared: bool = False):
    """Conv → Cast(to float16) → Mul by a per-channel float16 constant → Cast back (a mixed-precision
    export); with ``shared``, the first Cast's output is also an output."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", 4, 8, 8])
    half = b.node("Cast", [b.conv(x, 4, 3)], name="to_half", to=TensorProto.FLOAT16)
    scale = b.constant(b.rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float16))
    b.output(b.node("Cast", [b.node("Mul", [half, scale], name="scale")], to=TensorProto.FLOAT))
    if shared:
        b.outputs.append(helper.make_tensor_value_info(half, TensorProto.FLOAT16, None))
    return b.model()


def test_says_a_cast_stands_between_a_conv_and_its_affine():
    model = cast_between(16)
    _, report = optimize_and_check(model, histogram(model), **ONLY)
    assert codes(report) == {"no-linear-op"} and "scale reads Cast to_half of Conv" in reasons(report)


def test_an_affine_after_a_relu_or_a_shared_cast_is_no_candidate():
    """Only a BatchNormalization, or an affine whose only link to a conv is a Cast, gets a line."""
    model = cast_between(17, shared=True)
    _, report = optimize_and_check(model, histogram(model), **ONLY)
    assert not report.refusals, report.format(verbose=True)
    b = GraphBuilder(seed=18)
    x = b.input("x", ["N", 4, 8, 8])
    b.output(b.node("Mul", [b.op("Relu", b.conv(x, 4, 3)), per_channel(b, (4, 1, 1))]))
    _, report = optimize_and_check(b.model(), {"Conv": 1, "Relu": 1, "Mul": 1}, **ONLY)
    assert not report.refusals, report.format(verbose=True)
