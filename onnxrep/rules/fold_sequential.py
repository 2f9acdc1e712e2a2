"""fold_sequential: two chained linear ops, one of them pointwise, become one Conv (Gemm, MatMul).

Before:  X → Conv_a (1x1) → T → Conv_b (kxk)  → Y         (DBB's 1x1 → kxk branch)
         X → Conv_a (kxk) → T → Conv_b (1x1)  → Y
         X → Conv_a (1x1) → T → AveragePool   → Y         (DBB's 1x1 → avg branch)
         X → BatchNormalization (or ·γ, +β) → T → Conv / Gemm / MatMul → Y  (NextViT's pre-BN, BN1d → Linear)
After:   X → Conv (kxk) → Y          (a Gemm or MatMul for linear chains: a conv with no spatial axes)

Conditions (spec.merge_sequential holds the algebra):
  1. T is read by the second op only, and is not a graph output.
  2. Weights are constants read by their conv only; an AveragePool counts
     its pads (count_include_pad=1) or has none, and no ceil_mode.
  3. The 1x1 op has no pads; a first 1x1 op has stride 1; if the second op
     pads, the first conv's bias is zero (zero padding of T is not the bias
     the merged conv would see: a pre-BN's shift before a padded conv stays).
     An affine first runs along the channel axis the second op reads.
  4. The merged conv costs no more multiply-adds than the two it replaces
     (a 1x1 bottleneck widening into a 3x3 would be slower: not merged).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec, Refusal
from onnxrep.ir import lower
from onnxrep.ir.graph import Context, is_op, producer
from onnxrep.ir.lift import AFFINE_OPS, LINEAR_OPS, Hint, Lifted, lift
from onnxrep.rules import Finding, PairMatch, Rule

NAME = "fold_sequential"
OPS = (*LINEAR_OPS, "AveragePool")


@dataclass(frozen=True, eq=False)
class Chain(PairMatch):
    lifted: Lifted  # the second op, whose layout the merged one keeps
    merged: ConvSpec
    source: object
    dtype: np.dtype


def _lift_pair(first, second, ctx: Context) -> tuple[Lifted, Lifted] | Refusal | None:
    """Both ops lifted; the one without weights (an AveragePool, an affine) takes its channels and
    layout from the linear op beside it."""
    if is_op(second, *LINEAR_OPS):
        after = lift(second, ctx)
        if not isinstance(after, Lifted):
            return after
        before = lift(first, ctx, Hint(after.layout, after.spec.in_channels))
    else:
        before = lift(first, ctx)
        if not isinstance(before, Lifted):
            return before
        after = lift(second, ctx, Hint(before.layout, before.spec.out_channels))
    if before is None or after is None:
        return None
    for lifted in (before, after):
        if isinstance(lifted, Refusal):
            return lifted
    if before.layout != after.layout:
        return Refusal(f"{first.op} runs along axis {before.layout.axis} of {before.layout.rank}, "
                       f"{second.op} reads axis {after.layout.axis} of {after.layout.rank}")
    return before, after


def _candidates(second) -> bool:
    first = producer(second.inputs[0]) if is_op(second, *OPS) and second.inputs else None
    linear = [is_op(n, *LINEAR_OPS) for n in (first, second)]
    return is_op(first, *OPS) and any(linear) or is_op(first, *AFFINE_OPS) and linear[1]


def find(ctx: Context) -> Iterator[Chain | Finding]:
    for second in ctx.nodes():
        if not _candidates(second):
            continue
        first = producer(second.inputs[0])
        where = f"{first.name} → {second.name}"
        pair = _lift_pair(first, second, ctx)
        if pair is None or (isinstance(pair, tuple) and pair[0].nodes != (first,)):
            continue  # an Add of two computed tensors (not an affine), or a MatMul's bias: not a chain of two
        if not ctx.private(second.inputs[0], second):
            yield Finding(NAME, where, f"the intermediate is also read by {ctx.readers(second.inputs[0], second)}")
            continue
        if isinstance(pair, Refusal):
            yield Finding(NAME, where, pair.reason)
            continue
        before, after = pair
        if not (spec.is_unit(before.spec) or spec.is_pointwise(after.spec)):
            continue  # kxk → kxk: no re-parameterization candidate, nothing to report
        merged = spec.merge_sequential(before.spec, after.spec)
        if isinstance(merged, Refusal):
            yield Finding(NAME, where, merged.reason)
        else:
            yield Chain(first, second, after, merged, before.source, before.dtype or after.dtype)


def rewrite(ctx: Context, match: Chain) -> None:
    output = match.second.outputs[0]
    name = match.second.name if is_op(match.second, *LINEAR_OPS) else match.first.name
    ctx.detach(match.nodes)
    lower.emit(ctx, name, match.source, match.merged, match.lifted.layout, output, match.dtype,
               with_bias=bool(np.any(match.merged.bias)))


RULE = Rule(NAME, "Conv→Conv or Conv↔AveragePool chains with a 1x1 end, or an affine (BN) before a "
                  "Conv/Gemm/MatMul → one op, when exact and not costlier", find, rewrite)
