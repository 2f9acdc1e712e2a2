"""float16 models: BatchNormalization with float16 scale/bias and float32 statistics (opset 15's T1/T2)
folds exactly: the math in float64, the merged weights cast to float16 once."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import optimize_and_check, random_feeds, run
from onnx import numpy_helper

from onnxrep.testing import GraphBuilder


def conv_bn(params_dtype, stats_dtype, opset: int = 15):
    b = GraphBuilder(seed=16, dtype=np.float16)
    x = b.input("x", [1, 8, 10, 10])
    y = b.conv(x, 8, 3)
    gamma, beta, mean, var = b.bn_params(8)
    inputs = [y, *(b.constant(p.astype(params_dtype)) for p in (gamma, beta)),
              *(b.constant(p.astype(stats_dtype)) for p in (mean, var))]
    b.output(b.node("BatchNormalization", inputs, epsilon=1e-3))
    return b.model(opset=opset)


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """conv then BN in float64 from the stored values (each parameter exactly as the model holds it)."""
    w, bias, gamma, beta, mean, var = (numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer)
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))   # n c h w 3 3
    y = np.einsum("nchwij,ocij->nohw", windows, w) + bias[:, None, None]
    scale = gamma / np.sqrt(var + 1e-3)
    return (y - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]


@pytest.mark.parametrize("params_dtype,stats_dtype", [
    (np.float16, np.float32),   # model.half() with BN statistics kept float32
    (np.float32, np.float32),   # every BN parameter float32 on a float16 input
    (np.float16, np.float16),
])
def test_mixed_precision_batchnorm_folds_exactly(params_dtype, stats_dtype):
    model = conv_bn(params_dtype, stats_dtype)
    onnx.checker.check_model(model, full_check=True)
    optimized, report = optimize_and_check(model, {"Conv": 1}, rtol=1e-2, atol=1e-2)
    assert report.verification.passed
    assert {numpy_helper.to_array(i).dtype for i in optimized.graph.initializer} == {np.dtype(np.float16)}
    x = random_feeds(model)["x"]
    want = reference(model, x)
    got = run(optimized, {"x": x})[0].astype(np.float64)
    original = run(model, {"x": x})[0].astype(np.float64)
    scale = float(np.abs(want).max())
    # As close to the float64 math as onnxruntime's own float16 run of the original (within rounding).
    assert np.abs(got - want).max() <= max(2 * np.abs(original - want).max(), 2 ** -10 * scale)
