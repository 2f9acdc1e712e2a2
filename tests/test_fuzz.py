"""Fuzzing (hypothesis): random re-parameterizable blocks, and near-misses that must not merge.

Every example is one block: an input X of rank 3, 4 or 5 (1-D, 2-D, 3-D convs; batch fixed or
dynamic; for mergeable 1-D/2-D blocks the spatial dims may be dynamic too), 2–4 branches of X
joined by a random tree of Add / Sub / Sum (flat or nested; sometimes a Concat of such sums),
optionally followed by Relu or by a per-channel Mul / BatchNormalization. X is the graph
input, or computed by a Relu or by a Conv with no activation. A branch is

  * a Conv: kernel 1..7 per axis (even and non-square too), strides 1–2, dilations 1–3, groups
    among the divisors of the channel counts (depthwise too), pads asymmetric or not, bias or
    not; optionally after a 1x1 conv / BatchNormalization / per-channel Mul (DBB-style chains)
    and optionally followed by a BatchNormalization (random statistics) or a per-channel
    Mul / Div by a constant (shapes (C,1,..), (1,C,1,..), scalar);
  * BatchNormalization(X);  X itself;  Mul / Div of X by a per-channel constant (either side).

Constants are initializers, Constant nodes or a mix; opsets 11, 13, 17, 21. Every branch
produces the same output shape (end pads are derived from the wanted output size), so the
original model is valid and onnxruntime runs it. Strategies:

  blocks()            anything valid: random pads, dilations, groups, chains; sometimes
                      branches of different strides with a coincidentally equal output size.
                      An independent oracle (equal strides, equal output extents, taps aligned
                      at the gcd dilation, merged cost not higher) says whether the block must
                      become one Conv; when it says no, a join must remain.
  mergeable_blocks()  built to merge: a dominant conv whose kernel holds every other branch's
                      (dilated) taps at an offset, pads derived from those offsets, groups that
                      are multiples of the dominant conv's: the merge is exact and never costlier.
  near-misses         different strides with equal output size (no Conv mixes two strides), and
                      a mergeable block with one branch blocked: its output also read by a node
                      or a graph output (or the conv inside a conv→BN branch is), its weight
                      shared with another conv (inside or outside the block), or a parameter a
                      graph input or an overridable initializer (fed fresh values at run time).
                      The blocked branch stays, the report says why, the rest still merges.

Properties, per example: the original passes the full onnx check; the optimized model passes
it too, has no more nodes, keeps the interface, was verified without any rollback, and matches
the original in onnxruntime (its optimizations off) on a fresh random input within
rtol 1e-4, atol 1e-5 × max|ref|; a second optimize fires no rule; the input model is not
modified; the expected op histogram where one is known.

Derandomized, with fixed example counts so CI stays fast (about 15 s). For a soak run set
``ONNXREP_FUZZ_EXAMPLES=N``: every property test here then runs N examples (6 tests: 6·N), e.g.

    ONNXREP_FUZZ_EXAMPLES=1000 python -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics

The bugs this fuzzer found have minimal regression tests at the end of this module.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import histogram, run
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import onnxrep
from onnxrep.testing import GraphBuilder

_SOAK = os.environ.get("ONNXREP_FUZZ_EXAMPLES")


def examples(default: int) -> settings:
    return settings(max_examples=int(_SOAK) if _SOAK else default, derandomize=True, database=None,
                    deadline=None, print_blob=False, phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


JOINS = ("Add", "Sub", "Sum")
#: float16 blocks: the original rounds every branch, the merged conv once (rtol, atol × max|ref|)
FLOAT16_TOLERANCE = (5e-3, 5e-3)  # measured: at most ~1.2e-3 of max|ref|
KERNEL_MAX = {1: 7, 2: 7, 3: 5}
SIZES = {1: (3, 16), 2: (3, 10), 3: (2, 6)}  # spatial input size per axis
CHANNELS = (1, 2, 3, 4, 6, 8)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---- strategies ---------------------------------------------------------------------------------

@st.composite
def join_trees(draw, leaves: list[int]):
    """A tree of joins over branch indices: ("Add"|"Sub", left, right), ("Sum", *leaves), or a leaf."""
    if len(leaves) == 1:
        return leaves[0]
    if draw(st.integers(0, 3)) == 0:
        return ("Sum", *leaves)
    k = draw(st.integers(1, len(leaves) - 1))
    op = draw(st.sampled_from(["Add", "Add", "Sub"]))
    return (op, draw(join_trees(leaves[:k])), draw(join_trees(leaves[k:])))


@st.composite
def _common(draw):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    return dict(rank=nd, channels=draw(st.sampled_from(CHANNELS)),
                batch=draw(st.sampled_from(["N", 1, 2])), opset=draw(st.sampled_from([11, 13, 17, 21])),
                constants=draw(st.sampled_from(["initializers", "initializers", "nodes", "mixed"])),
                source=draw(st.sampled_from(["input", "input", "Relu", "Conv"])),
                dtype=draw(st.sampled_from(["float32"] * 5 + ["float16"])),
                seed=draw(st.integers(0, 2**20)))


@st.composite
def _plain_branch(draw, kind: str) -> dict:
    if kind == "scale":
        op = draw(st.sampled_from(["Mul", "Mul", "Div"]))
        shape = draw(st.sampled_from(["C11", "1C11", "scalar", "one"]))
        const_first = op == "Mul" and draw(st.booleans())
        return dict(kind="scale", op=op, shape=shape, const_first=const_first)
    return dict(kind=kind)


@st.composite
def _pre_op(draw, channels: int, kinds=("conv", "bn", "mul")) -> dict | None:
    """An op between X and a branch's conv: a 1x1 conv (DBB's 1x1 → kxk), a BatchNormalization or a
    per-channel Mul (chains that fold when exact); mostly none."""
    kind = draw(st.sampled_from(kinds)) if draw(st.integers(0, 3)) == 0 else None
    if kind == "conv":
        mid = draw(st.sampled_from(CHANNELS))
        return dict(kind=kind, channels=mid, group=draw(st.sampled_from(divisors(math.gcd(channels, mid)))),
                    bias=draw(st.booleans()))
    if kind == "mul":
        return dict(kind=kind, shape=draw(st.sampled_from(["C11", "1C11", "scalar"])))
    return dict(kind=kind) if kind else None


@st.composite
def _after_conv(draw) -> dict:
    after = draw(st.sampled_from([None, None, "bn", "mul"]))
    if after != "mul":
        return dict(after=after)
    return dict(after=after, after_op=draw(st.sampled_from(["Mul", "Div"])),
                after_shape=draw(st.sampled_from(["C11", "1C11", "scalar"])))


def _feasible(size: int, out: int, stride: int, kmax: int) -> list[tuple[int, int, int]]:
    """(kernel, dilation, total pad) on one axis that turn ``size`` into ``out`` at ``stride``."""
    found = []
    for k in range(1, kmax + 1):
        for d in (1, 2, 3):
            span = d * (k - 1)
            for r in range(stride):
                total = (out - 1) * stride + span + 1 - size + r
                if 0 <= total <= span + stride:
                    found.append((k, d, total))
    return found


@st.composite
def _split(draw, total: int) -> tuple[int, int]:
    """Begin / end pads summing to ``total``: 'same' (either rounding) or anywhere in between."""
    mode = draw(st.sampled_from(["lower", "upper", "any"]))
    begin = {"lower": total // 2, "upper": total - total // 2}.get(mode)
    if begin is None:
        begin = draw(st.integers(0, total))
    return begin, total - begin


@st.composite
def blocks(draw, mixed_strides: bool | None = None, chains: bool = True):
    """Any valid block. ``mixed_strides``: force (True) or forbid (False) branches of different strides;
    ``chains``: a conv branch may start with a 1x1 conv, a BatchNormalization or a Mul."""
    block = draw(_common())
    nd, c = block["rank"], block["channels"]
    n = draw(st.integers(2, 4))
    if mixed_strides is None:
        mixed_strides = draw(st.integers(0, 4)) == 0
    if mixed_strides:
        kinds = ["conv"] * n
    else:
        kinds = [draw(st.sampled_from(["conv", "conv", "conv", "bn", "identity", "scale"])) for _ in range(n)]
    plain = any(k != "conv" for k in kinds)
    cout = c if plain else draw(st.sampled_from([c, c, 2 * c, *CHANNELS]))
    lo, hi = SIZES[nd]
    size = tuple(draw(st.integers(lo, hi)) for _ in range(nd))
    kmax = KERNEL_MAX[nd]
    if plain:
        strides, out = (1,) * nd, size
    else:
        strides = tuple(draw(st.sampled_from([1, 2])) for _ in range(nd))
        out = []
        for a in range(nd):
            options = (1, 2) if mixed_strides else (strides[a],)
            base = -(-size[a] // max(options))
            candidates = [o for o in range(max(1, base - 3), base + 2)
                          if all(_feasible(size[a], o, s, kmax) for s in options)]
            out.append(draw(st.sampled_from(candidates)))
        out = tuple(out)
    branches = []
    flip = draw(st.integers(0, nd - 1))
    for i, kind in enumerate(kinds):
        if kind != "conv":
            branches.append(draw(_plain_branch(kind)))
            continue
        own = strides
        if mixed_strides and i > 0:
            own = tuple(draw(st.sampled_from([1, 2])) for _ in range(nd))
            if i == 1:  # at least two different strides
                own = tuple(3 - s if a == flip else s for a, s in enumerate(strides))
        kernel, dilation, begin, end = [], [], [], []
        for a in range(nd):
            k, d, total = draw(st.sampled_from(_feasible(size[a], out[a], own[a], kmax)))
            b, e = draw(_split(total))
            kernel.append(k)
            dilation.append(d)
            begin.append(b)
            end.append(e)
        pre = draw(_pre_op(c)) if chains else None
        cin = pre["channels"] if pre and pre["kind"] == "conv" else c
        branches.append(dict(kind="conv", kernel=tuple(kernel), strides=own, dilations=tuple(dilation),
                             pads=tuple(begin + end), group=draw(st.sampled_from(divisors(math.gcd(cin, cout)))),
                             bias=draw(st.booleans()), pre=pre, **draw(_after_conv())))
    order = list(draw(st.permutations(range(n))))
    if draw(st.integers(0, 5)) == 0:  # a Concat of sums (merge_concat's business): no expectation
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=1)))
        parts = [order[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
        join = ("Concat", *[draw(join_trees(part)) for part in parts])
        after = draw(st.sampled_from([None, "Relu"]))
    else:
        join = draw(join_trees(order))
        after = draw(st.sampled_from([None, "Relu", "Relu", "Mul", "BatchNormalization"]))
    block.update(cout=cout, size=size, branches=branches, join=join, after=after, spatial="static")
    return block


@st.composite
def mergeable_blocks(draw, min_branches: int = 2):
    """A block that must become one Conv: branch 0 is a conv whose kernel (size K, dilation d per
    axis, pads pb/pe) holds every other branch. A branch of k taps at dilation m·d placed at tap
    offset o of it reads the same rows when its pads are pb − o·d and pe − (K − (m(k−1)+1) − o)·d;
    its groups are a multiple of the dominant conv's, so the merged kernel is the dominant one's
    size and never costs more."""
    block = draw(_common())
    nd, c = block["rank"], block["channels"]
    n = draw(st.integers(min_branches, 4))
    kinds = ["conv"] + [draw(st.sampled_from(["conv", "conv", "bn", "identity", "scale"])) for _ in range(n - 1)]
    plain = any(k != "conv" for k in kinds)
    cout = c if plain else draw(st.sampled_from([c, c, 2 * c, *CHANNELS]))
    groups = divisors(math.gcd(c, cout))
    g0 = draw(st.sampled_from(groups))
    lo, hi = SIZES[nd]
    kernel, dilation, begin, end, size, strides = [], [], [], [], [], []
    for _ in range(nd):
        k = draw(st.integers(1, KERNEL_MAX[nd]))
        d = draw(st.sampled_from([1, 2, 3] if k > 1 else [1, 1, 2, 3]))
        span = d * (k - 1)
        if plain:  # the identity must line up: pads a multiple of d, output size = input size
            o = draw(st.integers(0, k - 1))
            b, e, s = o * d, (k - 1 - o) * d, 1
        else:
            b, e = draw(st.integers(0, max(span, 1))), draw(st.integers(0, max(span, 1)))
            s = draw(st.sampled_from([1, 2]))
        kernel.append(k)
        dilation.append(d)
        begin.append(b)
        end.append(e)
        strides.append(s)
        size.append(draw(st.integers(max(lo, span + 1 - b - e), max(hi, span + 1 - b - e))))
    strides = tuple(strides)
    branches = [dict(kind="conv", kernel=tuple(kernel), strides=strides, dilations=tuple(dilation),
                     pads=tuple(begin + end), group=g0, bias=draw(st.booleans()),
                     pre=draw(_pre_op(c, kinds=("mul",))), **draw(_after_conv()))]
    for kind in kinds[1:]:
        if kind != "conv":
            branches.append(draw(_plain_branch(kind)))
            continue
        ks, ds, bs, es = [], [], [], []
        for a in range(nd):
            big, d, pb, pe = kernel[a], dilation[a], begin[a], end[a]
            options = []
            for k in range(1, big + 1):
                for m in (1, 2, 3) if k > 1 else (1,):
                    extent = m * (k - 1) + 1
                    for o in range(max(0, big - extent - pe // d), min(big - extent, pb // d) + 1):
                        options.append((k, m, o))
            k, m, o = draw(st.sampled_from(options))
            extent = m * (k - 1) + 1
            ks.append(k)
            ds.append(m * d if k > 1 else draw(st.sampled_from([1, 2, 3])))
            bs.append(pb - o * d)
            es.append(pe - (big - extent - o) * d)
        branches.append(dict(kind="conv", kernel=tuple(ks), strides=strides, dilations=tuple(ds),
                             pads=tuple(bs + es), group=draw(st.sampled_from([g for g in groups if g % g0 == 0])),
                             bias=draw(st.booleans()), pre=draw(_pre_op(c, kinds=("mul",))), **draw(_after_conv())))
    order = draw(st.permutations(range(n)))
    # Equal strides and extents: the branches agree for every input size, so the size may be dynamic.
    spatial = draw(st.sampled_from(["static", "dynamic"])) if nd < 3 else "static"
    block.update(cout=cout, size=tuple(size), branches=branches, join=draw(join_trees(list(order))),
                 after=draw(st.sampled_from([None, "Relu", "Relu", "Mul", "BatchNormalization"])), spatial=spatial)
    return block


# ---- the independent oracle ---------------------------------------------------------------------

def must_merge(block) -> bool | None:
    """Whether the whole block is exactly one conv that costs no more; None when unsure (chains,
    concat). On each axis the merged conv has the gcd D of the branch dilations (axes of one tap
    have none): a k-tap kernel at dilation d spans (d/D)(k−1)+1 taps at D, and taps line up when
    the begin pads differ by multiples of D; every branch has the same extent (pads − span)."""
    nd, c, cout = block["rank"], block["channels"], block["cout"]
    if isinstance(block["join"], tuple) and block["join"][0] == "Concat":
        return None  # merge_concat's business
    geometry = []  # (kernel, strides, dilations, pads, group, cost)
    for br in block["branches"]:
        if br["kind"] == "conv" and br["pre"] and br["pre"]["kind"] != "mul":
            return None  # a chain: whether it folds exactly is fold_sequential's question
        if br["kind"] == "conv":
            cost = cout * c // br["group"] * math.prod(br["kernel"])
            if br["pre"]:  # a Mul on every input pixel the conv reads: C per pixel, prod(strides) pixels
                cost += c * math.prod(br["strides"])
            geometry.append((br["kernel"], br["strides"], br["dilations"], br["pads"], br["group"], cost))
        else:
            cost = 0 if br["kind"] == "identity" else c
            geometry.append(((1,) * nd, (1,) * nd, (1,) * nd, (0,) * (2 * nd), c, cost))
    if all(b["kind"] == "identity" for b in block["branches"]):
        # X alone: nothing to merge, unless X is a conv's output only the join reads: every identity is then
        # that conv followed back (merge_parallel's join region), Sum(X, X) one conv of twice its weights
        return block["source"] == "Conv"
    if len({g[1] for g in geometry}) > 1:
        return False
    size = []
    for a in range(nd):
        d = math.gcd(*[g[2][a] for g in geometry if g[0][a] > 1]) or 1
        extents = {g[3][a] + g[3][nd + a] - g[2][a] * (g[0][a] - 1) for g in geometry}
        if len(extents) > 1:
            return False
        top = max(g[3][a] for g in geometry)
        if any((top - g[3][a]) % d for g in geometry):
            return False
        taps = [g[2][a] // d * (g[0][a] - 1) + 1 for g in geometry]
        size.append(max((top - g[3][a]) // d + k for g, k in zip(geometry, taps)))
    group = math.gcd(*[g[4] for g in geometry])
    return cout * c // group * math.prod(size) <= sum(g[5] for g in geometry)


# ---- building models ----------------------------------------------------------------------------

def _per_channel_value(rng, channels: int, nd: int, shape: str) -> np.ndarray:
    value = rng.uniform(0.5, 1.5, channels) * rng.choice([-1.0, 1.0], channels)
    return {"C11": value.reshape((channels,) + (1,) * nd),
            "1C11": value.reshape((1, channels) + (1,) * nd),
            "scalar": np.asarray(value[0]),
            "one": value[:1]}[shape]


class Built:
    """A block's model, and the names a near-miss check looks for."""

    def __init__(self):
        self.ends: dict[int, str] = {}  # branch → tensor the join reads
        self.convs: dict[int, str] = {}  # branch → its Conv's output
        self.weights: dict[int, str] = {}  # branch → its Conv's weight initializer
        self.dynamic: dict[str, np.ndarray] = {}  # parameters fed at run time (graph inputs)
        self.model: onnx.ModelProto | None = None
        self.channels, self.size = 0, ()
        self.source = "x"  # the tensor X the branches read
        self.dtype = np.dtype(np.float32)


def build(block, miss: dict | None = None) -> Built:
    """The block as a model; ``miss`` blocks one branch (see the near-miss tests).

    Constants are initializers or Constant nodes (``block["constants"]``); a near-miss's
    shared or overridable weight is always an initializer."""
    miss = miss or {}
    b = GraphBuilder(block["seed"], dtype=np.dtype(block["dtype"]))
    places = np.random.default_rng(block["seed"] + 7)
    built = Built()
    nd, c, cout = block["rank"], block["channels"], block["cout"]
    dims = block["size"] if block["spatial"] == "static" else [f"S{a}" for a in range(nd)]
    x = b.input("x", [block["batch"], c, *dims])
    target = miss.get("branch")
    count = iter(range(10**6))

    def const(value: np.ndarray, name: str | None = None, initializer: bool = False) -> str:
        value = np.asarray(value, b.dtype)
        name = name or f"K{next(count)}_const"
        mode = block.get("constants", "initializers")
        if initializer or mode == "initializers" or (mode == "mixed" and places.random() < 0.5):
            return b.constant(value, name)
        b.node("Constant", [], [name], name=f"{name}_node", value=numpy_helper.from_array(value, name))
        return name

    def param(value: np.ndarray, name: str, dynamic: bool = False, overridable: bool = False) -> str:
        value = np.asarray(value, b.dtype)
        if dynamic and not overridable:
            b.input(name, list(value.shape))
            built.dynamic[name] = b.rng.standard_normal(value.shape).astype(b.dtype)
            return name
        const(value, name, initializer=overridable)
        if overridable:
            b.inputs.append(helper.make_tensor_value_info(name, b.elem_type, list(value.shape)))
            built.dynamic[name] = (value + b.rng.standard_normal(value.shape)).astype(b.dtype)
        return name

    def bn(source: str, channels: int) -> str:
        return b.node("BatchNormalization", [source, *[const(p) for p in b.bn_params(channels)]], epsilon=1e-5)

    def conv(i: int, br: dict, source: str = x, cin: int = c, weight_name: str | None = None) -> str:
        w, bias = b.conv_weights(cin, cout, br["kernel"], br["group"], br["bias"])
        what = miss.get("what") if i == target and miss.get("kind") == "dynamic" else None
        if weight_name is None:
            weight_name = param(w, f"W{i}_weight", what in ("weight", "overridable"), what == "overridable")
        inputs = [source, weight_name]
        if bias is not None or what == "bias":
            bias = bias if bias is not None else np.zeros(cout, b.dtype)
            inputs.append(param(bias, f"B{i}_bias", what == "bias"))
        return b.node("Conv", inputs, name=f"Branch{i}_conv" if weight_name == f"W{i}_weight" else None,
                      kernel_shape=list(br["kernel"]), strides=list(br["strides"]), pads=list(br["pads"]),
                      dilations=list(br["dilations"]), group=br["group"])

    if block["source"] == "Relu":  # X computed inside the graph
        x = b.node("Relu", [x])
    elif block["source"] == "Conv":  # ... by a conv with no activation after it: X + conv(X) stays a block
        w, bias = b.conv_weights(c, c, (3,) * nd)
        x = b.node("Conv", [x, const(w), const(bias)], kernel_shape=[3] * nd, pads=[1] * (2 * nd))
    built.source = x

    for i, br in enumerate(block["branches"]):
        what = miss.get("what") if i == target and miss.get("kind") == "dynamic" else None
        if br["kind"] == "identity":
            y = x
        elif br["kind"] == "bn":
            gamma, beta, mean, var = b.bn_params(c)
            names = [param(gamma, f"BN{i}_gamma"), param(beta, f"BN{i}_beta"),
                     param(mean, f"BN{i}_mean", what in ("mean", "overridable"), what == "overridable"),
                     param(var, f"BN{i}_var")]
            y = b.node("BatchNormalization", [x, *names], epsilon=1e-5)
        elif br["kind"] == "scale":
            if what:
                value = b.rng.uniform(0.5, 1.5, [c] + [1] * nd)
                scale = param(value, f"S{i}_scale", dynamic=True)
            else:
                scale = const(_per_channel_value(b.rng, c, nd, br["shape"]))
            y = b.node(br["op"], [scale, x] if br["const_first"] else [x, scale])
        else:
            pre, source, cin = br.get("pre"), x, c
            if pre and pre["kind"] == "conv":
                w, bias = b.conv_weights(c, pre["channels"], (1,) * nd, pre["group"], pre["bias"])
                source = b.node("Conv", [x, const(w)] + ([const(bias)] if bias is not None else []),
                                kernel_shape=[1] * nd, group=pre["group"])
                cin = pre["channels"]
            elif pre and pre["kind"] == "bn":
                source = bn(x, c)
            elif pre:
                source = b.node("Mul", [x, const(_per_channel_value(b.rng, c, nd, pre["shape"]))])
            shared = i == target and miss.get("kind") == "shared"
            if shared:  # the shared weight is an initializer, so the check can find it
                w, _ = b.conv_weights(cin, cout, br["kernel"], br["group"], False)
                b.constant(w, f"W{i}_weight")
            y = built.convs[i] = conv(i, br, source, cin, weight_name=f"W{i}_weight" if shared else None)
            built.weights[i] = f"W{i}_weight"
            if br["after"] == "bn":
                y = bn(y, cout)
            elif br["after"] == "mul":
                y = b.node(br["after_op"], [y, const(_per_channel_value(b.rng, cout, nd, br["after_shape"]))])
        built.ends[i] = y

    tree = block["join"]
    n = len(block["branches"])
    if miss.get("kind") == "shared" and miss["where"] == "inside":  # a twin of the branch, same weight
        twin = dict(block["branches"][target], bias=False)
        built.ends[n] = conv(n, twin, weight_name=f"W{target}_weight")
        tree = ("Add", tree, n)

    def join(node) -> str:
        if isinstance(node, int):
            return built.ends[node]
        return b.node(node[0], [join(child) for child in node[1:]], **({"axis": 1} if node[0] == "Concat" else {}))

    y = join(tree)
    if block["after"] == "Relu":
        y = b.node("Relu", [y])
    elif block["after"] == "Mul":
        y = b.node("Mul", [y, const(_per_channel_value(b.rng, cout, nd, "C11"))])
    elif block["after"] == "BatchNormalization":
        y = bn(y, cout)
    b.output(y)

    if miss.get("kind") == "read":
        read = built.convs[target] if miss["where"] == "inner" else built.ends[target]
        b.output(read if miss["where"] == "output" else b.node("Sigmoid", [read]))
    if miss.get("kind") == "shared" and miss["where"] == "outside":
        b.output(conv(-1, dict(block["branches"][target], bias=False), weight_name=f"W{target}_weight"))
    built.model = b.model(opset=block["opset"])
    built.channels, built.size, built.dtype = c, block["size"], b.dtype
    return built


@pytest.fixture(autouse=True, scope="module")
def _quiet_onnxruntime():
    """Overridable initializers make onnxruntime warn on every session: keep the output clean."""
    ort.set_default_logger_severity(3)
    yield
    ort.set_default_logger_severity(2)


# ---- the checks ---------------------------------------------------------------------------------

def feeds_for(model: onnx.ModelProto, built: Built, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    shape = [batch.dim_value or 2, built.channels, *built.size]
    return {"x": rng.standard_normal(shape).astype(built.dtype), **built.dynamic}


def check(built: Built, seed: int) -> tuple[onnx.ModelProto, object]:
    """Every property that holds for any block; returns the optimized model and its report."""
    model = built.model
    onnx.checker.check_model(model, full_check=True)  # the generator makes valid models
    before = model.SerializeToString()
    optimized, report = onnxrep.optimize(model)
    note(report.format(verbose=True))
    note(f"optimized: {histogram(optimized)}")
    assert model.SerializeToString() == before, "the input model was modified"
    assert report.verification.passed and not report.dropped, report.dropped
    onnx.checker.check_model(optimized, full_check=True)
    assert len(optimized.graph.node) <= len(model.graph.node)
    assert [(v.name, v.type) for v in optimized.graph.input] == [(v.name, v.type) for v in model.graph.input]
    assert [(v.name, v.type) for v in optimized.graph.output] == [(v.name, v.type) for v in model.graph.output]
    feeds = feeds_for(model, built, seed)
    rtol, atol = (1e-4, 1e-5) if built.dtype == np.float32 else FLOAT16_TOLERANCE
    for want, got in zip(run(model, feeds), run(optimized, feeds), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        want, got = want.astype(np.float64), got.astype(np.float64)
        scale = max(float(np.abs(want).max()), 1e-12)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)
    _, again = onnxrep.optimize(optimized, verify=False)
    assert not again.fired, f"not idempotent: a second run fired {dict(again.fired)}"
    return optimized, report


def ops(model: onnx.ModelProto) -> dict[str, int]:
    """The op histogram without Constant nodes (a block's constants may be either)."""
    return {k: v for k, v in histogram(model).items() if k != "Constant"}


def joins(model: onnx.ModelProto) -> int:
    return sum(n.op_type in (*JOINS, "Concat") for n in model.graph.node)


def source_folds(block) -> bool:
    """Whether the block, merged into one conv, then folds into the conv that computes X: when
    the merged conv is pointwise (every branch 1x1, no pads) and the result costs no more
    (fold_sequential: the 3x3 source conv runs on prod(strides) pixels per output pixel)."""
    if block["source"] != "Conv":
        return False
    nd, c, cout = block["rank"], block["channels"], block["cout"]
    convs = [br for br in block["branches"] if br["kind"] == "conv"]
    if any(any(k != 1 for k in br["kernel"]) or any(br["pads"]) for br in convs):
        return False
    group = math.gcd(*[br["group"] if br["kind"] == "conv" else c for br in block["branches"]])
    pixels = math.prod(convs[0]["strides"]) if convs else 1
    return cout * c * 3**nd <= c * c * 3**nd * pixels + cout * c // group


def around_ops(block, merged: bool) -> Counter:
    """Ops around the block: the op computing X (unless the merged block folds into it); after the
    join, Relu stays and a Mul / BatchNormalization folds into a merged conv."""
    ops = Counter()
    if block["source"] != "input" and not (merged and source_folds(block)):
        ops[block["source"]] += 1
    if block["after"] == "Relu" or (block["after"] and not merged):
        ops[block["after"]] += 1
    return ops


def single_conv(block) -> dict[str, int]:
    return dict(Counter({"Conv": 1}) + around_ops(block, merged=True))


# ---- the tests ----------------------------------------------------------------------------------

@examples(300)
@given(blocks())
def test_any_block_stays_equivalent(block):
    """Anything valid: equivalent, idempotent, never bigger; one Conv exactly when the oracle says so."""
    optimized, report = check(build(block), block["seed"] + 1)
    expected = must_merge(block)
    event(f"oracle: {expected}; merge_parallel fired: {bool(report.fired['merge_parallel'])}")
    event(f"rank {block['rank']}, {len(block['branches'])} branches")
    if expected:
        assert ops(optimized) == single_conv(block), report.format(verbose=True)
    elif expected is False:
        assert joins(optimized) >= 1, report.format(verbose=True)


@examples(300)
@given(mergeable_blocks())
def test_mergeable_block_becomes_one_conv(block):
    assert must_merge(block) is not False  # the strategy and the oracle agree
    optimized, report = check(build(block), block["seed"] + 1)
    assert ops(optimized) == single_conv(block), report.format(verbose=True)
    assert report.fired["merge_parallel"] == 1


@examples(100)
@given(blocks(mixed_strides=True, chains=False))
def test_different_strides_with_equal_output_size_do_not_merge(block):
    built = build(block)
    optimized, report = check(built, block["seed"] + 1)
    readers = [n for n in optimized.graph.node if n.op_type == "Conv" and n.input[0] == built.source]
    strides = {tuple(br["strides"]) for br in block["branches"]}
    assert len({tuple(helper.get_attribute_value(a)) for n in readers for a in n.attribute
                if a.name == "strides"}) == len(strides)
    assert joins(optimized) >= 1


def _blocked_branch(draw_from, block) -> int:
    return draw_from(st.sampled_from([i for i, br in enumerate(block["branches"]) if br["kind"] != "identity"]))


def _rest_merged(block, blocked: Counter, join_nodes: int = 1) -> Counter:
    """Histogram when the blocked branch stays and every other branch merges into one Conv."""
    return Counter({"Conv": 1}) + blocked + around_ops(block, merged=False) + Counter({"join": join_nodes})


def _branch_ops(br: dict, lifts: bool, after_folds: bool) -> Counter:
    """The ops a blocked branch keeps. ``lifts``: its conv is a constant conv, so a Mul before it
    folds into it; ``after_folds``: so does the BN / Mul after it (the conv output is private)."""
    if br["kind"] == "bn":
        return Counter({"BatchNormalization": 1})
    if br["kind"] == "scale":
        return Counter({br["op"]: 1})
    kept = Counter({"Conv": 1})
    if br["after"] and not after_folds:
        kept[{"bn": "BatchNormalization", "mul": br.get("after_op")}[br["after"]]] += 1
    if br["pre"] and not lifts:
        kept["Mul"] += 1
    return kept


def _histogram_with_joins(model) -> Counter:
    counts = Counter(ops(model))
    for op in JOINS:
        counts["join"] += counts.pop(op, 0)
    return +counts


def _near_miss(block, miss):
    """Build the block with its near-miss, optimize and check it: (built, optimized, report)."""
    note(miss)
    built = build(block, miss)
    return (built, *check(built, block["seed"] + 1))


def _reasons(report) -> str:
    return " | ".join(f.reason for f in report.refusals)


@examples(100)
@given(st.data())
def test_branch_read_elsewhere_is_kept(data):
    block = data.draw(mergeable_blocks())
    target = _blocked_branch(data.draw, block)
    br = block["branches"][target]
    wheres = ["output", "node"] + (["inner"] if br["kind"] == "conv" and br["after"] else [])
    miss = dict(kind="read", branch=target, where=data.draw(st.sampled_from(wheres)))
    built, optimized, report = _near_miss(block, miss)
    read = built.convs[target] if miss["where"] == "inner" else built.ends[target]
    assert read in {o for n in optimized.graph.node for o in n.output}, report.format(verbose=True)
    assert joins(optimized) >= 1
    assert "read by" in _reasons(report), report.format(verbose=True)
    if target:  # the dominant conv is kept from the merge: the others alone may cost more
        expected = _rest_merged(block, _branch_ops(br, lifts=True, after_folds=miss["where"] != "inner"))
        expected += Counter({"Sigmoid": miss["where"] != "output"})
        assert _histogram_with_joins(optimized) == +expected, report.format(verbose=True)


@examples(100)
@given(st.data())
def test_shared_weight_is_kept(data):
    block = data.draw(mergeable_blocks())
    target = data.draw(st.sampled_from([i for i, br in enumerate(block["branches"]) if br["kind"] == "conv"]))
    miss = dict(kind="shared", branch=target, where=data.draw(st.sampled_from(["inside", "outside"])))
    built, optimized, report = _near_miss(block, miss)
    name = built.weights[target]
    original = {i.name: numpy_helper.to_array(i) for i in built.model.graph.initializer}[name]
    kept = {i.name: numpy_helper.to_array(i) for i in optimized.graph.initializer}
    assert name in kept and np.array_equal(kept[name], original), report.format(verbose=True)
    assert sum(name in n.input for n in optimized.graph.node) == 2
    assert "shared" in _reasons(report), report.format(verbose=True)
    if target:
        blocked = _branch_ops(block["branches"][target], lifts=False, after_folds=False)
        expected = _rest_merged(block, blocked + Counter({"Conv": 1}),
                                join_nodes=2 if miss["where"] == "inside" else 1)
        assert _histogram_with_joins(optimized) == +expected, report.format(verbose=True)


@examples(100)
@given(st.data())
def test_non_constant_parameter_is_kept(data):
    block = data.draw(mergeable_blocks())
    target = _blocked_branch(data.draw, block)
    br = block["branches"][target]
    whats = {"conv": ["weight", "bias", "overridable"], "bn": ["mean", "overridable"], "scale": ["constant"]}
    miss = dict(kind="dynamic", branch=target, what=data.draw(st.sampled_from(whats[br["kind"]])))
    built, optimized, report = _near_miss(block, miss)  # the parameters are fed fresh values
    for name in built.dynamic:
        assert any(name in n.input for n in optimized.graph.node), report.format(verbose=True)
    if miss["what"] != "constant":  # Mul(X, input): not linear, no refusal
        assert "graph input" in _reasons(report), report.format(verbose=True)
    if target:
        expected = _rest_merged(block, _branch_ops(br, lifts=False, after_folds=False))
        assert _histogram_with_joins(optimized) == +expected, report.format(verbose=True)


# ---- bugs the fuzzer found: minimal regression tests ---------------------------------------

def test_mul_by_constant_first():
    """Mul(c, X) is Mul(X, c): the rank is X's, not the (C,1,1) constant's."""
    b = GraphBuilder(0)
    x = b.input("x", [1, 2, 5, 5])
    scale = b.constant(np.array([0.5, -1.5], np.float32).reshape(2, 1, 1))
    b.output(b.op("Add", b.conv(x, 2, 3), b.op("Mul", scale, x)))
    optimized, _ = onnxrep.optimize(b.model())
    assert ops(optimized) == {"Conv": 1}


def test_refusal_reported_beside_constant_first_mul():
    """The report must say why conv(X) with a run-time weight stays."""
    b = GraphBuilder(0)
    x = b.input("x", [1, 2, 5, 5])
    w = b.input("w", [2, 2, 3, 3])  # a conv weight fed at run time
    conv = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    scale = b.constant(np.array([0.5, -1.5], np.float32).reshape(1, 2, 1, 1))
    b.output(b.op("Add", conv, b.op("Mul", scale, x)))  # with Mul(x, scale) the refusal is reported
    _, report = onnxrep.optimize(b.model())
    assert any("graph input" in f.reason for f in report.refusals)


def test_bn_branches_of_a_computed_tensor():
    """BN(X) + BN(X) with X = Relu(input) is one depthwise 1x1 conv, though X has no value_info."""
    b = GraphBuilder(0)
    x = b.op("Relu", b.input("input", [1, 4, 6, 6]))  # X has no value_info: its rank is not in the graph
    b.output(b.op("Add", b.bn(x), b.bn(x)))
    optimized, _ = onnxrep.optimize(b.model())
    assert ops(optimized) == {"Relu": 1, "Conv": 1}


def test_conv_weight_from_a_constant_node():
    """conv(X) + BN(X), X = Relu(input), the conv weight a Constant node: one conv."""
    b = GraphBuilder(0)
    x = b.op("Relu", b.input("input", [1, 4, 6, 6]))
    w, bias = b.conv_weights(4, 4, (3, 3))
    weight = b.node("Constant", [], value=onnx.numpy_helper.from_array(w, "w"))
    conv = b.node("Conv", [x, weight, b.constant(bias)], pads=[1, 1, 1, 1])
    b.output(b.op("Add", conv, b.bn(x)))
    optimized, _ = onnxrep.optimize(b.model())
    assert ops(optimized) == {"Relu": 1, "Conv": 1}
