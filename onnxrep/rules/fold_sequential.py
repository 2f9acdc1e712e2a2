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

from dataclasses import dataclass

import numpy as np

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir import lower
from onnxrep.ir.graph import Context, is_op, producer
from onnxrep.ir.lift import AFFINE_OPS, LINEAR_OPS, Hint, Lifted, lift
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, PairMatch, Replacement, Rule

NAME = "fold_sequential"
OPS = (*LINEAR_OPS, "AveragePool")


@dataclass(frozen=True, eq=False)
class Chain(PairMatch):
    lifted: Lifted  # the second op, whose layout the merged one keeps
    merged: ConvSpec
    source: object
    dtype: np.dtype


def _lift_pair(first, second, ctx: Context) -> tuple[Lifted, Lifted] | None:
    """Both ops lifted; the one without weights (an AveragePool, an affine) takes its channels and
    layout from the linear op beside it. None when either is no such op; raises Refused."""
    if is_op(second, *LINEAR_OPS):
        after = lift(second, ctx)
        if after is None:
            return None
        before = lift(first, ctx, Hint(after.layout, after.spec.in_channels))
    else:
        before = lift(first, ctx)
        if before is None:
            return None
        after = lift(second, ctx, Hint(before.layout, before.spec.out_channels))
    if before is None or after is None:
        return None
    if before.layout != after.layout:
        raise Refused("layout", f"{first.op} runs along axis {before.layout.axis} of {before.layout.rank}, "
                                f"{second.op} reads axis {after.layout.axis} of {after.layout.rank}")
    return before, after


def _candidates(second) -> bool:
    first = producer(second.inputs[0]) if is_op(second, *OPS) and second.inputs else None
    linear = [is_op(n, *LINEAR_OPS) for n in (first, second)]
    return is_op(first, *OPS) and any(linear) or is_op(first, *AFFINE_OPS) and linear[1]


def match(ctx: Context, second) -> Chain | None:
    if not _candidates(second):
        return None
    first = producer(second.inputs[0])
    where = f"{first.name} → {second.name}"
    try:
        pair, refused = _lift_pair(first, second, ctx), None
    except Refused as refusal:
        pair, refused = None, refusal
    if refused is None and (pair is None or pair[0].nodes != (first,)):
        return None  # an Add of two computed tensors (not an affine), or a MatMul's bias: not a chain of two
    if not ctx.private(second.inputs[0], second):
        raise Refused("read-elsewhere", f"the intermediate is also read by {ctx.readers(second.inputs[0], second)}",
                      where)
    if refused is not None:
        refused.where = where
        raise refused
    before, after = pair
    if not (spec.is_unit(before.spec) or spec.is_pointwise(after.spec)):
        return None  # kxk → kxk: no re-parameterization candidate, nothing to report
    try:
        merged = spec.merge_sequential(before.spec, after.spec)
    except Refused as refusal:
        refusal.where = where
        raise
    return Chain(first, second, after, merged, before.source, before.dtype or after.dtype)


def build(b: Builder, m: Chain) -> Replacement:
    name = m.second.name if is_op(m.second, *LINEAR_OPS) else m.first.name
    lower.emit(b, name, m.source, m.merged, m.lifted.layout, m.second.outputs[0], m.dtype,
               with_bias=bool(np.any(m.merged.bias)))
    return b.replacement(m.nodes)


RULE = Rule(NAME, "Conv→Conv or Conv↔AveragePool chains with a 1x1 end, or an affine (BN) before a "
                  "Conv/Gemm/MatMul → one op, when exact and not costlier", OPS, match, build)
