"""Constants folded at the graph's own opset: attribute forms of opset 11 (Unsqueeze axes, Split
split, ReduceSum axes) mean what they meant then, not what the newest opset says."""

from __future__ import annotations

import numpy as np
from helpers import histogram, optimize_and_check

from onnxrep.testing import GraphBuilder


def test_opset11_attribute_forms_fold():
    b = GraphBuilder(seed=11)
    x = b.input("x", [1, 4, 6, 6])
    scale = b.node("Unsqueeze", [b.constant(np.arange(1, 5, dtype=np.float32))], axes=[0, 2, 3])   # (1,4,1,1)
    low, high = b.node("Split", [b.constant(np.arange(8, dtype=np.int64))], outputs=2, axis=0, split=[3, 5])
    total = b.node("ReduceSum", [high], axes=[0], keepdims=0)                                      # 3+...+7 = 25
    shift = b.node("Cast", [b.node("Add", [total, b.node("ReduceSum", [low], axes=[0], keepdims=0)])], to=1)
    b.output(b.node("Add", [b.node("Mul", [x, scale]), shift]))
    model = b.model(opset=11)
    optimized, report = optimize_and_check(model)
    assert report.fired["fold_constants"] >= 5, report.format(verbose=True)
    assert not {"Unsqueeze", "Split", "ReduceSum", "Cast"} & set(histogram(optimized))
