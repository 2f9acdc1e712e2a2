"""drop_noop_casts: a Cast to the type its input already has goes, its readers read the input; every
other Cast stays (a real conversion, an input type not known for sure, a graph output).

The graphs carry no value_info for their intermediates, as TorchScript exports do: the types come
from ONNX type inference. The rule refuses nothing (a Cast that converts is no candidate), so there
are no refusal codes to test.
"""

from __future__ import annotations

import numpy as np
import onnx
from helpers import histogram, optimize_and_check
from onnx import TensorProto, helper

from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["drop_noop_casts"])}
FLOAT, FLOAT16, INT64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


def no_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    assert not model.graph.value_info  # the builder declares inputs and outputs only
    return model


def lora_conv(seed: int, dtype=np.float32) -> onnx.ModelProto:
    """PEFT's LoRA conv as TorchScript exports it: (conv(x) + s·B(A(x))) → Cast(to=float) → BN → Relu."""
    b = GraphBuilder(seed, dtype)
    x = b.input("x", ["N", 4, 9, 9])
    lora = b.op("Mul", b.conv(b.conv(x, 2, 3, bias=False), 6, 1, bias=False), b.constant(np.array(2.0, dtype)))
    joined = b.op("Add", b.conv(x, 6, 3, bias=False), lora)
    cast = b.op("Cast", joined, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    b.output(b.op("Relu", b.bn(cast)))
    return no_value_info(b.model())


def test_a_noop_cast_before_a_batchnorm_no_longer_blocks_the_fold():
    model = lora_conv(1)
    optimized, report = optimize_and_check(model, {"Conv": 1, "Relu": 1})
    assert report.fired["drop_noop_casts"] == 1 and "fold_conv_affine" in report.fired


def test_alone_it_drops_the_cast_and_nothing_else():
    model = lora_conv(2)
    expected = {op: n for op, n in histogram(model).items() if op != "Cast"}
    _, report = optimize_and_check(model, expected, **ONLY)
    assert report.fired["drop_noop_casts"] == 1


def test_float16_model():
    """The same in float16: Cast(to=FLOAT16) of a float16 tensor is as much a no-op."""
    optimized, _ = optimize_and_check(lora_conv(3, np.float16), {"Conv": 1, "Relu": 1}, rtol=2e-2, atol=2e-2)
    assert all(i.data_type == TensorProto.FLOAT16 for i in optimized.graph.initializer)


def test_a_cast_of_a_graph_input_goes_one_of_integers_stays():
    """A float input cast to float goes; Shape(x) cast to int64 (a dynamic batch keeps the Shape) is index
    arithmetic: fold_constants' business, no fold waits for it."""
    b = GraphBuilder(4)
    x = b.input("x", ["N", 3, 4])
    same = b.node("Cast", [x], to=FLOAT)
    shape = b.node("Cast", [b.node("Shape", [x])], to=INT64)
    b.output(b.node("Reshape", [b.node("Relu", [same]), shape]))
    _, report = optimize_and_check(no_value_info(b.model()), {"Relu": 1, "Shape": 1, "Cast": 1, "Reshape": 1},
                                   **ONLY)
    assert report.fired["drop_noop_casts"] == 1


def test_real_conversions_stay():
    """float → float16 → float rounds to float16 (the check would see it gone: 5e-4 relative, rtol 1e-4);
    the second of two Casts to float16 is the no-op one."""
    b = GraphBuilder(5)
    x = b.input("x", ["N", 8])
    half = b.node("Cast", [b.node("Cast", [x], to=FLOAT16)], to=FLOAT16)
    b.output(b.node("Cast", [half], to=FLOAT))
    _, report = optimize_and_check(no_value_info(b.model()), {"Cast": 2}, **ONLY)
    assert report.fired["drop_noop_casts"] == 1


def test_a_cast_writing_a_graph_output_stays():
    b = GraphBuilder(6)
    x = b.input("x", ["N", 8])
    b.output(b.node("Cast", [b.node("Relu", [x])], to=FLOAT))
    _, report = optimize_and_check(b.model(), {"Relu": 1, "Cast": 1}, **ONLY)
    assert not report.fired["drop_noop_casts"]


def test_an_input_type_not_known_for_sure_keeps_its_cast():
    """com.microsoft's Gelu has no ONNX schema: type inference cannot name its output type, so the Cast
    after it stays even though it is float in fact."""
    b = GraphBuilder(7)
    x = b.input("x", ["N", 8])
    gelu = b.node("Gelu", [x], domain="com.microsoft")
    b.output(b.node("Relu", [b.node("Cast", [gelu], to=FLOAT)]), ["N", 8])
    graph = helper.make_graph(b.nodes, "g", b.inputs, b.outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    _, report = optimize_and_check(model, {"Gelu": 1, "Cast": 1, "Relu": 1}, **ONLY)
    assert not report.fired["drop_noop_casts"]


def test_a_declared_type_that_contradicts_inference_keeps_the_cast():
    """value_info that names another type than inference derives: the type is not known for sure.
    (onnxruntime would refuse the model, so this is checked on the rewrite alone.)"""
    import onnx_graphsurgeon as gs

    from onnxrep.ir.graph import Context
    from onnxrep.rules import drop_noop_casts

    b = GraphBuilder(8)
    x = b.input("x", ["N", 8])
    relu = b.node("Relu", [x])
    b.output(b.node("Cast", [relu], to=FLOAT, name="cast"))
    model = b.model()
    model.graph.output[0].name = "other"  # the Cast output is no graph output
    model.graph.node[-1].output[0] = "other_cast"
    model.graph.node.append(helper.make_node("Identity", ["other_cast"], ["other"]))
    model.graph.value_info.append(helper.make_tensor_value_info(relu, FLOAT16, None))
    graph = gs.import_onnx(model)
    cast = next(n for n in graph.nodes if n.op == "Cast")
    assert drop_noop_casts.match(Context.of(graph), cast) is None
    graph.tensors()[relu].dtype = np.float32  # declared as inference says: the Cast is a no-op
    assert drop_noop_casts.match(Context.of(graph), cast) is not None
