"""Property-based tests: random re-parameterizable blocks and near-misses (hypothesis).

Derandomized with a fixed example count for CI; set ONNXREP_FUZZ_EXAMPLES
(e.g. 5000) for a long soak run.
"""

from __future__ import annotations

import os

import numpy as np
from helpers import histogram, random_feeds, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxrep
from onnxrep.testing import GraphBuilder

EXAMPLES = int(os.environ.get("ONNXREP_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def blocks(draw, must_merge: bool):
    """A join of 2–4 branches of one tensor; with must_merge, geometry that always merges."""
    channels = draw(st.sampled_from([2, 4, 6]))
    stride = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([g for g in (1, 2, channels) if channels % g == 0]))
    kinds = ["conv", "conv_bn"] + (["bn", "identity", "scale"] if stride == 1 else [])
    branches = []
    for _ in range(draw(st.integers(2, 4))):
        kind = draw(st.sampled_from(kinds))
        kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
        dilation = 1 if must_merge else draw(st.sampled_from([1, 2]))
        # 'same'-style pads, sometimes shifted by one on both ends of an axis (still equal size)
        shift = 0 if must_merge else draw(st.sampled_from([0, 0, 1]))
        ph, pw = dilation * (kh - 1) // 2, dilation * (kw - 1) // 2
        pads = [max(ph - shift, 0), pw, ph + (shift if ph >= shift else 0), pw]
        branches.append(dict(kind=kind, kernel=(kh, kw), dilation=dilation, pads=pads,
                             bias=draw(st.booleans()), sign=draw(st.sampled_from([1, 1, -1]))))
    if all(b["kind"] in ("bn", "identity", "scale") for b in branches) or must_merge:
        branches[0]["kind"] = draw(st.sampled_from(["conv", "conv_bn"]))
    if must_merge:  # one conv whose kernel contains every other: the merge never costs more
        kh = max(b["kernel"][0] for b in branches if b["kind"].startswith("conv"))
        kw = max(b["kernel"][1] for b in branches if b["kind"].startswith("conv"))
        branches[0].update(kernel=(kh, kw), pads=[(kh - 1) // 2, (kw - 1) // 2] * 2)
    branches[0]["sign"] = 1
    join = draw(st.sampled_from(["Add", "Sum"]))
    size = draw(st.integers(6, 10))
    return dict(channels=channels, stride=stride, group=group, branches=branches, join=join, size=size,
                seed=draw(st.integers(0, 2**16)))


def build(block, read_elsewhere: int | None = None):
    b = GraphBuilder(block["seed"])
    c = block["channels"]
    x = b.input("x", ["N", c, block["size"], block["size"]])
    outs = []
    for i, spec in enumerate(block["branches"]):
        kind = spec["kind"]
        if kind == "identity":
            y = x
        elif kind == "bn":
            y = b.bn(x)
        elif kind == "scale":
            y = b.node("Mul", [x, b.constant(b.rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32))])
        else:
            y = b.conv(x, c, spec["kernel"], stride=block["stride"], pads=spec["pads"],
                       dilation=spec["dilation"], group=block["group"], bias=spec["bias"])
            if kind == "conv_bn":
                y = b.bn(y)
        if i == read_elsewhere:
            b.output(y)
        outs.append((y, spec["sign"]))
    if block["join"] == "Sum" and all(s > 0 for _, s in outs):
        joined = b.node("Sum", [y for y, _ in outs])
    else:
        joined = outs[0][0]
        for y, sign in outs[1:]:
            joined = b.node("Add" if sign > 0 else "Sub", [joined, y])
    b.output(b.node("Relu", [joined]))
    return b.model()


def check_equivalent(model):
    optimized, report = onnxrep.optimize(model)
    assert report.verification.passed
    assert len(optimized.graph.node) <= len(model.graph.node)
    feeds = random_feeds(model, seed=11)
    for want, got in zip(run(model, feeds), run(optimized, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(float(np.abs(want).max()), 1e-6))
    again, second = onnxrep.optimize(optimized, verify=False)
    assert not second.fired, second.fired  # idempotent
    return optimized, report


@SETTINGS
@given(blocks(must_merge=True))
def test_mergeable_blocks_become_one_conv(block):
    optimized, report = check_equivalent(build(block))
    assert histogram(optimized) == {"Conv": 1, "Relu": 1}, report.format(verbose=True)


@SETTINGS
@given(blocks(must_merge=False))
def test_any_block_stays_equivalent(block):
    check_equivalent(build(block))


@SETTINGS
@given(blocks(must_merge=True), st.integers(0, 3))
def test_a_branch_read_elsewhere_is_kept(block, which):
    which %= len(block["branches"])
    if block["branches"][which]["kind"] == "identity":
        return  # the input itself is no branch to keep
    model = build(block, read_elsewhere=which)
    kept = model.graph.output[0].name
    optimized, report = check_equivalent(model)
    assert kept in {o for n in optimized.graph.node for o in n.output}
