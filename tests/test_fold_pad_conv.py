"""fold_pad_conv: a zero Pad before a Conv becomes conv padding; other pads stay."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import codes, optimize_and_check, reasons

from onnxrep.testing import GraphBuilder


def pad_conv(pads, opset=17, mode="constant", value=None, axes=None, kernel=3, conv_pads=None, rank=2):
    b = GraphBuilder(seed=30)
    x = b.input("x", ["N", 4] + [9] * rank)
    if opset < 11:
        attrs = {"pads": pads, "mode": mode} | ({"value": value} if value is not None else {})
        padded = b.node("Pad", [x], **attrs)
    else:
        inputs = [x, b.constant(np.array(pads, np.int64))]
        if value is not None or axes is not None:
            inputs.append(b.constant(np.array(value or 0.0, np.float32)) if value is not None else "")
        if axes is not None:
            inputs.append(b.constant(np.array(axes, np.int64)))
        padded = b.node("Pad", inputs, mode=mode)
    full = len(pads) == 2 * (rank + 2)
    b.channels[padded] = 4 + (pads[1] + pads[rank + 3] if full else 0)
    b.output(b.conv(padded, 6, (kernel,) * rank, pads=conv_pads or [0] * (2 * rank)))
    return b.model(opset=opset)


@pytest.mark.parametrize("kwargs", [
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1]},
    {"pads": [0, 0, 0, 2, 0, 0, 1, 0], "conv_pads": [1, 0, 0, 1]},  # asymmetric, added to the conv's
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "opset": 9},
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 0.0},
    {"pads": [1, 2, 1, 2], "axes": [2, 3], "opset": 18},
    {"pads": [0, 0, 1, 0, 0, 2], "rank": 1},
])
def test_folds(kwargs):
    _, report = optimize_and_check(pad_conv(**kwargs), {"Conv": 1})
    assert report.fired["fold_pad_conv"] == 1


@pytest.mark.parametrize("kwargs,reason", [
    ({"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"}, "mode"),
    ({"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 0.5}, "not 0"),
    ({"pads": [0, 1, 1, 1, 0, 0, 1, 1]}, "channel"),
    ({"pads": [0, 0, -1, 1, 0, 0, 1, 1]}, "negative"),
])
def test_refuses(kwargs, reason):
    _, report = optimize_and_check(pad_conv(**kwargs), {"Pad": 1, "Conv": 1})
    assert reason in reasons(report)


def test_refuses_pad_output_read_elsewhere():
    b = GraphBuilder(seed=31)
    x = b.input("x", [1, 4, 8, 8])
    padded = b.node("Pad", [x, b.constant(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    b.channels[padded] = 4
    b.output(b.conv(padded, 4, 3, pads=[0] * 4))
    b.output(b.op("Relu", padded))
    _, report = optimize_and_check(b.model(), {"Pad": 1, "Conv": 1, "Relu": 1})
    assert "also read by" in reasons(report) and "read-elsewhere" in codes(report)
