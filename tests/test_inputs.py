"""Verification on the caller's inputs: ``--inputs DIR`` (.pb by name or order, NAME.npy) and API ``inputs=``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep import cli
from onnxrep.errors import BadInputs

SAMPLE = Path(__file__).resolve().parent.parent / "models" / "repvgg.train.onnx"
X = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)


def expand_model() -> onnx.ModelProto:
    """Expand(data, shape) then a Conv + BN (so that something is rewritten): ``shape`` carries data."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(a, n) for n, a in (
        ("w", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
        ("scale", rng.uniform(0.5, 2, 4).astype(np.float32)), ("bias", rng.standard_normal(4).astype(np.float32)),
        ("mean", rng.standard_normal(4).astype(np.float32)), ("var", rng.uniform(0.5, 2, 4).astype(np.float32)))]
    graph = helper.make_graph(
        [helper.make_node("Expand", ["data", "shape"], ["big"]),
         helper.make_node("Conv", ["big", "w"], ["c"]),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"])],
        "expand", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 1, 1]),
                   helper.make_tensor_value_info("shape", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["optimize", *map(str, args)])
    return result.exit_code, result.output


def test_api_inputs_replace_the_random_ones():
    _, report = onnxrep.optimize(SAMPLE, inputs={"input": X})
    assert report.verification.passed and report.verification.input_shapes == {"input": (2, 3, 32, 32)}


def test_npy_named_after_the_input(tmp_path):
    np.save(tmp_path / "input.npy", X)
    code, output = run(SAMPLE, tmp_path / "out.onnx", "--inputs", tmp_path)
    assert code == 0, output
    assert "at input=2x3x32x32" in output


def test_pb_files_by_order_or_by_name(tmp_path):
    model = tmp_path / "expand.onnx"
    onnx.save(expand_model(), model)
    data = tmp_path / "data"
    data.mkdir()
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32)).SerializeToString())
    (data / "input_1.pb").write_bytes(numpy_helper.from_array(np.array([2, 3, 5, 7])).SerializeToString())
    (data / "output_0.pb").write_bytes(b"expected outputs: not an input")
    code, output = run(model, tmp_path / "out.onnx", "--inputs", data)
    assert code == 0, output
    assert "at data=1x3x1x1, shape=4" in output and "fold_conv_affine ×1" in output
    # by the names they hold, whatever their order
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(np.array([2, 3, 5, 7]), "shape").SerializeToString())
    (data / "input_1.pb").write_bytes(numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "data")
                                      .SerializeToString())
    assert run(model, tmp_path / "out2.onnx", "--inputs", data)[0] == 0


def test_random_integer_input_says_pass_inputs(tmp_path):
    model = tmp_path / "expand.onnx"
    onnx.save(expand_model(), model)
    code, output = run(model, tmp_path / "out.onnx")
    assert code == 7 and len(output.strip().splitlines()) == 1
    assert "random values of integer input(s) 'shape' may be invalid" in output and "--inputs DIR" in output
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("file", "not a directory"),
    ("extra", "match no input by name"),
    ("dtype", "input 'input' is float64, the model takes tensor(float)"),
    ("garbage", "cannot read it as tensor(float)"),
    ("none", "no value for input(s) 'input'"),
])
def test_inputs_that_do_not_fit_are_usage_errors(tmp_path, case, message):
    data = tmp_path / "data"
    if case == "file":
        data.write_text("x")
    elif case != "missing":
        data.mkdir()
    if case == "extra":
        np.save(data / "input.npy", X)
        np.save(data / "other.npy", X)
    elif case == "dtype":
        np.save(data / "input.npy", X.astype(np.float64))
    elif case == "garbage":
        (data / "input_0.pb").write_bytes(b"\xff\xff\xff")
    code, output = run(SAMPLE, tmp_path / "out.onnx", "--inputs", data)
    assert code == 2 and output.startswith("onnxrep: error: --inputs") and len(output.strip().splitlines()) == 1
    assert message in output
    assert not (tmp_path / "out.onnx").exists()


def test_api_inputs_name_unknown_inputs():
    with pytest.raises(BadInputs, match="no model input named 'x'"):
        onnxrep.optimize(SAMPLE, inputs={"input": X, "x": X})
