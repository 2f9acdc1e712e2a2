"""merge_parallel: summed branches of one tensor become one Conv; near-misses stay as they are."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import codes, optimize_and_check, reasons

from onnxrep.testing import GraphBuilder

C = 8


def block(b: GraphBuilder, x: str, branches: list[dict], join: str = "Add") -> str:
    """Conv-BN branches of x (dict: conv kwargs; 'bn_only' or 'identity' for those), joined."""
    outs = []
    for spec in branches:
        if spec.get("identity"):
            outs.append(x)
        elif spec.get("bn_only"):
            outs.append(b.bn(x))
        else:
            kwargs = {k: v for k, v in spec.items() if k != "no_bn"}
            conv = b.conv(x, kwargs.pop("cout", C), **kwargs)
            outs.append(conv if spec.get("no_bn") else b.bn(conv))
    if join == "Sum":
        return b.op("Sum", *outs)
    result = outs[0]
    for other in outs[1:]:
        result = b.op(join, result, other)
    return result


def single_block(branches, join="Add", shape=("N", C, 10, 10), seed=11, after="Relu"):
    b = GraphBuilder(seed)
    x = b.input("x", list(shape))
    y = block(b, x, branches, join)
    b.output(b.op(after, y) if after else y)
    return b.model()


K3, K1 = {"kernel": 3}, {"kernel": 1, "pads": [0, 0, 0, 0]}

MERGES = {
    "repvgg": [K3, K1, {"bn_only": True}],
    "repvgg stride 2": [{"kernel": 3, "stride": 2}, {"kernel": 1, "stride": 2, "pads": [0, 0, 0, 0]}],
    "repvgg groups": [{"kernel": 3, "group": 4}, {"kernel": 1, "group": 4, "pads": [0] * 4}, {"bn_only": True}],
    "acnet": [K3, {"kernel": (1, 3), "pads": [0, 1, 0, 1]}, {"kernel": (3, 1), "pads": [1, 0, 1, 0]}],
    "mobileone depthwise": [{"kernel": 3, "group": C}] * 3 + [{"kernel": 1, "group": C, "pads": [0] * 4},
                                                             {"bn_only": True}],
    "large kernel": [{"kernel": 7, "group": C}, {"kernel": 3, "group": C}],
    "identity without bn": [K3, {"identity": True}],
    "conv without bn": [{"kernel": 3, "no_bn": True, "bias": False}, {"kernel": 1, "pads": [0] * 4, "no_bn": True}],
    "asymmetric pads": [{"kernel": 2, "pads": [0, 0, 1, 1]}, {"kernel": 3, "pads": [1, 1, 1, 1]}],
    "dilated + 1x1": [{"kernel": 3, "dilation": 2, "group": C}, {"kernel": 1, "group": C, "pads": [0] * 4}],
}


@pytest.mark.parametrize("name", MERGES)
@pytest.mark.parametrize("join", ["Add", "Sum"])
def test_merges_into_one_conv(name, join):
    _, report = optimize_and_check(single_block(MERGES[name], join), {"Conv": 1, "Relu": 1})
    assert report.fired["merge_parallel"] == 1, report.format(verbose=True)
    assert not report.refusals


def test_1d_and_3d():
    for rank in (1, 3):
        b = GraphBuilder(12)
        x = b.input("x", [2, 4] + [6] * rank)
        k3 = b.bn(b.conv(x, 4, (3,) * rank))
        k1 = b.bn(b.conv(x, 4, (1,) * rank, pads=[0] * (2 * rank)))
        b.output(b.op("Add", b.op("Add", k3, k1), b.bn(x)))
        optimize_and_check(b.model(), {"Conv": 1})


def test_sub_join_fastvit_style():
    """x − BN(x) + dwconv(x): signs carried through the join."""
    b = GraphBuilder(13)
    x = b.input("x", [1, C, 9, 9])
    conv = b.bn(b.conv(x, C, 3, group=C))
    y = b.op("Add", x, b.op("Sub", conv, b.bn(x)))
    b.output(y)
    optimize_and_check(b.model(), {"Conv": 1})


def test_partial_merge_keeps_the_rest():
    """Two branches of x merge; a branch of another tensor stays in the join."""
    b = GraphBuilder(14)
    x = b.input("x", [1, C, 10, 10])
    other = b.op("Relu", x)
    y = b.op("Add", b.op("Add", b.bn(b.conv(x, C, 3)), b.bn(b.conv(other, C, 3))), b.bn(b.conv(x, C, 1, pads=[0] * 4)))
    b.output(y)
    _, report = optimize_and_check(b.model(), {"Conv": 2, "Add": 1, "Relu": 1})
    assert report.fired["merge_parallel"] == 1


def test_chain_of_blocks_and_sub_with_negative_rest():
    b = GraphBuilder(15)
    x = b.input("x", ["N", C, 10, 10])
    y = b.op("Relu", block(b, x, MERGES["repvgg"]))
    z = b.op("Sub", b.op("Relu", y), block(b, y, MERGES["acnet"]))
    b.output(z)
    optimize_and_check(b.model(), {"Conv": 2, "Relu": 2, "Sub": 1})


# ---- must not merge ------------------------------------------------------------------------------

def refused(model, expected_ops, reason):
    _, report = optimize_and_check(model, expected_ops)
    assert reason in reasons(report), report.format(verbose=True)


def test_refuses_branch_read_elsewhere():
    b = GraphBuilder(16)
    x = b.input("x", [1, C, 8, 8])
    k3, k1 = b.bn(b.conv(x, C, 3)), b.bn(b.conv(x, C, 1, pads=[0] * 4))
    b.output(b.op("Add", k3, k1))
    b.output(b.op("Relu", k1))
    refused(b.model(), {"Conv": 2, "Add": 1, "Relu": 1}, "also read by")


def test_refuses_branch_that_is_a_graph_output():
    b = GraphBuilder(17)
    x = b.input("x", [1, C, 8, 8])
    k3, k1 = b.bn(b.conv(x, C, 3)), b.bn(b.conv(x, C, 1, pads=[0] * 4))
    b.output(b.op("Add", k3, k1))
    b.output(k3)
    refused(b.model(), {"Conv": 2, "Add": 1}, "a graph output")


def test_refuses_non_constant_weight_but_merges_the_rest():
    b = GraphBuilder(18)
    x = b.input("x", [1, C, 8, 8])
    w = b.input("w", [C, C, 3, 3])
    dynamic = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    y = b.op("Add", b.op("Add", dynamic, b.bn(b.conv(x, C, 3))), b.bn(b.conv(x, C, 1, pads=[0] * 4)))
    b.output(y)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, C, 8, 8)).astype(np.float32),
             "w": rng.standard_normal((C, C, 3, 3)).astype(np.float32)}
    _, report = optimize_and_check(b.model(), {"Conv": 2, "Add": 1}, feeds=feeds)
    assert "graph input" in reasons(report) and "graph-input" in codes(report)


def test_refuses_shared_weight():
    b = GraphBuilder(19)
    x = b.input("x", [1, C, 8, 8])
    w, _ = b.conv_weights(C, C, (1, 1), bias=False)
    shared = b.constant(w, "shared")
    k1 = b.node("Conv", [x, shared])
    b.output(b.op("Add", b.conv(x, C, 3), k1))
    b.output(b.node("Conv", [x, shared]))
    refused(b.model(), {"Conv": 3, "Add": 1}, "shared")


@pytest.mark.parametrize("branches,reason", [
    # 12x12 → 6x6 both, but by different strides
    ([{"kernel": 2, "stride": 2, "pads": [0] * 4}, {"kernel": 7, "pads": [0] * 4}], "different strides"),
    ([{"kernel": 3, "dilation": 2}, {"kernel": 3, "dilation": 3}], "would cost"),
    ([{"kernel": 3, "group": 2}, {"kernel": 3, "group": 4}, {"kernel": 1, "group": 8, "pads": [0] * 4}],
     None),  # groups 2, 4, 8 nest: merges at group 2, costs less
    ([{"kernel": 3, "group": 2}, {"kernel": 3, "group": 8, "cout": C}, {"kernel": 3}], None),
    ([{"kernel": 1, "pads": [0] * 4}, {"kernel": 7, "group": C}], "would cost"),
    ([{"kernel": 3, "dilation": 2, "pads": [2, 2, 2, 2]}, {"kernel": 2, "dilation": 2, "pads": [1, 1, 1, 1]}],
     "do not line up"),
    # equal (6x6) at 12x12 only: at 11x11 they would give 5x5 and 6x6
    ([{"kernel": 3, "stride": 2, "pads": [1, 1, 1, 1]}, {"kernel": 2, "stride": 2, "pads": [0, 0, 0, 0]}],
     "output shapes differ"),
])
def test_refuses_incompatible_geometry(branches, reason):
    model = single_block(branches, shape=(1, C, 12, 12), after="Identity" if reason else "Relu")
    if reason is None:
        optimize_and_check(model, {"Conv": 1, "Relu": 1})
        return
    expected = {"Conv": len(branches), "BatchNormalization": 0, "Add": 1, "Identity": 1}
    expected = {k: v for k, v in expected.items() if v}
    refused(model, expected, reason)


def test_refuses_training_mode_bn_branch():
    b = GraphBuilder(20)
    x = b.input("x", [1, C, 8, 8])
    bn = b.node("BatchNormalization", [x, *[b.constant(p) for p in b.bn_params(C)]], training_mode=1)
    b.output(b.op("Add", b.conv(x, C, 3), bn))
    _, report = __import__("onnxrep").optimize(b.model(opset=15), verify=False)
    assert "training mode" in reasons(report) and "training-mode" in codes(report)


def test_refuses_add_that_broadcasts_channels():
    """conv(x) with one output channel + x with eight: the Add broadcasts, no single conv does that."""
    b = GraphBuilder(21)
    x = b.input("x", [1, C, 8, 8])
    b.output(b.op("Add", b.conv(x, 1, 3), x))
    refused(b.model(), {"Conv": 1, "Add": 1}, "broadcasts")


def test_refuses_add_that_broadcasts_spatially():
    b = GraphBuilder(22)
    x = b.input("x", [1, C, 8, 8])
    pooled = b.conv(x, C, 8, pads=[0] * 4)  # 1x1 spatial output
    b.output(b.op("Add", pooled, x))
    refused(b.model(), {"Conv": 1, "Add": 1}, "broadcasts")


def test_diverse_branch_block_chains():
    """DBB: kxk conv-BN + 1x1 conv-BN + (1x1 conv → avg-pool → BN) + (1x1 conv → kxk conv-BN) → one conv.

    The chains are costlier alone; inside the block they cost nothing extra.
    """
    b = GraphBuilder(23)
    x = b.input("x", ["N", C, 10, 10])
    kxk = b.bn(b.conv(x, C, 3, bias=False))
    k1 = b.bn(b.conv(x, C, 1, pads=[0] * 4, bias=False))
    avg = b.bn(b.op("AveragePool", b.conv(x, C, 1, pads=[0] * 4, bias=False), kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1], count_include_pad=1))
    k1kxk = b.bn(b.conv(b.conv(x, C, 1, pads=[0] * 4, bias=False), C, 3, bias=False))
    b.output(b.op("Relu", b.op("Add", b.op("Add", b.op("Add", kxk, k1), avg), k1kxk)))
    _, report = optimize_and_check(b.model(), {"Conv": 1, "Relu": 1})
    assert report.fired["merge_parallel"] == 1


def test_chain_with_bias_before_padding_is_cut_short():
    """1x1 conv with bias → 3x3 conv that zero-pads: not exact as one conv, so the chain stops there."""
    b = GraphBuilder(24)
    x = b.input("x", [1, C, 10, 10])
    chained = b.conv(b.conv(x, C, 1, pads=[0] * 4), C, 3)
    b.output(b.op("Add", b.conv(x, C, 3), chained))
    optimize_and_check(b.model(), {"Conv": 3, "Add": 1})


def test_identity_operand_produced_by_a_conv():
    """x = conv0(input) with no activation after it: x + conv(x) + BN(x) still merges (x is the identity)."""
    b = GraphBuilder(25)
    inp = b.input("input", [1, C, 8, 8])
    x = b.conv(inp, C, 3)
    y = b.op("Add", b.op("Add", x, b.bn(b.conv(x, C, 3))), b.bn(x))
    b.output(y)
    _, report = optimize_and_check(b.model(), {"Conv": 2})
    assert report.fired["merge_parallel"] == 1 and not report.refusals


# --- PEFT adapters: LoRA chains and DoRA's base read twice inside its join ------------------------------------------

def linear_adapter(seed: int, dora: bool, bias: bool = True, rank: int = 2, features: int = 16,
                   read_outside: bool = False):
    """A Linear x @ Wᵀ + b with a LoRA adapter s·(x @ Aᵀ) @ Bᵀ on [N, 5, features] tokens, as exported. DoRA
    (PEFT's forward, c a constant per output feature, dynamo folds it): base + (c − 1)·(base − b) + c·s·lora."""
    b = GraphBuilder(seed)
    x = b.node("Relu", [b.input("x", ["N", 5, features])])  # no shape exported after it, as in TorchScript's
    rng = b.rng
    base = b.node("MatMul", [x, b.constant((rng.standard_normal((features, features)) / 4).astype(np.float32))],
                  name="base")
    bias_value = b.constant((rng.standard_normal(features) * 0.1).astype(np.float32)) if bias else None
    if bias:
        base = b.node("Add", [base, bias_value], name="base_bias")
    down = b.node("MatMul", [x, b.constant((rng.standard_normal((features, rank)) / 4).astype(np.float32))])
    lora = b.node("MatMul", [down, b.constant((rng.standard_normal((rank, features)) / 2).astype(np.float32))])
    lora = b.node("Mul", [lora, b.constant(np.array(2.0, np.float32))])
    if not dora:
        y = b.node("Add", [base, lora])
    else:
        c = rng.uniform(0.5, 1.5, (1, features))
        no_bias = b.node("Sub", [base, bias_value]) if bias else base
        scaled = b.node("Mul", [b.constant((c - 1).astype(np.float32)), no_bias])
        y = b.node("Add", [base, b.node("Add", [scaled, b.node("Mul", [b.constant(c.astype(np.float32)), lora])])])
    b.output(y)
    if read_outside:
        b.output(b.node("Relu", [base]))
    return b.model()


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_adapter_merges_into_its_linear(dora, bias):
    """The rank-2 chain alone would cost more as one matrix (fold_sequential refuses it), summed into W it costs
    nothing; DoRA's base is read by the join and by (base − b): both inside the join. (Without a bias the
    merged Linear still gets an Add: a branch composed of a chain counts as biased, see ir.branches.)"""
    optimize_and_check(linear_adapter(30, dora, bias), {"Relu": 1, "MatMul": 1, "Add": 1})


def test_conv_dora_merges_into_its_conv():
    b = GraphBuilder(31)
    x = b.input("x", ["N", 4, 8, 8])
    base = b.conv(x, C, 3, name="base")
    lora = b.op("Mul", b.conv(b.conv(x, 2, 3, bias=False), C, 1, bias=False), b.constant(np.array(2.0, np.float32)))
    c = b.rng.uniform(0.5, 1.5, (1, C, 1, 1))
    no_bias = b.op("Sub", base, b.constant(b.rng.standard_normal((1, C, 1, 1)).astype(np.float32) * 0.1))
    scaled = b.op("Mul", no_bias, b.constant((c - 1).astype(np.float32)))
    b.output(b.op("Relu", b.op("Add", base, b.op("Add", scaled, b.op("Mul", lora, b.constant(c.astype(np.float32)))))))
    optimize_and_check(b.model(), {"Conv": 1, "Relu": 1})


def test_dora_base_read_outside_the_join_stays():
    """The base output is also a graph output's input: it is no join's own, its Linear stays as it is."""
    model = linear_adapter(32, dora=True, read_outside=True)
    optimized, report = optimize_and_check(model)
    (weight,) = [n.input[1] for n in model.graph.node if n.name == "base"]
    assert len([n for n in optimized.graph.node if n.op_type == "MatMul" and n.input[1] == weight]) == 1
    assert "read-elsewhere" in codes(report)


def test_a_branch_through_a_tensor_another_operand_needs_is_not_merged():
    """y = c1·t + conv2(x) + t·t with t = conv1(x): t is read by the join's nodes only, but merging c1·conv1
    with conv2 would take conv1 away from t·t (no linear op): nothing merges, nothing breaks."""
    b = GraphBuilder(33)
    x = b.input("x", ["N", 4, 8, 8])
    t = b.conv(x, C, 3)
    scaled = b.op("Mul", t, b.constant(b.rng.uniform(0.5, 1.5, (1, C, 1, 1)).astype(np.float32)))
    y = b.op("Add", b.op("Add", scaled, b.conv(x, C, 3)), b.op("Mul", t, t))
    b.output(y)
    optimize_and_check(b.model(), {"Conv": 2, "Mul": 2, "Add": 2})


def test_a_tensor_read_twice_inside_is_counted_once():
    """y = A(t) + B(t) + D(x) with t = P(x), P a 3x3 bottleneck 16 → 8, A and B 1x1 8 → 16, D 1x1: followed
    back through t, every branch is one 3x3 conv of x (16·16·9 = 2304 multiply-adds per pixel), less than P
    counted once per branch (2 · (1152 + 128) + 256) but more than the graph computes (1152 + 2·128 + 256):
    not merged so. A and B merge on t, D stays."""
    b = GraphBuilder(34)
    x = b.input("x", ["N", 16, 8, 8])
    t = b.conv(x, 8, 3)
    y = b.op("Add", b.op("Add", b.conv(t, 16, 1), b.conv(t, 16, 1)), b.conv(x, 16, 1))
    b.output(y)
    optimize_and_check(b.model(), {"Conv": 3, "Add": 1})
