"""Shapes known before matching: a layout or rank the export left out but ONNX shape inference knows
is used, and a refusal for an unknown one says that inference cannot tell either (issue 22 item 3)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxrep


def _concat_of_two_affines(shape_from_input: bool) -> onnx.ModelProto:
    """Concat(y / 2, y * 3) of y = Reshape(x, s), no value_info: y's rank is known to inference when s is
    a constant, and to nobody when s is an input of unknown length."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    weights = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
               numpy_helper.from_array(np.array(3.0, np.float32), "three")]
    if shape_from_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.INT64, ["n"]))
    else:
        weights.append(numpy_helper.from_array(np.array([1, 4, 64, 1], np.int64), "s"))
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape"),
             helper.make_node("Div", ["y", "two"], ["a"], name="half"),
             helper.make_node("Mul", ["y", "three"], ["b"], name="triple"),
             helper.make_node("Concat", ["a", "b"], ["out"], name="concat", axis=1)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_layout_shape_inference_knows_is_not_refused_as_unknown():
    _, report = onnxrep.optimize(_concat_of_two_affines(shape_from_input=False), verify=False)
    reasons = [f.reason for f in report.refusals]
    assert reasons and not any("unknown" in r for r in reasons), reasons  # refused for what it is: its cost
    assert any("would cost" in r for r in reasons)


def test_an_unknown_layout_says_that_shape_inference_cannot_tell_either():
    _, report = onnxrep.optimize(_concat_of_two_affines(shape_from_input=True), verify=False)
    assert [f.reason for f in report.refusals] == [
        f"the layout or channel count of {name}'s input is unknown: not in the exported shapes, "
        "and ONNX shape inference cannot tell either" for name in ("half", "triple")]
