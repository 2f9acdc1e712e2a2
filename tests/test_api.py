"""The Python API: ModelProto, path or graphsurgeon graph in; model and Report out."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from helpers import histogram

import onnxrep

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


def test_progress_reports_each_long_step():
    steps = []
    onnxrep.optimize(SAMPLE, progress=steps.append)
    assert steps == ["load", "rewrite", "verify"]
