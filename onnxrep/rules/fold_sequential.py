"""fold_sequential: two chained linear ops, one of them pointwise, become one Conv (or Gemm).

Before:  X → Conv_a (1x1) → T → Conv_b (kxk)  → Y         (DBB's 1x1 → kxk branch)
         X → Conv_a (kxk) → T → Conv_b (1x1)  → Y
         X → Conv_a (1x1) → T → AveragePool   → Y         (DBB's 1x1 → avg branch)
         X → BatchNormalization (or ·γ, +β) → T → Gemm / unpadded Conv → Y   (BN1d → Linear)
After:   X → Conv (kxk) → Y          (a Gemm for Gemm chains: a conv with no spatial axes)

Conditions (spec.merge_sequential holds the algebra):
  1. T is read by the second op only, and is not a graph output.
  2. Weights are constants read by their conv only; an AveragePool counts
     its pads (count_include_pad=1) or has none, and no ceil_mode.
  3. The 1x1 op has no pads; a first 1x1 op has stride 1; if the second op
     pads, the first conv's bias is zero (zero padding of T is not the bias
     the merged conv would see).
  4. The merged conv costs no more multiply-adds than the two it replaces
     (a 1x1 bottleneck widening into a 3x3 would be slower: not merged).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import lift, spec
from onnxrep.graph import Context, is_op, producer
from onnxrep.rules import Finding, PairMatch, Rule
from onnxrep.spec import ConvSpec, Refusal

NAME = "fold_sequential"
OPS = (*lift.LINEAR_OPS, "AveragePool")
AFFINE_OPS = ("BatchNormalization", *lift.ELEMENTWISE)


@dataclass(frozen=True, eq=False)
class Chain(PairMatch):
    source: gs.Tensor
    merged: ConvSpec
    dtype: np.dtype


def _lift_affine_first(first: gs.Node, second: gs.Node, ctx: Context):
    """A per-channel affine followed by a Conv/Gemm: the affine as a diagonal spec of its input."""
    lifted = lift.conv(second, ctx)
    if isinstance(lifted, Refusal):
        return lifted
    affine = lift.affine(first, ctx, lifted.spec.weight.ndim)
    if affine is None:
        return None
    if isinstance(affine, Refusal):
        return affine
    channels = lifted.spec.in_channels
    if {affine.scale.size, affine.shift.size} - {1, channels}:
        return Refusal(f"{first.op} has other channels than the {channels} {second.name} reads")
    scale, shift = affine.per_channel(channels)
    return (affine.source, spec.diagonal(scale, shift, lifted.spec.spatial_dims, cost=channels),
            lifted.spec, lifted.dtype)


def _lift_pair(first: gs.Node, second: gs.Node, ctx: Context):
    """Both ops as specs; an AveragePool takes its channel count from the conv beside it."""
    if is_op(first, *AFFINE_OPS):
        return _lift_affine_first(first, second, ctx)
    convs = {id(n): lift.conv(n, ctx) for n in (first, second) if is_op(n, *lift.LINEAR_OPS)}
    for lifted in convs.values():
        if isinstance(lifted, Refusal):
            return lifted
    dtype = next(iter(convs.values())).dtype
    first_spec = convs[id(first)].spec if id(first) in convs else None
    second_spec = convs[id(second)].spec if id(second) in convs else None
    if first_spec is None:
        first_spec = lift.average_pool(first, second_spec.in_channels)
    if second_spec is None:
        second_spec = lift.average_pool(second, first_spec.out_channels)
    for s in (first_spec, second_spec):
        if isinstance(s, Refusal):
            return s
    return first.inputs[0], first_spec, second_spec, dtype


def find(ctx: Context) -> Iterator[Chain | Finding]:
    for second in ctx.nodes():
        if not is_op(second, *OPS) or not second.inputs:
            continue
        first = producer(second.inputs[0])
        linear = [is_op(n, *lift.LINEAR_OPS) for n in (first, second)]
        if not (is_op(first, *OPS) and any(linear) or is_op(first, *AFFINE_OPS) and linear[1]):
            continue
        where = f"{first.name} → {second.name}"
        if not ctx.private(second.inputs[0], second):
            yield Finding(NAME, where, f"the intermediate is also read by {ctx.readers(second.inputs[0], second)}")
            continue
        pair = _lift_pair(first, second, ctx)
        if pair is None:
            continue  # an Add of two computed tensors: not an affine
        if isinstance(pair, Refusal):
            yield Finding(NAME, where, pair.reason)
            continue
        source, first_spec, second_spec, dtype = pair
        if not (spec.is_unit(first_spec) or spec.is_pointwise(second_spec)):
            continue  # kxk → kxk: no re-parameterization candidate, nothing to report
        merged = spec.merge_sequential(first_spec, second_spec)
        if isinstance(merged, Refusal):
            yield Finding(NAME, where, merged.reason)
        else:
            yield Chain(first, second, source, merged, dtype)


def rewrite(ctx: Context, match: Chain) -> None:
    source, output = match.source, match.second.outputs[0]
    name = match.second.name if is_op(match.second, *lift.LINEAR_OPS) else match.first.name
    ctx.detach(match.nodes)
    ctx.emit_conv(name, source, match.merged, output, match.dtype, with_bias=bool(np.any(match.merged.bias)))


RULE = Rule(NAME, "Conv→Conv or Conv↔AveragePool chains with a 1x1 end → one Conv, when exact and not costlier",
            find, rewrite)
