"""The promise before edge conversion: optimized models load and run in OpenVINO, equal to onnxruntime
(an integration test: tests/integration.py)."""

from __future__ import annotations

from pathlib import Path

import integration
import numpy as np
import pytest
from helpers import random_feeds, run

import onnxrep

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".train.onnx") for p in MODELS.glob("*.train.onnx")))
def test_optimized_sample_runs_in_openvino(name, tmp_path):
    ov = integration.module("openvino")
    optimized, _ = onnxrep.optimize(MODELS / f"{name}.train.onnx")
    path = tmp_path / "optimized.onnx"
    path.write_bytes(optimized.SerializeToString())
    feeds = random_feeds(optimized, seed=3)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(feeds)[compiled.output(0)]
    want = run(optimized, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
