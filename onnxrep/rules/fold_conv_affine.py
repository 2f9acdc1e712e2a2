"""fold_conv_affine: a Conv (or Gemm) followed by a per-channel affine op becomes one Conv (Gemm).

Before:  X → Conv(W, b) → T → BatchNormalization(γ, β, μ, σ², ε) → Y
         (or T · c, T / c, T + c, T − c, c − T, −T with c a scalar or per-channel constant)
After:   X → Conv(W', b') → Y

Conditions:
  1. T is read by the affine op only, and is not a graph output.
  2. W (and b) are constants read by this Conv only (see lift.lift).
  3. A BatchNormalization is in inference mode with constant parameters; an
     elementwise constant broadcasts along the channel axis only (shape (),
     (C,1,1) or (1,C,1,1) for a 2-D conv; (C,) for a MatMul's channels-last
     output: a layer scale), so the output shape is unchanged.
  4. The result has fewer nodes (a MatMul and the Add of its bias stay two).

Formula, per output channel c, with the op as ``y = s·t + h``
(BatchNormalization: s = γ / √(σ² + ε), h = β − μ·s):
  W'[c] = W[c] · s[c]        b'[c] = b[c] · s[c] + h[c]
Any kernel rank (1-D, 2-D, 3-D), strides, pads, dilations and groups; a Gemm
or a MatMul by a constant is a conv with no spatial axes (a Linear followed by
BatchNorm1d; lowered back as Gemm, or MatMul + Add on channels-last tensors). After a
merge_parallel this also folds a BatchNormalization or a layer scale applied
to the sum of branches (RepViT, FastViT).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from onnxrep.algebra import kernels
from onnxrep.algebra.spec import Refusal
from onnxrep.ir import lower
from onnxrep.ir.graph import Context, is_op, producer
from onnxrep.ir.lift import AFFINE_OPS, Hint, Lifted, lift
from onnxrep.rules import Finding, Rule

NAME = "fold_conv_affine"


@dataclass(frozen=True, eq=False)
class ConvAffine:
    """linear: the Conv, Gemm or MatMul (+ bias); affine: the op after it, lifted on its layout."""

    linear: Lifted
    affine: Lifted

    @property
    def output(self) -> str:
        return self.affine.nodes[-1].outputs[0].name

    @property
    def nodes(self) -> tuple:
        return self.linear.nodes + self.affine.nodes


def _match(op, ctx: Context) -> ConvAffine | Finding | None:
    conv = next((p for t in op.inputs if (p := producer(t)) is not None and p.op in ("Conv", "Gemm", "MatMul", "Add")
                 and p is not op), None)
    linear = lift(conv, ctx) if conv is not None else None
    if linear is None or (isinstance(linear, Lifted) and not linear.linear):
        return None
    if isinstance(linear, Refusal) and conv.op == "Add":
        return None  # an Add that is no MatMul's bias is no linear op, refused or not
    hint = Hint(linear.layout, linear.spec.out_channels) if isinstance(linear, Lifted) else Hint()
    affine = lift(op, ctx, hint)
    if affine is None or (isinstance(affine, Lifted) and (affine.linear or affine.source is not conv.outputs[0])):
        return None  # e.g. an Add of two convs: a join, merge_parallel's business
    where = f"{conv.name} → {op.name}"
    if not ctx.private(conv.outputs[0], op):
        return Finding(NAME, where, f"the conv output is also read by {ctx.readers(conv.outputs[0], op)}")
    refusal = next((r for r in (linear, affine) if isinstance(r, Refusal)), None)
    if refusal is not None:
        return Finding(NAME, where, refusal.reason)
    if affine.layout != linear.layout:
        return Finding(NAME, where, f"{op.op} is not per-channel: it runs along axis {affine.layout.axis} of "
                                    f"{affine.layout.rank}, the {linear.nodes[0].op}'s channels are axis "
                                    f"{linear.layout.axis} of {linear.layout.rank}")
    with_bias = linear.has_bias or affine.has_bias
    if lower.node_count(linear.layout, linear.spec, with_bias) >= len(linear.nodes) + 1:
        return None  # a MatMul and the Add that is its bias: already as small as it gets
    return ConvAffine(linear, affine)


def find(ctx: Context) -> Iterator[ConvAffine | Finding]:
    for op in ctx.nodes():
        if is_op(op, *AFFINE_OPS):
            match = _match(op, ctx)
            if match is not None:
                yield match


def rewrite(ctx: Context, match: ConvAffine) -> None:
    linear = match.linear
    spec = linear.spec
    scale, shift = match.affine.spec.weight.reshape(-1), match.affine.spec.bias
    weight, bias = kernels.scale_conv(spec.weight, spec.bias, scale, shift)
    output = match.affine.nodes[-1].outputs[0]
    name = linear.nodes[0].name
    ctx.detach(match.nodes)
    lower.emit(ctx, name, linear.source, replace(spec, weight=weight, bias=bias), linear.layout, output,
               linear.dtype, with_bias=linear.has_bias or match.affine.has_bias)


RULE = Rule(NAME, "Conv/Gemm/MatMul → BatchNormalization or Mul/Div/Add/Sub/Neg by a per-channel constant "
                  "→ one Conv/Gemm/MatMul", find, rewrite)
