"""fold_concat_affine: a per-channel affine after a Concat folds, segment by segment, into the linear
op that produced each part.

Before:  X0 → Conv_0 → T0 ┐
         X1 → Conv_1 → T1 ├ Concat(channel axis) → T → BatchNormalization(γ, β, μ, σ², ε) → Y
         X2 → Relu   → T2 ┘       (or T · c, T / c, T + c, T − c, c − T, −T: c scalar or per channel)
After:   X0 → Conv_0' → T0' ┐
         X1 → Conv_1' → T1' ├ Concat → Y
         X2 → Relu → T2 → BatchNormalization(γ[s2], β[s2], μ[s2], σ²[s2], ε) → T2' ┘
(YOLOv5's BottleneckCSP ``bn(cat(cv3(m(cv1(x))), cv2(x)))``, DenseNet-style aggregations.)

Each channel of the affine's output depends on one channel of the Concat, which
is one channel of one part: per segment this is fold_conv_affine.

Conditions:
  1. T is read by the affine only (and by Shape/Size nodes, which then read
     Y), and is not a graph output.
  2. The affine runs along the Concat's axis (a BatchNormalization: axis 1),
     or is by scalars (then any axis).
  3. A part folds when it is read by the Concat only and its producer is a
     Conv, Gemm or MatMul (+ bias Add) whose output channels are that axis,
     with constant weights read by it only (lift.lift).
  4. At least one part folds. Each other part keeps the affine on its own
     segment: the same op with its parameters sliced, bit for bit the values
     it computed before. The result has no more nodes than before: at most one
     such segment (or one MatMul that gains a bias Add).
  5. Every part's channel count is known (its shape, its weight, or the
     remainder of the affine's).

Formula, per segment [o, o + C) of a folded part with the op as ``y = s·t + h``
(BatchNormalization: s = γ / √(σ² + ε), h = β − μ·s):
  W'[c] = W[c] · s[o + c]        b'[c] = b[c] · s[o + c] + h[o + c]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels
from onnxrep.ir import lower
from onnxrep.ir.affine import Affine, affine
from onnxrep.ir.graph import Context, constant_value, is_op, producer
from onnxrep.ir.lift import AFFINE_OPS, LINEAR_OPS, Layout, Lifted, lift_linear
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "fold_concat_affine"


@dataclass(frozen=True, eq=False)
class Part:
    """One operand of the Concat: its channels [start, stop) of the Concat's axis (unused for an
    affine by scalars: every part takes all of it), and its producer as a linear op when the affine
    folds into it."""

    tensor: gs.Tensor
    start: int
    stop: int
    linear: Lifted | None


@dataclass(frozen=True, eq=False)
class ConcatAffine:
    concat: gs.Node
    op: gs.Node  # the affine
    affine: Affine
    parts: tuple[Part, ...]

    @property
    def output(self) -> str:
        return self.op.outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.concat, self.op) + tuple(n for p in self.parts if p.linear for n in p.linear.nodes)


def _producer_as_linear(tensor: gs.Tensor, ctx: Context) -> tuple[Lifted | None, Refused | None]:
    """The part's producer as a linear op, or why a Conv, Gemm or MatMul there is not one (see
    lift_linear); (None, None) for any other op."""
    node = producer(tensor)
    return lift_linear(node, ctx) if is_op(node, *LINEAR_OPS, "Add") else (None, None)


def _channels(tensor: gs.Tensor, axis: int, ctx: Context) -> int | None:
    shape = ctx.dims(tensor)
    return shape[axis] if shape is not None and len(shape) > axis else None


def match(ctx: Context, op: gs.Node) -> ConcatAffine | None:
    computed = [t for t in op.inputs if constant_value(t) is None]
    if not computed or len(computed) > 1 and not is_op(op, "BatchNormalization"):
        return None  # constants, or an elementwise op of two computed tensors: no affine
    concat = producer(op.inputs[0] if is_op(op, "BatchNormalization") else computed[0])
    if not is_op(concat, "Concat") or len(concat.inputs) < 2:
        return None
    where = f"{concat.name} → {op.name}"
    candidates = [_producer_as_linear(t, ctx) for t in concat.inputs]
    if not any(linear or refused for linear, refused in candidates):
        if is_op(op, "BatchNormalization"):
            raise Refused("no-linear-op", f"{op.name} reads Concat {concat.name}, none of whose parts comes "
                                          f"from a Conv, Gemm or MatMul: nothing to fold it into", where)
        return None
    shape = ctx.dims(concat.outputs[0]) or next((s for t in concat.inputs if (s := ctx.dims(t))), None)
    rank = len(shape) if shape else None
    try:
        found = affine(op, ctx, rank)
        if found is None or found.source is not concat.outputs[0]:
            return None  # an Add of two computed tensors: a join
        if not ctx.private(concat.outputs[0], op, measured=True):
            raise Refused("read-elsewhere", f"the Concat output is also read by "
                                            f"{ctx.readers(concat.outputs[0], op)}")
        if rank is None:
            raise Refused("shape-unknown", f"the rank of {concat.name}'s output is unknown")
        axis = int(concat.attrs.get("axis", 1)) % rank
        if found.axis is not None and found.axis != axis:
            raise Refused("layout", f"{concat.name} joins axis {axis}; {op.name} runs along axis {found.axis}")
        parts = _parts(concat, candidates, found, axis, rank, ctx, where)
        _check_nodes(parts, found, op, concat)
    except Refused as refusal:
        refusal.where = refusal.where or where
        raise
    return ConcatAffine(concat, op, found, parts)


def _parts(concat: gs.Node, candidates: list, found: Affine, axis: int, rank: int, ctx: Context,
           where: str) -> tuple[Part, ...]:
    """The parts with their segments; the linear ones that fold. Refusals of the linear ones that do
    not are notes when another part folds, else the first is raised."""
    scalar = found.axis is None
    refusals, folding, sizes = [], [], []
    for tensor, (candidate, refused) in zip(concat.inputs, candidates):
        linear = None
        if refused is not None:
            refusals.append(refused)
        elif candidate is not None:
            name = candidate.nodes[0].name
            if sum(t is tensor for t in concat.inputs) > 1:
                refusals.append(Refused("read-elsewhere", f"{name}'s output is read twice by {concat.name}"))
            elif not ctx.private(tensor, concat):
                refusals.append(Refused("read-elsewhere", f"{name}'s output is also read by "
                                                          f"{ctx.readers(tensor, concat)}"))
            elif not scalar and candidate.layout != Layout(rank, axis):
                refusals.append(Refused("layout", f"{name}'s channels are axis {candidate.layout.axis} of "
                                                  f"{candidate.layout.rank}, the Concat joins axis {axis} of {rank}"))
            else:
                linear = candidate
        folding.append(linear)
        sizes.append(linear.spec.out_channels if linear is not None and not scalar else _channels(tensor, axis, ctx))
    for refusal in refusals:
        refusal.where = where
    if not any(folding):
        for refusal in refusals[1:]:
            ctx.note(refusal)
        raise refusals[0]
    for refusal in refusals:
        ctx.note(refusal)
    if not scalar:
        sizes = _complete(sizes, found.channels, concat)
    parts, start = [], 0
    for tensor, linear, size in zip(concat.inputs, folding, sizes):
        stop = start + (size or 0)
        parts.append(Part(tensor, start, stop, linear))
        start = stop
    return tuple(parts)


def _complete(sizes: list[int | None], total: int | None, concat: gs.Node) -> list[int]:
    """Every part's channel count, one unknown count taken as the remainder of the affine's."""
    unknown = [i for i, s in enumerate(sizes) if s is None]
    if len(unknown) == 1 and total is not None:
        sizes[unknown[0]] = total - sum(s for s in sizes if s is not None)
    elif unknown:
        raise Refused("shape-unknown", f"the channel counts of {len(unknown)} parts of {concat.name} are unknown")
    if total is not None and sum(sizes) != total:
        raise Refused("not-aligned", f"{concat.name}'s parts have {sum(sizes)} channels, the affine {total}")
    return sizes


def _check_nodes(parts: tuple[Part, ...], found: Affine, op: gs.Node, concat: gs.Node) -> None:
    """Refuses when splitting would leave more nodes than the one affine it replaces."""
    kept = [p for p in parts if p.linear is None]
    grown = [p for p in parts if p.linear is not None and lower.node_count(
        p.linear.layout, p.linear.spec, p.linear.has_bias or _has_shift(found, p)) > len(p.linear.nodes)]
    if len(kept) + len(grown) > 1:
        why = [f"{len(kept)} parts of {concat.name} would keep a segment of {op.name} "
               f"({', '.join(p.tensor.name for p in kept)})"] if kept else []
        why += [f"{len(grown)} MatMuls would gain a bias Add"] if grown else []
        raise Refused("costlier", f"{' and '.join(why)}: {len(kept) + len(grown)} nodes where there is one")


def _has_shift(found: Affine, part: Part) -> bool:
    shift = np.asarray(found.shift).reshape(-1)
    return bool(shift.any() if shift.size == 1 else shift[part.start:part.stop].any())


def _segment(found: Affine, part: Part) -> tuple[np.ndarray, np.ndarray]:
    """The part's scale and shift, per output channel of its linear op."""
    if found.axis is None:
        return found.per_channel(part.linear.spec.out_channels)
    scale, shift = found.per_channel(found.channels)
    return scale[part.start:part.stop], shift[part.start:part.stop]


def build(b: Builder, m: ConcatAffine) -> Replacement:
    operands, renamed = [], []
    for part in m.parts:
        if part.linear is not None:
            operands.append(_fold(b, m, part))
            renamed.append((part.tensor.name, operands[-1].name))
        else:
            operands.append(_keep(b, m, part))
    output = m.op.outputs[0]
    b.node("Concat", m.concat.name, operands, [output], dict(m.concat.attrs))
    return b.replacement(m.nodes, same_shape=((m.concat.outputs[0], output),), renamed=tuple(renamed))


def _fold(b: Builder, m: ConcatAffine, part: Part) -> gs.Variable:
    """The part's linear op with its segment folded in, writing a fresh tensor (its values change)."""
    linear = part.linear
    scale, shift = _segment(m.affine, part)
    weight, bias = kernels.scale_conv(linear.spec.weight, linear.spec.bias, scale, shift)
    folded = b.tensor(f"{part.tensor.name}_folded", part.tensor.dtype)
    lower.emit(b, linear.nodes[0].name, linear.source, replace(linear.spec, weight=weight, bias=bias),
               linear.layout, folded, linear.dtype, with_bias=linear.has_bias or bool(np.any(shift)))
    return folded


def _keep(b: Builder, m: ConcatAffine, part: Part) -> gs.Tensor:
    """The affine on the part's own segment: the same op, its per-channel parameters sliced."""
    op, found = m.op, m.affine
    inputs = []
    for tensor in op.inputs:
        value = None if tensor is m.concat.outputs[0] else constant_value(tensor)
        if tensor is m.concat.outputs[0]:
            inputs.append(part.tensor)
        elif value is None or value.size == 1 or tensor.is_empty():
            inputs.append(tensor)  # a scalar, or an empty optional input: the same for every segment
        else:
            # a BatchNormalization's (C,) parameters, or a constant along the channel axis of the input
            axis = 0 if is_op(op, "BatchNormalization") else found.axis - (found.rank - value.ndim)
            index = [slice(None)] * value.ndim
            index[axis] = slice(part.start, part.stop)
            inputs.append(b.constant(f"{tensor.name}_{part.start}_{part.stop}", value[tuple(index)]))
    kept = b.tensor(f"{part.tensor.name}_{op.op.lower()}", part.tensor.dtype)
    b.node(op.op, op.name, inputs, [kept], dict(op.attrs))
    return kept


RULE = Rule(NAME, "Concat (channel axis) → BatchNormalization or per-channel Mul/Div/Add/Sub/Neg → each part's "
                  "Conv/Gemm/MatMul takes its segment; a part that cannot keeps a smaller affine",
            AFFINE_OPS, match, build)
