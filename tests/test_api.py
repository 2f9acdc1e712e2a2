"""The Python API: ModelProto, path or graphsurgeon graph in; model and Report out."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import histogram

import onnxrep
from onnxrep.errors import UsageError

SAMPLE = Path(__file__).resolve().parent.parent / "models" / "acnet.train.onnx"


def test_accepts_path_model_and_graph_alike():
    model = onnx.load(SAMPLE)
    original = model.SerializeToString()
    results = [onnxrep.optimize(src) for src in (SAMPLE, str(SAMPLE), model, gs.import_onnx(onnx.load(SAMPLE)))]
    assert model.SerializeToString() == original  # the caller's model is not modified
    histograms = {tuple(sorted(histogram(m).items())) for m, _ in results}
    assert len(histograms) == 1
    for _, report in results:
        assert isinstance(report, onnxrep.Report) and report.verification.passed
        assert report.fired["merge_parallel"] == 4 and report.after.nodes == 11


def test_report_is_json_ready():
    import json
    _, report = onnxrep.optimize(SAMPLE)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rules_fired"] == {"fold_conv_affine": 12, "merge_parallel": 4}
    assert data["verification"]["passed"] and data["before"]["nodes"] == 39


def test_progress_reports_each_long_step_as_the_time_line_names_it():
    steps = []
    _, report = onnxrep.optimize(SAMPLE, progress=steps.append)
    assert steps == ["load", "rewrite", "verify"] == list(report.seconds)


@pytest.mark.parametrize("shapes, message", [
    ({"x": (1, 3, 32, 32)}, "x:1x3x32x32: the model has no input 'x'; its inputs: input [N, 3, 32, 32]"),
    ({"input": (1, 3, 32)}, "input:1x3x32: the model's input is input [N, 3, 32, 32]: 4 dims, not 3"),
    ({"input": (1, 3, 0, 32)}, "input:1x3x0x32: dim 2 is 0; every dim must be ≥ 1"),
    ({"input": (1, 3, 32, 64)}, "input:1x3x32x64: the model's input is input [N, 3, 32, 32]: its dim 3 is a "
                                "static 32, not 64"),
])
def test_input_shapes_that_do_not_fit_are_the_usage_error_the_cli_gives(shapes, message, tmp_path):
    for model in (SAMPLE, onnx.load(SAMPLE)):
        with pytest.raises(UsageError) as caught:
            onnxrep.optimize(model, input_shapes=shapes)
        assert str(caught.value) == f"input_shapes: {message}" and caught.value.exit_code == 2
    (name, shape), = shapes.items()
    from test_cli import onnxrep_cmd
    cli = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--input-shape", f"{name}:{'x'.join(map(str, shape))}")
    assert cli.returncode == 2 and cli.stderr == f"onnxrep: error: --input-shape {message}\n"
