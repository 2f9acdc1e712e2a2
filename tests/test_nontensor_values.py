"""Sequences, optionals and weights read inside subgraphs: what graphsurgeon alone would lose on export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.testing import GraphBuilder


def repvgg_model(opset: int = 18) -> onnx.ModelProto:
    b = GraphBuilder(4)
    x = b.input("x", [1, 8, 6, 6])
    b.output(b.op("Add", b.bn(b.conv(x, 8, 3)), b.bn(b.conv(x, 8, 1, pads=[0] * 4))), [1, 8, 6, 6])
    return b.model(opset=opset)


def optional_of(elem: onnx.TypeProto) -> onnx.TypeProto:
    return helper.make_optional_type_proto(elem)


def test_sequence_and_optional_values_keep_their_types_and_attributes():
    model = repvgg_model()
    g = model.graph
    float_tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    g.input.append(helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None))
    g.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    g.node.extend([helper.make_node("SequenceAt", ["s", "zero"], ["e"]),
                   helper.make_node("Optional", ["e"], ["o"]),
                   helper.make_node("Optional", [], ["none"], type=float_tensor)])  # a TYPE_PROTO attribute
    g.output.extend(helper.make_value_info(n, optional_of(float_tensor)) for n in ("o", "none"))
    onnx.checker.check_model(model, full_check=True)

    with pytest.raises(onnxrep.errors.UnsupportedModel, match="cannot invent a value for input 's'.*--inputs"):
        onnxrep.optimize(model)
    feeds = {"x": np.ones((1, 8, 6, 6), np.float32), "s": [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]}
    optimized, report = onnxrep.optimize(model, inputs=feeds)
    assert report.fired["merge_parallel"] == 1 and report.verification.passed
    assert report.verification.input_shapes["s"] == "sequence of 2"
    onnx.checker.check_model(optimized, full_check=True)
    assert [o.type for o in optimized.graph.output[1:]] == [o.type for o in model.graph.output[1:]]
    assert [n.attribute for n in optimized.graph.node if n.output[0] == "none"] == [g.node[-1].attribute]


def test_weight_read_in_a_subgraph_keeps_its_values(tmp_path):
    """A top-level weight an If branch also reads: the exporter copies it into the branch, values and all."""
    model = repvgg_model()
    g = model.graph
    bias = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)
    g.initializer.append(numpy_helper.from_array(bias, "bias"))
    g.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    out = g.output[0].name
    branch = [helper.make_graph([helper.make_node(op, [out, "bias"], [f"{op}_out"])], op, [],
                                [helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, [1, 8, 6, 6])])
              for op in ("Add", "Sub")]
    g.node.extend([helper.make_node("Add", [out, "bias"], ["top"]),
                   helper.make_node("If", ["cond"], ["z"], then_branch=branch[0], else_branch=branch[1])])
    g.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 6, 6]) for n in ("top", "z")])
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    for cond in (True, False):  # from a path, weights are read out of the proto (where the bug was)
        optimized, report = onnxrep.optimize(path, inputs={"x": x, "cond": np.array(cond)})
        assert report.fired["merge_parallel"] == 1 and report.verification.passed
        onnx.checker.check_model(optimized, full_check=True)
        copies = [t for n in optimized.graph.node for a in n.attribute if a.HasField("g")
                  for t in a.g.initializer if t.name == "bias"]
        assert all(np.array_equal(numpy_helper.to_array(t), bias) for t in copies)
