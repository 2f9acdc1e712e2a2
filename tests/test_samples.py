"""End to end on the shipped samples: optimize(train) is the deploy twin, node for node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import histogram, random_feeds, run

import onnxrep
from onnxrep.verify.check import verify_at

MODELS = Path(__file__).resolve().parent.parent / "models"
SAMPLES = sorted(p.name.removesuffix(".train.onnx") for p in MODELS.glob("*.train.onnx"))


def test_samples_are_shipped():
    assert {"repvgg", "acnet"} <= set(SAMPLES)


@pytest.mark.parametrize("name", SAMPLES)
def test_train_becomes_deploy(name):
    train = onnx.load(MODELS / f"{name}.train.onnx")
    deploy = onnx.load(MODELS / f"{name}.deploy.onnx")
    optimized, report = onnxrep.optimize(MODELS / f"{name}.train.onnx")
    assert report.verification.passed
    assert histogram(optimized) == histogram(deploy)
    feeds = random_feeds(train, seed=7)
    want = run(deploy, feeds)[0]
    scale = float(np.abs(want).max())
    for got in (run(optimized, feeds)[0], run(train, feeds)[0]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    # Every weight of the deploy twin is matched (same shapes, same number of parameters).
    assert sorted(tuple(i.dims) for i in optimized.graph.initializer) == \
        sorted(tuple(i.dims) for i in deploy.graph.initializer)


@pytest.mark.parametrize("name", SAMPLES)
def test_deploy_twin_passes_the_output_check(name):
    result = verify_at(onnx.load(MODELS / f"{name}.train.onnx"), onnx.load(MODELS / f"{name}.deploy.onnx"),
                    local=False)
    assert result.passed, result.outputs


@pytest.mark.parametrize("name", SAMPLES)
def test_idempotent(name):
    once, _ = onnxrep.optimize(MODELS / f"{name}.train.onnx", verify=False)
    twice, report = onnxrep.optimize(once, verify=False)
    assert not report.fired and histogram(twice) == histogram(once)
