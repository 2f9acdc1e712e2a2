"""A small YOLO-like detector exported with dynamic height and width (tools/export_detector.py).

Its stride-32 level holds YOLOv10's RepVGGDW (7x7 + 3x3 depthwise conv-BN, one 7x7 conv
deployed); only multiples of 32 run; its Detect head reads Shape of a Conv(1x1) → BN → SiLU
(dynamo) and ends in dist2bbox's Concat. Verification must exercise every tap of the merged
7x7, and the net must fold to the deploy twin Ultralytics' fuse() gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import altered_rule, histogram, run

import onnxrep
from onnxrep.rules import DEFAULT_RULES

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "detector"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MERGED = "p5.1"  # the RepVGGDW's name in both exports' node names


def load(variant: str, kind: str = "train") -> onnx.ModelProto:
    return onnx.load(FIXTURES / MANIFEST["files"][variant][kind])


def centre_tap_only(spec, _):
    """A merge wrong only in its border taps: the merged 7x7 keeps its centre tap, the others are 0."""
    if spec.weight.shape[2:] != (7, 7):
        return spec
    weight = np.zeros_like(spec.weight)
    weight[:, :, 3, 3] = spec.weight[:, :, 3, 3]
    from dataclasses import replace
    return replace(spec, weight=weight)


def rules_with_centre_tap_bug():
    return tuple(altered_rule("centre_tap", centre_tap_only) if r.name == "merge_parallel" else r
                 for r in DEFAULT_RULES)


@pytest.mark.parametrize("variant", ["ts_hw", "dynamo_hw"])
def test_verification_sizes_exercise_every_tap_of_the_merged_7x7(variant):
    _, report = onnxrep.optimize(load(variant))
    v = report.verification
    assert v.passed and not report.dropped and v.unexercised == (), report.format()
    # 37x53 does not run (the stride-32 Concat): the odd size is drawn from the multiples of 32 ...
    assert v.other_sizes[0]["images"] == (2, 3, 96, 160) and "37x53 does not run" in v.size_notes[1]
    # ... and where the 7x7 at stride 32 still misses data (3x5), a larger size follows, the smallest that does
    assert v.other_sizes[1]["images"] == (1, 3, 128, 128), v.sizes


def test_a_merge_wrong_only_in_its_border_taps_is_caught():
    model = load("ts_hw")
    _, report = onnxrep.optimize(model, rules=rules_with_centre_tap_bug())
    assert report.verification.passed and [f.rule for f in report.dropped] == ["centre_tap"], report.format()
    # at 32x32 alone (the inputs given) the same bug passes: the stride-32 level is 1x1 there. The
    # report says so, by name, and how to get out of it.
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    _, blind = onnxrep.optimize(model, rules=rules_with_centre_tap_bug(), inputs={"images": x})
    v = blind.verification
    assert v.passed and blind.dropped == [] and [u.kernel for u in v.unexercised] == [(7, 7)]
    assert v.unexercised[0].input == (1, 1) and v.unexercised[0].needs == (4, 4)
    line = blind.format()
    assert "border taps unchecked: 1 rewritten conv(s)" in line and MERGED in line and "--input-shape" in line


def test_a_given_input_shape_keeps_the_second_size_and_names_what_it_leaves_unchecked():
    _, report = onnxrep.optimize(load("ts_hw"), input_shapes={"images": (1, 3, 32, 32)})
    v = report.verification
    assert v.passed and v.size_notes[0] == "as given" and len(v.sizes) == 2  # no larger size: the size is yours
    assert [u.input for u in v.unexercised] == [(3, 5)], report.format()  # the 96x160 second size: 3 rows
    data = report.to_dict()["verification"]
    assert list(data["unexercised"][0]["needs"]) == [4, 4] and data["sizes"][0]["why"] == "as given"


@pytest.mark.parametrize("variant", ["ts_hw", "dynamo_hw"])
def test_detector_folds_to_its_deploy_twin(variant):
    """Both exports, dynamo's BatchNorms with Shape readers of their conv too (issue 22 item 2)."""
    train, deploy = load(variant), load(variant, "deploy")
    optimized, report = onnxrep.optimize(train)
    assert report.verification.passed and not report.dropped, report.format()
    for shape in MANIFEST["check_sizes"]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        (want,), (got,) = run(deploy, {"images": x}), run(optimized, {"images": x})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    # the twin has the same index arithmetic for fold_constants to tidy: compare both tidied
    twin, _ = onnxrep.optimize(deploy)
    assert histogram(optimized) == histogram(twin), report.format(verbose=True)


def test_shape_readers_of_a_conv_before_its_batchnorm_are_in_the_dynamo_export():
    """The pattern issue 22 item 2 is about, as dynamo writes it: Shape(start=2,end=3) and
    Shape(start=3,end=4) of a Conv(1x1) whose output also goes to BatchNormalization → SiLU."""
    graph = load("dynamo_hw").graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    conv = next(n for n in graph.node if n.op_type == "Conv" and
                sorted(r.op_type for r in readers[n.output[0]]) == ["BatchNormalization", "Shape", "Shape"])
    weight = next(t for t in graph.initializer if t.name == conv.input[1])
    assert tuple(weight.dims[2:]) == (1, 1)
    spans = sorted(tuple(a.i for a in r.attribute if a.name in ("start", "end"))
                   for r in readers[conv.output[0]] if r.op_type == "Shape")
    assert spans in ([(3, 2), (4, 3)], [(2, 3), (3, 4)])


def test_no_unknown_shape_refusals_where_shape_inference_knows_them():
    """TorchScript leaves dist2bbox's Concat ([batch, 2, anchors] operands) without shapes; inference has them."""
    _, report = onnxrep.optimize(load("ts_hw"), verify=False)
    assert not any("unknown" in f.reason for f in report.refusals), report.format(verbose=True)


def test_cli_says_what_a_given_input_shape_does_to_the_sizes(tmp_path):
    from click.testing import CliRunner

    from onnxrep import cli

    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli.main, ["optimize", "--help"]).output.split())
    assert "It sets the first size checked; the second, odd size" in help_text and "is still checked" in help_text
    source = FIXTURES / MANIFEST["files"]["ts_hw"]["train"]
    result = runner.invoke(cli.main, ["optimize", str(source), str(tmp_path / "out.onnx"),
                                      "--input-shape", "images:1x3x32x32", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert [s["why"] for s in data["sizes"]] == ["as given", "multiples of 32: images=2x3x37x53 does not run"]
    assert data["other_input_shapes"] == [{"images": [2, 3, 96, 160]}] and data["other_sizes_skipped"] is None
    assert [u["kernel"] for u in data["unexercised"]] == [[7, 7]]
    assert "border taps unchecked" in result.output
