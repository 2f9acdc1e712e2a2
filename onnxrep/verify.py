"""Check an optimized model against its original in onnxruntime.

Both run with onnxruntime's own graph optimizations disabled (its Conv+BN
fusion would otherwise hide our mistakes), on the same seeded random inputs.
Every output must satisfy ``|opt − ref| ≤ atol · scale + rtol · |ref|`` where
``scale`` is the largest magnitude of that reference output, so the absolute
tolerance follows the output's size. Integer and bool outputs must be equal.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from onnxrep import feeds as feeding
from onnxrep.errors import UnsupportedModel
from onnxrep.feeds import DEFAULT_BATCH, DEFAULT_DIM  # noqa: F401 (part of this module's interface)
from onnxrep.io import too_big_for_protobuf

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
#: float16 carries ~2^-10 relative precision against float32's 2^-23.
FLOAT16_FACTOR = 2.0**13


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    scale: float  # largest |reference| value
    allowed: float  # error allowed at the largest value
    passed: bool


@dataclass(frozen=True)
class Verification:
    passed: bool
    outputs: tuple[OutputCheck, ...]
    input_shapes: dict[str, tuple[int, ...]]
    seconds: float
    intermediates: int = 0  # how many of the checks are tensors inside the graph

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)


def _session(model: onnx.ModelProto, tmp_dir: str, tag: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # onnxruntime's own log lines would break our one-line errors
    ort.set_default_logger_severity(4)
    try:
        if too_big_for_protobuf(model):
            path = os.path.join(tmp_dir, f"{tag}.onnx")
            onnx.save_model(model, path, save_as_external_data=True, location=f"{tag}.data")
            try:
                return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            finally:
                load_external_data_for_model(model, tmp_dir)  # save_model moved the weights out: back in
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own unexported error types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsupportedModel(f"onnxruntime cannot run the model: {first}") from None


def compare(name: str, reference: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> OutputCheck:
    if reference.shape != actual.shape:
        return OutputCheck(name, float("inf"), 0.0, 0.0, False)
    if not np.issubdtype(reference.dtype, np.floating):
        equal = bool(np.array_equal(reference, actual))
        return OutputCheck(name, 0.0 if equal else float("inf"), 0.0, 0.0, equal)
    if reference.dtype == np.float16:
        rtol, atol = rtol * FLOAT16_FACTOR, atol * FLOAT16_FACTOR
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    finite = np.isfinite(ref)
    same_nonfinite = np.array_equal(ref[~finite], act[~finite], equal_nan=True)
    error = np.abs(act[finite] - ref[finite])
    scale = float(np.abs(ref[finite]).max(initial=0.0))
    allowed = atol * max(scale, np.finfo(np.float32).tiny) + rtol * np.abs(ref[finite])
    passed = bool(same_nonfinite and np.all(error <= allowed))
    return OutputCheck(name, float(error.max(initial=0.0)), scale,
                       float(atol * scale + rtol * scale), passed)


def shared_intermediates(original: onnx.ModelProto, optimized: onnx.ModelProto) -> list[str]:
    """Float tensors computed inside both graphs under the same name: rewrites keep the names
    of the tensors they rewrite, so these are checked too, before pooling or argmax can hide a
    difference."""
    def computed(model):
        return {o for n in model.graph.node if n.op_type not in ("Constant", "Shape") for o in n.output if o}
    outputs = {o.name for o in original.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in original.graph.value_info}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    shared = (computed(original) & computed(optimized)) - outputs
    return sorted(n for n in shared if types.get(n, TensorProto.FLOAT) in floats)


def _exposing(model: onnx.ModelProto, names: list[str]):
    """The model with ``names`` appended to its outputs, for a moment (no copy of the weights)."""
    class Exposed:
        def __enter__(self):
            model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
            return model

        def __exit__(self, *exc):
            del model.graph.output[len(model.graph.output) - len(names):]
    return Exposed()


def verify(original: onnx.ModelProto, optimized: onnx.ModelProto, *,
           input_shapes: dict[str, tuple[int, ...]] | None = None,
           rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, seed: int = 0,
           feeds: feeding.Inputs | None = None) -> Verification:
    """Run both models on ``feeds`` (a directory of .pb/.npy files or name → value) or random inputs."""
    given = feeds
    start = time.perf_counter()
    inner = shared_intermediates(original, optimized)
    with tempfile.TemporaryDirectory(prefix="onnxrep-verify-") as tmp_dir:
        try:
            with _exposing(original, inner):
                reference_session = _session(original, tmp_dir, "original")
        except UnsupportedModel:
            inner = []  # an intermediate onnxruntime will not expose (a sequence, say): outputs only
            reference_session = _session(original, tmp_dir, "original")
        feeds = feeding.inputs_for(reference_session, given, input_shapes or {}, seed)
        names = [o.name for o in reference_session.get_outputs()]
        try:
            reference = reference_session.run(names, feeds, _QUIET)
        except Exception as error:
            raise UnsupportedModel(f"onnxruntime cannot run the original model on inputs "
                                   f"{_shapes(feeds)}: {str(error).strip().splitlines()[0]} "
                                   f"{feeding.hint(reference_session, given)}") from None
        del reference_session
        with _exposing(optimized, inner):
            optimized_session = _session(optimized, tmp_dir, "optimized")
        actual = optimized_session.run(names, feeds, _QUIET)
    kept = [(n, r, a) for n, r, a in zip(names, reference, actual) if isinstance(r, np.ndarray) or n not in inner]
    checks = tuple(compare(n, r, a, rtol, atol) for n, r, a in feeding.leaves(kept))
    return Verification(all(c.passed for c in checks), checks, _shapes(feeds),
                        time.perf_counter() - start, len(inner))


def _shapes(feeds: dict[str, object]) -> dict[str, tuple[int, ...] | str]:
    return {k: tuple(v.shape) if isinstance(v, np.ndarray) else feeding.describe(v) for k, v in feeds.items()}


_QUIET = ort.RunOptions()
_QUIET.log_severity_level = 4
