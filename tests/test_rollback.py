"""Verified output or nothing — but as much as can be proven: rewrites that break verification roll back."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import broken_rule, histogram, scaled_rule

import onnxrep
from onnxrep import api
from onnxrep.errors import VerificationFailed
from onnxrep.rules import RULES_BY_NAME

SAMPLE = Path(__file__).resolve().parent.parent / "models" / "repvgg.train.onnx"
FOLD = RULES_BY_NAME["fold_conv_affine"]


def merge_outputs() -> list[str]:
    _, report = onnxrep.optimize(SAMPLE, verify=False)
    return [r.anchor for r in report.applied if r.rule == "merge_parallel"]


def test_only_the_broken_rewrite_is_dropped():
    target = merge_outputs()[3]
    optimized, report = onnxrep.optimize(SAMPLE, rules=(FOLD, broken_rule(only=target)))
    assert report.verification.passed
    assert [(f.rule, f.rewrite.anchor) for f in report.dropped] == [("broken", target)]
    assert "rolled back" in report.dropped[0].reason
    assert report.fired["broken"] == 7
    # the block around the dropped merge keeps its conv-BN folds and its Adds
    assert histogram(optimized)["Add"] == 2 and histogram(optimized)["Conv"] == 7 + 2


def test_every_broken_rewrite_is_dropped_and_the_rest_kept():
    optimized, report = onnxrep.optimize(SAMPLE, rules=(FOLD, broken_rule()))
    assert report.verification.passed and len(report.dropped) == 8 and not report.fired["broken"]
    assert report.fired["fold_conv_affine"] == 16
    assert "rolled back (8)" in report.format()


def test_gives_up_after_max_rollback_rounds(monkeypatch):
    monkeypatch.setattr(api, "MAX_ROLLBACK_ROUNDS", 0)
    with pytest.raises(VerificationFailed) as error:
        onnxrep.optimize(SAMPLE, rules=(FOLD, broken_rule()))
    assert error.value.report.dropped == [] and not error.value.report.verification.passed
    assert "local check of 8 rewritten tensor(s) failed" in str(error.value)


def test_nothing_dropped_when_all_is_well():
    model = onnx.load(SAMPLE)
    _, report = onnxrep.optimize(model)
    assert report.dropped == [] and report.verification.passed


def test_intermediate_tensors_catch_what_an_argmax_hides():
    """Output = ArgMax: a wrong merge that keeps the argmax still fails on the intermediates."""
    from onnx import TensorProto, helper

    model = onnx.load(SAMPLE)
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [logits], ["label"], axis=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1]))
    _, report = onnxrep.optimize(model, rules=(FOLD, scaled_rule(1.001)))
    assert len(report.verification.local) > 0 and len(report.dropped) == 8


def test_two_merges_at_one_concat_roll_back_apart():
    """Two merge_concat runs on one Concat write one tensor: rolling back the (broken) second keeps
    the first. Each applied rewrite has its own key: the second at a tensor has ordinal 2."""
    from onnxrep.rewrite.contract import Rule
    from onnxrep.rules import merge_concat
    from onnxrep.testing import GraphBuilder

    b = GraphBuilder(63)
    x, y = b.input("x", [1, 4, 7, 7]), b.input("y", [1, 4, 7, 7])
    b.output(b.node("Concat", [b.conv(x, 3, 3), b.conv(x, 2, 3), b.conv(y, 3, 3), b.conv(y, 2, 3)], axis=1))

    def match(ctx, node):
        item = merge_concat.match(ctx, node)
        if item is not None and item.branches[0].source.name == "y":
            item = merge_concat.ConcatRun(item.concat, item.start, item.branches, item.merged.negated())
        return item

    broken = Rule("broken", "negates the second stacked conv", ("Concat",), match, merge_concat.build)
    optimized, report = onnxrep.optimize(b.model(), rules=(broken,))
    concat = optimized.graph.output[0].name
    assert report.verification.passed
    assert [(f.rule, f.rewrite.anchor, f.rewrite.ordinal) for f in report.dropped] == [("broken", concat, 2)]
    assert [r.key for r in report.applied] == [("broken", concat, 1)]
    assert histogram(optimized) == {"Conv": 3, "Concat": 1}
