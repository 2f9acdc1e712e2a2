"""fold_conv_affine: a Conv (or Gemm) followed by a per-channel affine op becomes one Conv (Gemm).

Before:  X → Conv(W, b) → T → BatchNormalization(γ, β, μ, σ², ε) → Y
         (or T · c, T / c, T + c, T − c, c − T, −T with c a scalar or per-channel constant)
After:   X → Conv(W', b') → Y

Conditions:
  1. T is read by the affine op only (and by Shape/Size nodes, which then read
     Y: the affine keeps the shape), and is not a graph output.
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

from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels
from onnxrep.ir import lower
from onnxrep.ir.graph import Context, constant_value, is_op, producer
from onnxrep.ir.lift import AFFINE_OPS, Hint, Lifted, lift, lift_linear
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

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


def _nothing_to_fold(ctx: Context, op: gs.Node) -> None:
    """Raises why an affine with no linear op before it stays, where a reader of the report looks for
    one: a BatchNormalization (a deploy graph has none), or any affine whose only link to a linear op
    is a Cast. Leaves to their own rules an affine after a Concat (fold_concat_affine) and after a
    DequantizeLinear (quantized_branches says it once for the model)."""
    computed = [t for t in op.inputs if constant_value(t) is None]
    if not computed or (len(computed) > 1 and not is_op(op, "BatchNormalization")):
        return  # constants (fold_constants' business), or a product of two computed tensors: no affine
    data = computed[0]
    before = producer(data)
    if is_op(before, "Concat", "DequantizeLinear"):
        return
    # a Cast read by this op only, of a linear op's output read by the Cast only: all that stands between
    cast_of = producer(before.inputs[0]) if is_op(before, "Cast") and ctx.private(data, op) \
        and ctx.private(before.inputs[0], before) else None
    linear, refused = lift_linear(cast_of, ctx) if cast_of is not None else (None, None)
    if linear is not None or refused is not None:
        raise Refused("no-linear-op", f"{op.name} reads Cast {before.name} of {cast_of.op} {cast_of.name}'s "
                                      f"output: the Cast stands between them", f"{cast_of.name} → {op.name}")
    if is_op(op, "BatchNormalization"):
        what = f"{before.op} {before.name}" if before is not None else f"the graph input '{data.name}'"
        raise Refused("no-linear-op", f"{op.name} reads {what}, no Conv, Gemm or MatMul: nothing to fold it into")


def match(ctx: Context, op: gs.Node) -> ConvAffine | None:
    conv = next((p for t in op.inputs if (p := producer(t)) is not None and p.op in ("Conv", "Gemm", "MatMul", "Add")
                 and p is not op), None)
    linear, refused = lift_linear(conv, ctx) if conv is not None else (None, None)
    if linear is None and refused is None:
        return _nothing_to_fold(ctx, op)
    hint = Hint(linear.layout, linear.spec.out_channels) if linear is not None else Hint()
    where = f"{conv.name} → {op.name}"
    try:
        affine, affine_refused = lift(op, ctx, hint), None
    except Refused as refusal:
        affine, affine_refused = None, refusal
    if affine is None and affine_refused is None or affine is not None and (
            affine.linear or affine.source is not conv.outputs[0]):
        return None  # e.g. an Add of two convs: a join, merge_parallel's business
    if not ctx.private(conv.outputs[0], op, measured=True):
        raise Refused("read-elsewhere", f"the conv output is also read by {ctx.readers(conv.outputs[0], op)}", where)
    for refusal in (refused, affine_refused):
        if refusal is not None:
            refusal.where = where
            raise refusal
    if affine.layout != linear.layout:
        raise Refused("not-per-channel", f"{op.op} is not per-channel: it runs along axis {affine.layout.axis} of "
                                f"{affine.layout.rank}, the {linear.nodes[0].op}'s channels are axis "
                                f"{linear.layout.axis} of {linear.layout.rank}", where)
    with_bias = linear.has_bias or affine.has_bias
    if lower.node_count(linear.layout, linear.spec, with_bias) >= len(linear.nodes) + 1:
        return None  # a MatMul and the Add that is its bias: already as small as it gets
    return ConvAffine(linear, affine)


def build(b: Builder, m: ConvAffine) -> Replacement:
    linear = m.linear
    spec = linear.spec
    scale, shift = m.affine.spec.weight.reshape(-1), m.affine.spec.bias
    weight, bias = kernels.scale_conv(spec.weight, spec.bias, scale, shift)
    output = m.affine.nodes[-1].outputs[0]
    lower.emit(b, linear.nodes[0].name, linear.source, replace(spec, weight=weight, bias=bias), linear.layout, output,
               linear.dtype, with_bias=linear.has_bias or m.affine.has_bias)
    return b.replacement(m.nodes, same_shape=((linear.nodes[-1].outputs[0], output),))


RULE = Rule(NAME, "Conv/Gemm/MatMul → BatchNormalization or Mul/Div/Add/Sub/Neg by a per-channel constant "
                  "→ one Conv/Gemm/MatMul", AFFINE_OPS, match, build)
