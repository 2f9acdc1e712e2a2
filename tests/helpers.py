"""Shared test helpers: run models in onnxruntime (its optimizations off) and compare."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

import onnxrep


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def random_feeds(model: onnx.ModelProto, seed: int = 1, dims: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else (2 if i == 0 else dims)
                 for i, d in enumerate(value.type.tensor_type.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def optimize_and_check(model: onnx.ModelProto, expected_ops: dict[str, int] | None = None,
                       rtol: float = 1e-4, atol: float = 1e-5, feeds=None, **kwargs):
    """Optimize, then check: full onnx checker, exact op histogram, outputs equal on fresh inputs.

    The inputs differ from the ones the built-in verification used (other seed,
    batch 2), so this is an independent check of the result.
    """
    optimized, report = onnxrep.optimize(model, **kwargs)
    try:  # the optimized model meets the standard the original meets
        onnx.checker.check_model(model, full_check=True)
        full = True
    except onnx.checker.ValidationError:
        full = False
    onnx.checker.check_model(optimized, full_check=full)
    if expected_ops is not None:
        assert histogram(optimized) == expected_ops, report.format(verbose=True)
    feeds = feeds or random_feeds(model)
    for want, got in zip(run(model, feeds), run(optimized, feeds), strict=True):
        scale = max(float(np.abs(want).max()), 1e-12)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)
    return optimized, report


def reasons(report) -> str:
    return " | ".join(f.reason for f in report.refusals)


def altered_rule(name: str, alter, only: str | None = None):
    """merge_parallel made wrong on purpose: ``alter(spec, branches)`` replaces each merged spec
    (all of them, or the one writing ``only``)."""
    from onnxrep.rewrite.contract import Rule
    from onnxrep.rules import merge_parallel

    def match(ctx, node):
        item = merge_parallel.match(ctx, node)
        if item is not None and only in (None, item.output):
            merges = tuple((alter(spec, branches), branches) for spec, branches in item.merges)
            item = merge_parallel.Join(item.root, item.joins, merges, item.rest)
        return item
    return Rule(name, f"merge_parallel, {name}", merge_parallel.RULE.anchors, match, merge_parallel.build)


def scaled_rule(factor: float):
    """merge_parallel made subtly wrong: merged convs scaled by ``factor`` (argmax-preserving)."""
    from dataclasses import replace

    return altered_rule("scaled", lambda spec, _: replace(spec, weight=spec.weight * factor,
                                                           bias=spec.bias * factor))


def broken_rule(only: str | None = None):
    """merge_parallel made wrong on purpose: it negates merged convs (all, or the one writing ``only``)."""
    return altered_rule("broken", lambda spec, _: spec.negated(), only)


def codes(report) -> set[str]:
    """The stable codes of the refusals (onnxrep.refusal.CODES)."""
    return {f.code for f in report.refusals}
