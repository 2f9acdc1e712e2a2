"""The Python API: ``onnxrep.optimize(model) -> (optimized model, Report)``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxrep import engine, io
from onnxrep.errors import VerificationFailed
from onnxrep.report import ModelStats, Report
from onnxrep.rules import DEFAULT_RULES, RULES_BY_NAME, Rule
from onnxrep.verify import DEFAULT_ATOL, DEFAULT_RTOL, verify


def select_rules(only: Sequence[str] = (), skip: Sequence[str] = ()) -> tuple[Rule, ...]:
    unknown = [n for n in (*only, *skip) if n not in RULES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES_BY_NAME)}")
    return tuple(r for r in DEFAULT_RULES if (not only or r.name in only) and r.name not in skip)


def optimize(model: onnx.ModelProto | str | os.PathLike, *,
             rules: Sequence[Rule] = DEFAULT_RULES,
             check: bool = True,
             input_shapes: dict[str, tuple[int, ...]] | None = None,
             rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, seed: int = 0,
             ) -> tuple[onnx.ModelProto, Report]:
    """Re-parameterize ``model`` (a ModelProto or a path) and verify it in onnxruntime.

    The input ModelProto is not modified. Raises :class:`onnxrep.errors.VerificationFailed`
    (with the report attached as ``.report``) when the outputs differ.
    """
    report = Report()
    start = time.perf_counter()
    if not isinstance(model, onnx.ModelProto):
        path = model
        model = io.load_model(path)
        report.seconds["load"] = time.perf_counter() - start
        report.before = ModelStats.of(model, os.path.getsize(path))
    else:
        report.before = ModelStats.of(model)

    start = time.perf_counter()
    graph = gs.import_onnx(model)
    engine.rewrite_graph(graph, rules, report, engine.overridable_initializers(model))
    optimized = engine.export(graph, model)
    report.seconds["optimize"] = time.perf_counter() - start
    report.after = ModelStats.of(optimized)

    if check:
        report.verification = verify(model, optimized, input_shapes=input_shapes,
                                     rtol=rtol, atol=atol, seed=seed)
        report.seconds["verify"] = report.verification.seconds
        if not report.verification.passed:
            error = VerificationFailed(
                f"verification failed: max abs error {report.verification.max_abs_error:.3g} "
                f"exceeds the tolerance (rtol {rtol:g}, atol {atol:g} × output scale); nothing written")
            error.report = report
            raise error
    return optimized, report
