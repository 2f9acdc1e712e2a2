"""Real PyTorch exports (tools/export_fixtures.py, both exporters): train becomes deploy.

For every block and exporter, optimize(train) verifies, has the deploy twin's
op histogram or fewer nodes, and equals the deploy twin's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import histogram, random_feeds, run

import onnxrep
from onnxrep.verify import verify

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [(block, exporter) for block, entry in MANIFEST["blocks"].items() for exporter in entry["files"]]


@pytest.mark.parametrize("block,exporter", CASES, ids=[f"{b}-{e}" for b, e in CASES])
def test_train_export_becomes_deploy(block, exporter):
    files = MANIFEST["blocks"][block]["files"][exporter]
    train = onnx.load(FIXTURES / files["train"])
    deploy = onnx.load(FIXTURES / files["deploy"])
    optimized, report = onnxrep.optimize(train)
    assert report.verification.passed and not report.dropped
    assert report.fired, report.format(verbose=True)
    if histogram(optimized) != histogram(deploy):
        assert len(optimized.graph.node) < len(deploy.graph.node), report.format(verbose=True)
    feeds = random_feeds(train, seed=5, dims=16)
    if block == "dbb" and exporter == "ts":
        feeds = {k: v[:1] for k, v in feeds.items()}  # its export bakes in batch 1
    want = run(deploy, feeds)[0]
    got = run(optimized, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("block,exporter", CASES, ids=[f"{b}-{e}" for b, e in CASES])
def test_deploy_twin_passes_the_output_check(block, exporter):
    """The author's own conversion is exact: the noise-floor check must accept it."""
    files = MANIFEST["blocks"][block]["files"][exporter]
    result = verify(onnx.load(FIXTURES / files["train"]), onnx.load(FIXTURES / files["deploy"]), local=False)
    assert result.passed, result.outputs
