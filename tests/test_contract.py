"""The rule contract's safety nets: a rule that raises costs that match only; a merge that makes the
model unloadable is found by its own local check and rolled back in one round; any tensor name works
(the ledger is values, nothing parses a name)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import altered_rule, histogram

import onnxrep
from onnxrep import api
from onnxrep.rewrite import engine
from onnxrep.rewrite.contract import Rule
from onnxrep.rules import RULES_BY_NAME, merge_parallel
from onnxrep.testing import GraphBuilder

SAMPLE = Path(__file__).resolve().parent.parent / "models" / "repvgg.train.onnx"
FOLD = RULES_BY_NAME["fold_conv_affine"]


def _no_bisection(*args, **kwargs):
    raise AssertionError("bisection: the local checks should have named the culprit")


def _merge_targets() -> list[str]:
    _, report = onnxrep.optimize(SAMPLE, verify=False)
    return [r.anchor for r in report.applied if r.rule == "merge_parallel"]


@pytest.mark.parametrize("where", ["match", "build"])
def test_a_rule_that_raises_costs_that_match_only(monkeypatch, where):
    monkeypatch.setattr(engine, "RULE_ERRORS", "refuse")  # the suite's default is to raise
    target = _merge_targets()[3]

    def match(ctx, node):
        item = merge_parallel.match(ctx, node)
        if where == "match" and item is not None and item.output == target:
            raise ZeroDivisionError("a bug in match")
        return item

    def build(builder, item):
        if where == "build" and item.output == target:
            raise ZeroDivisionError("a bug in build")
        return merge_parallel.build(builder, item)

    buggy = Rule("buggy", "merge_parallel with a bug", merge_parallel.RULE.anchors, match, build)
    optimized, report = onnxrep.optimize(SAMPLE, rules=(FOLD, buggy))
    assert report.verification.passed and report.dropped == []
    assert report.fired["buggy"] == 7 and report.fired["fold_conv_affine"] == 16  # every other rewrite stays
    errors = [f for f in report.refusals if f.code == "rule-error"]
    assert len(errors) == 1 and f"a bug in {where}" in errors[0].reason, report.format()
    assert len(report.rule_errors) == 1 and "ZeroDivisionError" in report.rule_errors[0]
    assert "rule errors: 1" in report.format()
    assert histogram(optimized)["Add"] == 2  # the one join left: two Adds of its three branches


def test_in_the_test_suite_a_rule_that_raises_fails():
    def match(ctx, node):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        onnxrep.optimize(SAMPLE, rules=(Rule("buggy", "raises", ("Add",), match, merge_parallel.build),))


def test_a_merge_that_makes_the_model_unloadable_is_rolled_back_in_one_round(monkeypatch):
    """A merged conv whose group does not divide its channels: onnxruntime refuses the whole optimized
    model, so no output can be compared. The changed nodes are checked on their own: the broken one
    does not load there either and is named; the others pass; one round rolls it back."""
    target = _merge_targets()[2]
    broken = altered_rule("broken", lambda spec, _: replace(spec, group=spec.group * 5), only=target)
    monkeypatch.setattr(api, "_first_failing", _no_bisection)
    steps = []
    optimized, report = onnxrep.optimize(SAMPLE, rules=(FOLD, broken), progress=steps.append)
    assert report.verification.passed
    assert [(d.rule, d.rewrite.anchor) for d in report.dropped] == [("broken", target)], report.format()
    assert "local check of" in report.dropped[0].reason
    assert [s for s in steps if s.startswith("roll back")] == [f"roll back broken at {report.dropped[0].where}"]
    assert report.fired["broken"] == 7


def _block(b: GraphBuilder, x: str, prefix: str) -> str:
    """A RepVGG block with random BatchNorm statistics, its node (and so tensor) names under ``prefix``."""
    three = b.bn(b.conv(x, 4, 3, pads=[1, 1, 1, 1], bias=False, name=f"{prefix}/conv 3x3#1"), name=f"{prefix}:bn#1")
    one = b.bn(b.conv(x, 4, 1, bias=False, name=f"{prefix}/conv 1x1#2"), name=f"{prefix}:bn#2")
    skip = b.bn(x, name=f"{prefix}:bn#3")
    out = b.node("Relu", [b.node("Sum", [three, one, skip], name=f"{prefix}/sum #1")], name=f"{prefix}/relu:0")
    b.channels[out] = 4
    return out


def test_any_tensor_name_works_and_a_broken_rewrite_is_found_by_its_local_check(monkeypatch):
    """Names with '#', '/', ':' and spaces (the old rewrite keys were 'tensor#N' strings, parsed back):
    the broken merge of the second block is rolled back by its local check, with no bisection."""
    b = GraphBuilder(7)
    x = b.input("x#0: in/put", [1, 4, 9, 9])
    b.output(_block(b, _block(b, x, "block #1"), "block #2"))
    model = b.model()
    target = "block #2/sum #1_out"
    broken = altered_rule("broken", lambda spec, _: replace(spec, weight=np.roll(spec.weight, 1, axis=-1)),
                          only=target)
    monkeypatch.setattr(api, "_first_failing", _no_bisection)
    optimized, report = onnxrep.optimize(model, rules=(FOLD, broken))
    assert report.verification.passed
    assert [(d.rule, d.rewrite.anchor, d.rewrite.ordinal) for d in report.dropped] == [("broken", target, 1)]
    assert [r.anchor for r in report.applied if r.rule == "broken"] == ["block #1/sum #1_out"]
    assert histogram(optimized) == {"Conv": 3, "BatchNormalization": 1, "Sum": 1, "Relu": 2}  # block 2 as folded
