"""fold_whole_write: a ScatterND over every row of its data (dynamo's unoptimized slice assignment) is its updates."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import histogram, optimize_and_check

from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["fold_whole_write"])}
I64 = np.int64


def whole_write(start=0, delta=1, axis=0, rows_of="data", slice_end=2**63 - 1, shape="unsqueeze", cast=False,
                reduction=None, opset=17, batch="N"):
    """Z = ScatterND(D, rows, −D[rows]): the updates always fit the rows the indices name."""
    b = GraphBuilder(seed=80)
    x = b.input("x", [batch, 4, 5, 5])
    data = b.op("Relu", x)
    rows = b.node("Gather", [b.node("Shape", [data if rows_of == "data" else x]), b.constant(np.array(axis, I64))])
    if cast:
        rows = b.node("Cast", [rows], to=7)
    indices = b.node("Range", [b.constant(np.array(start, I64)), rows, b.constant(np.array(delta, I64))])
    if slice_end is not None:
        indices = b.node("Slice", [indices, b.constant(np.array([0], I64)), b.constant(np.array([slice_end], I64)),
                                   b.constant(np.array([0], I64)), b.constant(np.array([1], I64))])
    updates = b.op("Neg", b.node("Gather", [data, indices], axis=0))
    if shape == "unsqueeze":
        indices = (b.node("Unsqueeze", [indices], axes=[-1]) if opset < 13
                   else b.node("Unsqueeze", [indices, b.constant(np.array([-1], I64))]))
    else:
        indices = b.node("Reshape", [indices, b.constant(np.array([-1, 1], I64))])
    attrs = {"reduction": reduction} if reduction else {}
    b.output(b.node("ScatterND", [data, indices, updates], **attrs))
    return b.model(opset=opset)


@pytest.mark.parametrize("kwargs", [
    {},
    {"slice_end": None},
    {"shape": "reshape"},
    {"cast": True},
    {"opset": 11},
])
def test_becomes_its_updates(kwargs):
    optimized, report = optimize_and_check(whole_write(**kwargs), **ONLY)
    assert report.fired["fold_whole_write"] == 1
    assert "ScatterND" not in histogram(optimized)


@pytest.mark.parametrize("kwargs", [
    {"start": 1},                  # skips row 0
    {"delta": 2},                  # every other row
    {"axis": 1, "batch": 4},       # as many rows as channels: not the rows of D
    {"rows_of": "other"},          # the rows of another tensor (same size here, not provably)
    {"slice_end": 2},              # the first two rows only
    {"reduction": "add"},          # adds to D instead of replacing it
])
def test_refuses(kwargs):
    optimized, report = optimize_and_check(whole_write(**kwargs), **ONLY)
    assert not report.fired["fold_whole_write"] and not report.dropped  # refused, not rolled back
    assert histogram(optimized)["ScatterND"] == 1


def constant_rows(rows, batch=3):
    """Z = ScatterND(D, rows, −Gather(D, rows)) with constant row indices, as a static batch exports once folded."""
    b = GraphBuilder(seed=81)
    data = b.op("Relu", b.input("x", [batch, 4, 5, 5]))
    indices = b.constant(np.array(rows, I64).reshape(-1, 1))
    updates = b.op("Neg", b.node("Gather", [data, b.constant(np.array(rows, I64))], axis=0))
    b.output(b.node("ScatterND", [data, indices, updates]))
    return b.model()


def test_constant_rows_of_a_static_batch_become_its_updates():
    optimized, report = optimize_and_check(constant_rows([0, 1, 2]), **ONLY)
    assert report.fired["fold_whole_write"] == 1
    assert "ScatterND" not in histogram(optimized)


@pytest.mark.parametrize("rows, batch", [
    ([0, 1, 2], "N"),   # the batch may be anything at run time
    ([2, 1, 0], 3),     # every row, but permuted: Z is not the updates
    ([0, 1], 3),        # the first two rows only
])
def test_refuses_constant_rows(rows, batch):
    model = constant_rows(rows, batch)
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 4, 5, 5)).astype(np.float32)}
    optimized, report = optimize_and_check(model, feeds=feeds, input_shapes={"x": (3, 4, 5, 5)}, **ONLY)
    assert not report.fired["fold_whole_write"] and not report.dropped
    assert histogram(optimized)["ScatterND"] == 1
