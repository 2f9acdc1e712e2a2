"""fold_conv_affine: a Conv (or Gemm) followed by a per-channel affine op becomes one Conv (Gemm).

Before:  X → Conv(W, b) → T → BatchNormalization(γ, β, μ, σ², ε) → Y
         (or T · c, T / c, T + c, T − c, c − T, −T with c a scalar or per-channel constant)
After:   X → Conv(W', b') → Y

Conditions:
  1. T is read by the affine op only, and is not a graph output.
  2. W (and b) are constants read by this Conv only (see lift.conv).
  3. A BatchNormalization is in inference mode with constant parameters; an
     elementwise constant broadcasts along the channel axis only (shape (),
     (C,1,1) or (1,C,1,1) for a 2-D conv), so the output shape is unchanged.

Formula, per output channel c, with the op as ``y = s·t + h``
(BatchNormalization: s = γ / √(σ² + ε), h = β − μ·s):
  W'[c] = W[c] · s[c]        b'[c] = b[c] · s[c] + h[c]
Any kernel rank (1-D, 2-D, 3-D), strides, pads, dilations and groups; a Gemm
is a conv with no spatial axes (a Linear followed by BatchNorm1d). After a
merge_parallel this also folds a BatchNormalization or a layer scale applied
to the sum of branches (RepViT, FastViT).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from onnxrep import kernels, lift
from onnxrep.graph import Context, is_op, producer
from onnxrep.rules import Finding, PairMatch, Rule
from onnxrep.spec import Refusal

NAME = "fold_conv_affine"


@dataclass(frozen=True, eq=False)
class ConvAffine(PairMatch):
    """first: the Conv (or Gemm); second: the affine op."""

    lifted: lift.LiftedConv
    affine: lift.Affine


def find(ctx: Context) -> Iterator[ConvAffine | Finding]:
    for op in ctx.nodes():
        if not is_op(op, "BatchNormalization", *lift.ELEMENTWISE):
            continue
        conv = next((producer(t) for t in op.inputs if is_op(producer(t), *lift.LINEAR_OPS)), None)
        if conv is None:
            continue
        lifted = lift.conv(conv, ctx)
        rank = lifted.spec.weight.ndim if not isinstance(lifted, Refusal) else None
        affine = lift.affine(op, ctx, rank)
        if affine is None or (not isinstance(affine, Refusal) and affine.source is not conv.outputs[0]):
            continue  # e.g. an Add of two convs: a join, merge_parallel's business
        where = f"{conv.name} → {op.name}"
        if not ctx.private(conv.outputs[0], op):
            yield Finding(NAME, where, f"the conv output is also read by {ctx.readers(conv.outputs[0], op)}")
            continue
        refusal = next((r for r in (lifted, affine) if isinstance(r, Refusal)), None)
        if refusal is not None:
            yield Finding(NAME, where, refusal.reason)
        elif affine.scale.size not in (1, lifted.spec.out_channels) or \
                affine.shift.size not in (1, lifted.spec.out_channels):
            yield Finding(NAME, where, f"{op.op} has {max(affine.scale.size, affine.shift.size)} channels, "
                                       f"the conv {lifted.spec.out_channels}")
        else:
            yield ConvAffine(conv, op, lifted, affine)


def rewrite(ctx: Context, match: ConvAffine) -> None:
    spec = match.lifted.spec
    scale, shift = match.affine.per_channel(spec.out_channels)
    weight, bias = kernels.scale_conv(spec.weight, spec.bias, scale, shift)
    source, output = match.first.inputs[0], match.second.outputs[0]
    ctx.detach(match.nodes)
    ctx.emit_conv(match.first.name, source, replace(spec, weight=weight, bias=bias), output,
                  match.lifted.dtype, with_bias=match.lifted.has_bias or bool(shift.any()))


RULE = Rule(NAME, "Conv → BatchNormalization or Mul/Div/Add/Sub/Neg by a per-channel constant → one Conv",
            find, rewrite)
