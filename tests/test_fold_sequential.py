"""fold_sequential: 1x1→kxk, kxk→1x1 and conv↔AveragePool chains; the border and cost cases refused."""

from __future__ import annotations

import pytest
from helpers import codes, optimize_and_check, reasons

from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["fold_sequential"])}
Z = [0, 0, 0, 0]


def chain(first: dict, second: dict, cin=8, size=10):
    b = GraphBuilder(seed=40)
    x = b.input("x", ["N", cin, size, size])
    y = x
    for step in (first, step2 := second):
        step = dict(step)
        if step.pop("op", "Conv") == "AveragePool":
            y = b.op("AveragePool", y, **step)
        else:
            y = b.conv(y, step.pop("cout", 8), **step)
    del step2
    b.output(y)
    return b.model()


@pytest.mark.parametrize("first,second", [
    ({"kernel": 1, "pads": Z}, {"kernel": 3, "pads": Z}),                         # DBB 1x1→kxk, bias ok
    ({"kernel": 1, "pads": Z, "bias": False}, {"kernel": 3}),                     # padded, no bias
    ({"kernel": 1, "pads": Z, "bias": False, "group": 2}, {"kernel": 3, "group": 2}),
    ({"kernel": 1, "pads": Z}, {"kernel": 3, "pads": Z, "stride": 2}),
    ({"kernel": 3}, {"kernel": 1, "pads": Z, "cout": 4}),                         # kxk → 1x1
    ({"kernel": 3, "stride": 2}, {"kernel": 1, "pads": Z, "stride": 2, "cout": 4}),
    ({"kernel": 1, "pads": [1, 0, 2, 1]}, {"kernel": 3, "pads": Z}),               # a padded 1x1 (DBB's bias pad)
    ({"kernel": 1, "pads": [1, 1, 1, 1], "bias": False}, {"kernel": 3, "pads": [0, 1, 1, 0]}),  # pads add up
])
def test_merges(first, second):
    cin = first.pop("cin", 8)
    _, report = optimize_and_check(chain(first, second, cin=cin), {"Conv": 1}, **ONLY)
    assert report.fired["fold_sequential"] == 1


@pytest.mark.parametrize("first,second,reason", [
    ({"kernel": 1, "pads": Z}, {"kernel": 3}, "not exact"),  # 1x1 bias meets the 3x3's zero padding
    ({"kernel": 1, "pads": Z, "cout": 4, "bias": False}, {"kernel": 3, "pads": Z, "cout": 8}, "would cost"),
    ({"kernel": 1, "pads": Z}, {"op": "AveragePool", "kernel_shape": [3, 3]}, "would cost"),  # alone, not in DBB
    ({"kernel": 3, "group": 8}, {"kernel": 1, "pads": Z, "cout": 16}, "would cost"),  # dw → pw
    ({"kernel": 1, "pads": Z, "bias": False},
     {"op": "AveragePool", "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "count_include_pad"),
    ({"kernel": 1, "pads": Z}, {"op": "AveragePool", "kernel_shape": [3, 3], "ceil_mode": 1, "strides": [2, 2]},
     "ceil_mode"),
    ({"kernel": 1, "pads": Z, "stride": 2}, {"kernel": 3, "pads": Z}, "strided 1x1"),
    ({"kernel": 1, "pads": [1, 1, 1, 1]}, {"kernel": 3}, "not exact"),  # both pad: zeros outside the bias border
])
def test_refuses(first, second, reason):
    second_op = second.get("op", "Conv")
    expected = {"Conv": 1, "AveragePool": 1} if second_op == "AveragePool" else {"Conv": 2}
    _, report = optimize_and_check(chain(first, second), expected, **ONLY)
    assert reason in reasons(report), report.format(verbose=True)


def test_refuses_intermediate_read_elsewhere():
    b = GraphBuilder(seed=41)
    x = b.input("x", [1, 8, 8, 8])
    t = b.conv(x, 8, 1, pads=Z)
    b.output(b.conv(t, 8, 3, pads=Z))
    b.output(b.op("Relu", t))
    _, report = optimize_and_check(b.model(), {"Conv": 2, "Relu": 1}, **ONLY)
    assert "also read by" in reasons(report) and "read-elsewhere" in codes(report)


def test_kxk_chains_are_no_candidates():
    _, report = optimize_and_check(chain({"kernel": 3}, {"kernel": 3}), {"Conv": 2}, **ONLY)
    assert not report.refusals


@pytest.mark.parametrize("inner", ["Erf", "Tanh"])
def test_the_mul_that_closes_a_gelu_is_left_for_the_runtime_to_fuse(inner):
    """TorchScript's GELU, x·(1+erf(x/√2))·0.5, ends in a Mul(0.5) that would fold into the next
    conv; onnxruntime and TensorRT then no longer see a GELU to fuse, and the model runs slower."""
    import numpy as np

    b = GraphBuilder(seed=41)
    x = b.conv(b.input("x", ["N", 8, 10, 10]), 8, 3, pads=[1, 1, 1, 1])
    scaled = b.op("Div", x, b.constant(np.array(1.4142135, np.float32)))
    one_plus = b.op("Add", b.op(inner, scaled), b.constant(np.array(1.0, np.float32)))
    gelu = b.op("Mul", b.op("Mul", x, one_plus), b.constant(np.array(0.5, np.float32)))
    b.output(b.conv(gelu, 8, 1))
    _, report = optimize_and_check(b.model(), {"Conv": 2, "Div": 1, inner: 1, "Add": 1, "Mul": 2})
    assert "closes a GELU" in reasons(report) and "fused-pattern" in codes(report)
