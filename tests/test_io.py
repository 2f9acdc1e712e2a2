"""Saving one weight at a time, and weights read out of the proto, must not change a single byte."""

import io as pyio

import numpy as np
import onnx
from helpers import run
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.io import files as io
from onnxrep.testing import GraphBuilder


def _assorted_model(bfloat16: bool = True) -> onnx.ModelProto:
    b = GraphBuilder(3)
    x = b.input("x", [1, 4, 6, 6])
    b.output(b.op("Add", b.bn(b.conv(x, 4, 3)), b.bn(b.conv(x, 4, 1))))
    model = b.model()
    model.graph.initializer.extend([
        helper.make_tensor("typed_floats", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]),
        helper.make_tensor("strings", TensorProto.STRING, [2], [b"a", b"bc"]),
        numpy_helper.from_array(np.zeros((0,), np.float32), "empty"),
        numpy_helper.from_array(np.arange(70_000, dtype=np.float32).reshape(7, 10_000), "big"),
    ])
    extras = [("typed_floats", TensorProto.FLOAT), ("strings", TensorProto.STRING), ("empty", TensorProto.FLOAT),
              ("big", TensorProto.FLOAT)]
    if bfloat16:  # onnxruntime's Python API cannot return it: only for runs without verification
        model.graph.initializer.append(helper.make_tensor("bf16", TensorProto.BFLOAT16, [2], [1.0, -2.0]))
        extras.append(("bf16", TensorProto.BFLOAT16))
    for name, elem in extras:
        model.graph.node.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        shape = list(next(t.dims for t in model.graph.initializer if t.name == name))
        model.graph.output.append(helper.make_tensor_value_info(f"{name}_out", elem, shape))
    model.doc_string = "kept"
    return model


def test_write_model_is_the_same_message():
    model = _assorted_model()
    buffer = pyio.BytesIO()
    io.write_model(model, buffer)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(buffer.getvalue())
    assert parsed == model
    assert len(buffer.getvalue()) == len(model.SerializeToString())


def test_weights_of_every_type_survive_a_run_from_a_path(tmp_path):
    """The path API reads every weight out of the proto to free it: nothing may change on the way,
    bfloat16 (which numpy cannot hold) included."""
    model = _assorted_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    optimized, report = onnxrep.optimize(path, verify=False)
    assert report.fired["merge_parallel"] == 1
    kept = {t.name: t for t in optimized.graph.initializer}
    for tensor in model.graph.initializer[-5:]:  # same type, shape and values (typed fields may become raw)
        assert kept[tensor.name].data_type == tensor.data_type, tensor.name
        assert np.array_equal(numpy_helper.to_array(kept[tensor.name]), numpy_helper.to_array(tensor)), tensor.name
    saved = tmp_path / "out.onnx"
    io.save_model(optimized, saved)
    assert onnx.load(saved) == optimized


def test_a_run_from_a_path_equals_a_run_from_the_proto(tmp_path):
    model = _assorted_model(bfloat16=False)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    from_path, _ = onnxrep.optimize(path)
    from_proto, _ = onnxrep.optimize(model)
    assert list(from_path.graph.node) == list(from_proto.graph.node)
    values = [{t.name: numpy_helper.to_array(t).tolist() for t in m.graph.initializer} for m in (from_path, from_proto)]
    assert values[0] == values[1]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(run(from_path, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-5)
