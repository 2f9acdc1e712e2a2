"""Models as they come: fp16, old and new opsets, subgraphs, quantized and transposed convs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import codes, histogram, optimize_and_check, reasons
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.testing import GraphBuilder


def repvgg_block(b: GraphBuilder, x: str, channels: int = 8) -> str:
    k3 = b.bn(b.conv(x, channels, 3))
    k1 = b.bn(b.conv(x, channels, 1, pads=[0, 0, 0, 0]))
    return b.op("Add", b.op("Add", k3, k1), b.bn(x))


def test_float16_model_merges_in_float64_and_stays_float16():
    b = GraphBuilder(1, dtype=np.float16)
    x = b.input("x", ["N", 8, 10, 10])
    b.output(repvgg_block(b, x))
    optimized, report = optimize_and_check(b.model(), {"Conv": 1}, rtol=1e-2, atol=1e-2)
    assert report.verification.passed
    assert {i.data_type for i in optimized.graph.initializer} == {TensorProto.FLOAT16}


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 15, 17, onnx.defs.onnx_opset_version()])
def test_opsets(opset):
    b = GraphBuilder(2)
    x = b.input("x", ["N", 8, 8, 8])
    b.output(b.op("Relu", repvgg_block(b, x)), ["N", 8, 8, 8])
    model = b.model(opset=opset, ir_version=3 if opset < 9 else None)
    if opset < 9:  # IR 3: initializers must be listed as inputs
        for init in model.graph.initializer:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        _, report = optimize_and_check(model, {"Conv": 2, "BatchNormalization": 3, "Add": 2, "Relu": 1})
        assert "graph input" in reasons(report) and "graph-input" in codes(report)
        return
    optimize_and_check(model, {"Conv": 1, "Relu": 1})


def test_subgraph_reading_a_branch_keeps_it():
    """An If body that reads a branch output is a reader like any other: that branch stays."""
    b = GraphBuilder(3)
    x = b.input("x", [1, 8, 6, 6])
    k3, k1 = b.bn(b.conv(x, 8, 3)), b.bn(b.conv(x, 8, 1, pads=[0] * 4))
    b.inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    body = {name: helper.make_graph([helper.make_node("Identity", [src], [f"{name}_out"])], name, [],
                                    [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])
            for name, src in (("then", k1), ("else", k3))}
    b.nodes.append(helper.make_node("If", ["cond"], ["if_out"], then_branch=body["then"], else_branch=body["else"]))
    b.output(b.op("Add", k3, k1))
    b.outputs.append(helper.make_tensor_value_info("if_out", TensorProto.FLOAT, None))
    model = b.model()
    for cond in (True, False):
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32),
                 "cond": np.array(cond)}
        _, report = optimize_and_check(model, {"Conv": 2, "If": 1, "Add": 1}, feeds=feeds)
        assert "also read by Identity" in reasons(report)


def test_quantized_weights_are_left_alone():
    """QDQ: weights come out of DequantizeLinear, which is not a constant to fold."""
    b = GraphBuilder(4)
    x = b.input("x", [1, 8, 6, 6])
    q = b.constant(np.random.default_rng(0).integers(-100, 100, (8, 8, 3, 3)).astype(np.int8))
    w = b.node("DequantizeLinear", [q, b.constant(np.float32(0.01)), b.constant(np.int8(0))])
    conv = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    b.channels[conv] = 8
    b.output(b.op("Add", b.bn(conv), b.bn(b.conv(x, 8, 1, pads=[0] * 4))))
    expected = {"DequantizeLinear": 1, "Conv": 2, "BatchNormalization": 1, "Add": 1}
    optimized, report = optimize_and_check(b.model(opset=13), expected)
    assert "not a constant" in reasons(report) and "not-constant" in codes(report)


def test_conv_transpose_is_never_a_conv():
    b = GraphBuilder(5)
    x = b.input("x", [1, 8, 6, 6])
    w = b.constant(np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32))
    up = b.node("ConvTranspose", [x, w], pads=[1, 1, 1, 1])
    b.channels[up] = 8
    b.output(b.op("Add", b.bn(up), b.bn(b.conv(x, 8, 1, pads=[0] * 4))))
    optimize_and_check(b.model(), {"ConvTranspose": 1, "BatchNormalization": 1, "Conv": 1, "Add": 1})


def test_constant_nodes_and_identity_weights_merge():
    """Exporters put weights in Constant nodes, sometimes behind Identity."""
    b = GraphBuilder(6)
    x = b.input("x", [1, 8, 6, 6])
    outs = []
    for k in (3, 1):
        w, bias = b.conv_weights(8, 8, (k, k))
        weight = b.node("Identity", [b.node("Constant", [], value=numpy_helper.from_array(w))])
        conv = b.node("Conv", [x, weight, b.constant(bias)], pads=[k // 2] * 4)
        b.channels[conv] = 8
        outs.append(conv)
    b.output(b.op("Add", *outs))
    optimize_and_check(b.model(), {"Conv": 1})


def test_second_run_changes_nothing():
    b = GraphBuilder(7)
    x = b.input("x", ["N", 8, 8, 8])
    b.output(b.op("Relu", repvgg_block(b, b.op("Relu", repvgg_block(b, x)))))
    once, _ = onnxrep.optimize(b.model())
    twice, report = onnxrep.optimize(once)
    assert not report.fired and histogram(twice) == histogram(once) == {"Conv": 2, "Relu": 2}


def test_sequence_typed_intermediates_do_not_break_verification():
    b = GraphBuilder(8)
    x = b.input("x", [1, 8, 6, 6])
    y = repvgg_block(b, x)
    seq = b.node("SequenceConstruct", [y, x])
    first = b.node("SequenceAt", [seq, b.constant(np.array(0, np.int64))])
    b.output(first, [1, 8, 6, 6])
    _, report = optimize_and_check(b.model(), {"Conv": 1, "SequenceConstruct": 1, "SequenceAt": 1})
    assert report.verification.passed


def test_node_metadata_survives_on_untouched_nodes():
    b = GraphBuilder(9)
    x = b.input("x", [1, 8, 6, 6])
    b.output(b.op("Relu", repvgg_block(b, x)))
    model = b.model()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    helper.set_metadata_props(relu, {"pkg.torch.onnx.class_hierarchy": "['Net', 'ReLU']"})
    optimized, _ = onnxrep.optimize(model)
    kept = next(n for n in optimized.graph.node if n.op_type == "Relu")
    assert kept.metadata_props == relu.metadata_props
