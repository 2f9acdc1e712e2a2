"""fold_bias_pad with dynamic height and width: DBB's BN-and-pad as dynamo exports it with
dynamic_shapes on H and W. Each border write picks rows Slice(Range(0, Shape(P)[axis], 1), s, e)
of the padded tensor P: recognised for every size, and near misses are refused."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import histogram, optimize_and_check, random_feeds, reasons

from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

CIN, C = 4, 6
ONLY = {"rules": select_rules(only=["fold_constants", "fold_bias_pad"])}
INT64_MAX = 2**63 - 1


def _i64(*values) -> np.ndarray:
    return np.array(values, np.int64)


def dynamic_bias_pad(begin=1, end=1, rows=None, measure=None, sides=("top", "bottom", "left", "right"),
                     consumer="conv", seed=71):
    """x (N, CIN, H, W) → Conv 1x1 (bias b) → Pad(begin, end) → per side: Transpose, ScatterND of the
    rows Unsqueeze(Slice(Range(0, Shape(P)[axis], 1), s, e)) with Expand(b), Transpose back.

    ``rows``: side → (s, e) instead of the border's; ``measure``: side → (tensor, axis) whose dim the
    Range counts ("x" the unpadded input, or "P") instead of P's written axis."""
    rows, measure = rows or {}, measure or {}
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", CIN, "H", "W"])
    y = b.conv(x, C, 1, pads=[0] * 4)
    bias = np.frombuffer(b.initializers[-1].raw_data, np.float32)
    data = b.node("Pad", [y, b.constant(_i64(0, 0, begin, begin, 0, 0, end, end))], mode="constant")
    value = b.constant(bias.reshape(-1, 1, 1))
    for side in sides:
        axis = 2 if side in ("top", "bottom") else 3
        first = side in ("top", "left")
        start, stop = rows.get(side, (0, begin) if first else (-end, INT64_MAX))
        tensor, counted = measure.get(side, ("P", axis))
        limit = b.node("Gather", [b.node("Shape", [x if tensor == "x" else data]), b.constant(np.array(counted))])
        counting = b.node("Range", [b.constant(np.array(0)), limit, b.constant(np.array(1))])
        picked = b.node("Slice", [counting, b.constant(_i64(start)), b.constant(_i64(stop)), b.constant(_i64(0)),
                                  b.constant(_i64(1))])
        indices = b.node("Unsqueeze", [picked, b.constant(_i64(-1))])
        count = b.node("Shape", [indices], start=0, end=1)
        other = b.node("Shape", [data], start=5 - axis, end=6 - axis)   # the other spatial dim
        extents = [count, other] if axis == 2 else [other, count]
        shape = b.node("Concat", [b.node("Shape", [x], start=0, end=1), b.constant(_i64(C)), *extents], axis=0)
        perm = [2, 1, 0, 3] if axis == 2 else [3, 1, 2, 0]
        updates = b.node("Transpose", [b.node("Expand", [value, shape])], perm=perm)
        written = b.node("ScatterND", [b.node("Transpose", [data], perm=perm), indices, updates])
        data = b.node("Transpose", [written], perm=perm)
    b.channels[data] = C
    b.output(b.conv(data, 5, 3, pads=[0] * 4) if consumer == "conv" else data)
    return b.model()


def odd_feeds(model, h=9, w=14):
    x = random_feeds(model, seed=3)["x"]
    return {"x": np.random.default_rng(4).standard_normal((3, CIN, h, w)).astype(x.dtype)}


@pytest.mark.parametrize("begin,end", [(1, 1), (2, 2), (1, 2)])
def test_folds_for_every_size(begin, end):
    model = dynamic_bias_pad(begin, end)
    for feeds in (None, odd_feeds(model), odd_feeds(model, 1, 1)):
        _, report = optimize_and_check(model, {"Conv": 1}, feeds=feeds)
        assert report.fired["fold_bias_pad"] == 1 and report.fired["fold_sequential"] == 1


def test_alone_becomes_a_padded_conv():
    optimized, report = optimize_and_check(dynamic_bias_pad(1, 2, consumer=None), {"Conv": 1}, **ONLY,
                                           feeds=odd_feeds(dynamic_bias_pad(1, 2)))
    pads = next(a.ints for a in optimized.graph.node[0].attribute if a.name == "pads")
    assert list(pads) == [1, 1, 2, 2]


@pytest.mark.parametrize("kwargs,reason", [
    ({"rows": {"bottom": (-2, INT64_MAX)}}, "not its border"),            # two rows for a pad of one
    ({"rows": {"top": (1, 2)}}, "not its border"),                        # the first row inside
    ({"rows": {"bottom": (-1, 1000)}}, "not its border"),                  # the last row only while H+2 ≤ 1000
    ({"rows": {"top": (0, INT64_MAX)}}, "not its border"),                # every row
    ({"measure": {"top": ("P", 3)}}, "count the rows of 3"),              # W's rows written along H
    ({"measure": {"left": ("x", 3)}}, "another tensor"),                  # the unpadded width
    ({"sides": ("top", "bottom", "left")}, "cover exactly"),
    ({"sides": ("top", "top", "bottom", "left", "right")}, "cover exactly"),
])
def test_near_misses_are_refused(kwargs, reason):
    model = dynamic_bias_pad(**kwargs)
    optimized, report = optimize_and_check(model, **ONLY, feeds=odd_feeds(model))
    assert reason in reasons(report) and not report.fired["fold_bias_pad"], reasons(report)
    assert histogram(optimized)["Pad"] == 1
