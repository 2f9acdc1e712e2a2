"""Shared weights (TorchScript deduplicates equal initializers): folded into private copies when cheap.

Rewrites never edit a weight, so folding a shared one is exact; the original
stays for its other readers, and the report counts the bytes that adds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import optimize_and_check, reasons
from onnx import numpy_helper

from onnxrep.api import select_rules
from onnxrep.ir.graph import SHARED_COPY_FRACTION
from onnxrep.testing import GraphBuilder

C, K = 16, 10


def dedup_heads(extra_reader: bool = False):
    """RepViT's classifier as TorchScript exports it untrained: BN1d → Linear twice, averaged, the two
    Linear biases one initializer (the second through an Identity, as the exporter writes it)."""
    b = GraphBuilder(seed=14)
    x = b.input("x", [2, C])
    bias = b.constant((b.rng.standard_normal(K) * 0.1).astype(np.float32), "head.l.bias")
    alias = b.node("Identity", [bias], name="Identity_82")
    heads = []
    for i, reads in enumerate((bias, alias)):
        w = (b.rng.standard_normal((K, C)) / 4).astype(np.float32)
        heads.append(b.node("Gemm", [b.bn(x), b.constant(w, f"head{i}.weight"), reads], name=f"gemm{i}", transB=1))
    y = b.node("Div", [b.node("Add", heads), b.constant(np.array(2.0, np.float32))])
    b.output(y, [2, K])
    if extra_reader:  # something that is not rewritten keeps reading the bias
        b.output(b.node("Mul", [bias, bias]), [K])
    return b.model()


@pytest.mark.parametrize("skip", [(), ("fold_constants",)], ids=["all-rules", "identity-kept"])
def test_dedup_heads_fold_and_merge(skip):
    """With fold_constants the Identity goes first; without it, sharing() follows the Identity."""
    optimized, report = optimize_and_check(dedup_heads(), {"Gemm": 1}, rules=select_rules(skip=list(skip)))
    assert report.fired["fold_sequential"] == 2 and report.fired["merge_parallel"] == 1, report.format(True)
    assert report.shared_copies == {} and report.shared_copy_bytes == 0  # every reader was rewritten
    assert "head.l.bias" not in {i.name for i in optimized.graph.initializer}


def test_copy_that_stays_is_counted():
    optimized, report = optimize_and_check(dedup_heads(extra_reader=True), {"Gemm": 1, "Mul": 1})
    assert report.shared_copies == {"head.l.bias": K * 4}
    assert f"+{K * 4:,} bytes" in report.format()
    assert json.loads(json.dumps(report.to_dict()))["shared_copies"] == {"bytes": 40, "weights": {"head.l.bias": 40}}
    kept = {i.name: numpy_helper.to_array(i) for i in optimized.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in dedup_heads(True).graph.initializer}
    np.testing.assert_array_equal(kept["head.l.bias"], original["head.l.bias"])  # never edited


def shared_kernel(big_unrelated: int = 0):
    """Conv(shared kernel) → BN, and an unrelated Conv reading the same kernel; optionally a big
    unrelated conv so that the shared kernel is a small part of the model."""
    b = GraphBuilder(seed=15)
    x = b.input("x", [1, 4, 8, 8])
    w, _ = b.conv_weights(4, 4, (3, 3), bias=False)
    shared = b.constant(w, "shared_w")
    y1 = b.node("Conv", [x, shared], pads=[1, 1, 1, 1])
    b.channels[y1] = 4
    b.output(b.bn(y1))
    b.output(b.node("Conv", [x, shared], pads=[1, 1, 1, 1], name="unrelated"))
    if big_unrelated:
        b.output(b.conv(x, big_unrelated, 3))
    return b.model()


def test_big_shared_kernel_is_left_with_its_reason():
    optimized, report = optimize_and_check(shared_kernel(), {"Conv": 2, "BatchNormalization": 1})
    assert "weight 'shared_w' is shared with unrelated (576 bytes, too big to copy)" in reasons(report)
    assert not report.shared_copies
    assert any("big weight read by several nodes" in h for h in report.hints())


def test_kernel_under_the_fraction_is_copied():
    channels = int(576 / SHARED_COPY_FRACTION / (4 * 9 * 4)) + 1  # makes the 576-byte kernel < 1/1000
    optimized, report = optimize_and_check(shared_kernel(channels), {"Conv": 3})
    assert report.shared_copies == {"shared_w": 576}, report.format(verbose=True)
    assert sum("shared_w" in n.input for n in optimized.graph.node) == 1  # the unrelated conv's


def test_identity_of_a_weight_is_dropped_without_a_copy():
    """TorchScript's second name for a deduplicated weight: the reader reads the weight itself."""
    b = GraphBuilder(seed=17)
    x = b.input("x", [1, 4, 8, 8])
    w, _ = b.conv_weights(4, 4, (3, 3), bias=False)
    shared = b.constant(w, "shared_w")
    alias = b.node("Identity", [shared])
    b.output(b.node("Conv", [x, shared], pads=[1, 1, 1, 1]))
    b.output(b.node("Relu", [b.node("Conv", [x, alias], pads=[1, 1, 1, 1])]))
    optimized, report = optimize_and_check(b.model(), {"Conv": 2, "Relu": 1})
    assert report.fired["fold_constants"] == 1 and report.shared_copies == {}
    assert [n.input[1] for n in optimized.graph.node if n.op_type == "Conv"] == ["shared_w", "shared_w"]
