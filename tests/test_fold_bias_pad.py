"""fold_bias_pad: DBB's BN-and-pad (zero Pad + border writes of the conv's bias), as both exporters spell it.

"index" writes are TorchScript's: ScatterND with full (n, c, h, w) index tuples
and constant updates, on a static batch. "rows" writes are dynamo's: a
Transpose bringing the padded axis first, ScatterND of whole rows with an
Expand of the per-channel value to a run-time shape (dynamic batch), and the
Transpose back.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import histogram, optimize_and_check, reasons

from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

CIN, C, SIZE = 4, 6, 7
ONLY = {"rules": select_rules(only=["fold_constants", "fold_bias_pad"])}


def _sides(p: int, size: int) -> dict[str, tuple[int, list[int]]]:
    """Per side: the padded axis (2 or 3) and the rows it writes."""
    last = list(range(size - p, size))
    return {"top": (2, list(range(p))), "bottom": (2, last), "left": (3, list(range(p))), "right": (3, last)}


def _index_write(b: GraphBuilder, data: str, axis: int, rows: list[int], value: np.ndarray, size: int) -> str:
    """TorchScript: every written element's (n, c, h, w), updates a constant (1, C, rows, size)."""
    grid = [np.arange(1), np.arange(len(value)), np.arange(size), np.arange(size)]
    grid[axis] = np.array(rows)
    indices = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1).astype(np.int64)
    updates = np.broadcast_to(value.reshape(1, -1, 1, 1), indices.shape[:-1]).astype(np.float32)
    return b.node("ScatterND", [data, b.constant(indices), b.constant(np.ascontiguousarray(updates))])


def _rows_write(b: GraphBuilder, data: str, axis: int, rows: list[int], value: np.ndarray, size: int,
                x: str) -> str:
    """dynamo: Transpose(axis ↔ 0), ScatterND of rows with Expand(value, [N, C, rows, size]), Transpose back."""
    perm = [axis, 1, 0, 3] if axis == 2 else [3, 1, 2, 0]
    batch = b.node("Shape", [x], start=0, end=1)
    shape = [batch, b.constant(np.array([len(value)], np.int64))]
    extents = [len(rows), size] if axis == 2 else [size, len(rows)]
    shape += [b.constant(np.array([e], np.int64)) for e in extents]
    expanded = b.node("Expand", [b.constant(value.reshape(-1, 1, 1).astype(np.float32)),
                                 b.node("Concat", shape, axis=0)])
    written = b.node("ScatterND", [b.node("Transpose", [data], perm=perm),
                                   b.constant(np.array(rows, np.int64).reshape(-1, 1)),
                                   b.node("Transpose", [expanded], perm=perm)])
    return b.node("Identity", [b.node("Transpose", [written], perm=perm)])


def bias_pad(style="index", p=1, kernel=1, stride=1, offset=0.0, sides=("top", "bottom", "left", "right"),
             interior=False, consumer="conv", read_conv=False, read_pad=False, spread=False, seed=70):
    """x → Conv(kernel, bias b) → Pad(p) → border writes of b + offset → consumer."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N" if style == "rows" else 1, CIN, SIZE, SIZE])
    y = b.conv(x, C, kernel, stride=stride, pads=[0] * 4)
    conv = b.nodes[-1]
    bias = np.asarray(b.initializers[-1].float_data or np.frombuffer(b.initializers[-1].raw_data, np.float32))
    value = bias.astype(np.float64) + offset
    size = (SIZE - kernel) // stride + 1 + 2 * p
    data = b.node("Pad", [y, b.constant(np.array([0, 0, p, p, 0, 0, p, p], np.int64))], mode="constant")
    padded = data
    writes = [(*_sides(p, size)[s],) for s in sides] + ([(2, [size // 2])] if interior else [])
    for axis, rows in writes:
        if spread:  # a different value per position: not one value per channel
            value = value + np.linspace(0, 1, len(value))
        data = (_index_write(b, data, axis, rows, value, size) if style == "index"
                else _rows_write(b, data, axis, rows, value, size, x))
    b.channels[data] = C
    out = b.conv(data, 5, 3, pads=[0] * 4) if consumer == "conv" else (
        b.op("AveragePool", data, kernel_shape=[3, 3], count_include_pad=1) if consumer == "avgpool" else data)
    b.output(out)
    if read_conv:
        b.output(conv.output[0])
    if read_pad:
        b.output(padded)
    return b.model()


@pytest.mark.parametrize("style", ["index", "rows"])
@pytest.mark.parametrize("p", [1, 2])
def test_merges_into_one_conv(style, p):
    _, report = optimize_and_check(bias_pad(style, p=p), {"Conv": 1})
    assert report.fired["fold_bias_pad"] == 1 and report.fired["fold_sequential"] == 1


@pytest.mark.parametrize("style", ["index", "rows"])
def test_alone_becomes_a_padded_conv(style):
    optimized, report = optimize_and_check(bias_pad(style, consumer=None), {"Conv": 1}, **ONLY)
    assert report.fired["fold_bias_pad"] == 1
    pads = next(a.ints for a in optimized.graph.node[0].attribute if a.name == "pads")
    assert list(pads) == [1, 1, 1, 1]


def test_avgpool_after_it():
    _, report = optimize_and_check(bias_pad(consumer="avgpool"), {"Conv": 1, "AveragePool": 1}, **ONLY)
    assert report.fired["fold_bias_pad"] == 1


def test_rounding_gap_between_value_and_bias_is_accepted():
    _, report = optimize_and_check(bias_pad("rows", offset=1e-7), {"Conv": 1})
    assert report.fired["fold_bias_pad"] == 1


@pytest.mark.parametrize("style", ["index", "rows"])
@pytest.mark.parametrize("kwargs,reason", [
    ({"offset": 0.05}, "not the conv's bias"),
    ({"sides": ("top", "bottom", "left")}, "cover exactly"),
    ({"interior": True}, "cover exactly"),
    ({"kernel": 3}, "1x1 conv"),
    ({"stride": 2}, "1x1 conv"),
    ({"read_conv": True}, "also read"),
    ({"spread": True}, "different values"),
])
def test_refuses(style, kwargs, reason):
    model = bias_pad(style, **kwargs)
    ops = {"Conv": 2, "Pad": 1, "ScatterND": len(kwargs.get("sides", "1234")) + int(kwargs.get("interior", False))}
    optimized, report = optimize_and_check(model, **ONLY)
    assert reason in reasons(report) and not report.dropped, reasons(report)
    assert {k: histogram(optimized).get(k) for k in ops} == ops


def test_pad_read_elsewhere_is_left_alone():
    _, report = optimize_and_check(bias_pad(read_pad=True), **ONLY)
    assert not report.fired["fold_bias_pad"] and not report.dropped
