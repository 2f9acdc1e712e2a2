"""fold_pre_affine: a per-channel affine read, through reshapes, only by linear ops folds into each of them.

Before:  X → BatchNormalization → T → Reshape / Transpose … → MatMul q
                                                           ↘ AveragePool → MatMul k, MatMul v …
         (NextViT's pre-norm attention: ``merge_pre_bn`` into q, k and v)
After:   X → Reshape / Transpose / AveragePool … → MatMul q', k', v'   (each with the affine folded in)

fold_sequential folds an affine into the one op after it; this rule follows
the affine's output through Reshape / Flatten / Transpose ops (the channel
axis tracked as in fold_reshaped_affine) and AveragePools that average input
elements only (no padding counted: the mean of s·x + h is s·mean(x) + h), and
ReduceMeans over other axes than the channels (a global average pool), to
every op that reads it, and folds when every one of them is a linear op
reading the channels there.

Conditions:
  1. Every tensor from the affine to the linear ops is read only by ops of
     the tree (no graph output), and each reshape keeps the channel axis whole.
  2. Every leaf is a Conv, Gemm or MatMul whose input channels are that axis,
     and the fold is exact for each (spec.merge_sequential: a conv that
     zero-pads takes no shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir import lower
from onnxrep.ir.affine import SHAPE_OPS, moved_axis
from onnxrep.ir.graph import Context, is_op
from onnxrep.ir.lift import AFFINE_OPS, LINEAR_OPS, Hint, Layout, Lifted, lift
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "fold_pre_affine"


@dataclass(frozen=True, eq=False)
class Fanout:
    affine: gs.Node
    reshapes: tuple[gs.Node, ...]  # in graph order from the affine
    leaves: tuple[tuple[Lifted, ConvSpec], ...]  # each linear op and its spec with the affine folded in

    @property
    def output(self) -> str:
        """The first linear op's output: the affine's own output vanishes (its readers read the
        affine's input), the linear ops write theirs again, with the same values."""
        return self.leaves[0][0].nodes[-1].outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.affine, *self.reshapes, *(n for lifted, _ in self.leaves for n in lifted.nodes))


def _tree(op: gs.Node, layout: Layout, ctx: Context):
    """The reshapes and (leaf node, layout there) pairs reading ``op``'s output; raises Refused
    when something else reads it."""
    reshapes, leaves, todo = [], [], [(op.outputs[0], layout)]
    while todo:
        tensor, here = todo.pop(0)
        if id(tensor) in ctx.graph_outputs or not tensor.outputs:
            raise Refused("read-elsewhere", f"'{tensor.name}' is a graph output")
        for reader in tensor.outputs:
            if is_op(reader, *SHAPE_OPS) and reader.inputs[0] is tensor and len(reshapes) < 16:
                axis = moved_axis(reader, here.axis, ctx)
                reshapes.append(reader)
                todo.append((reader.outputs[0], Layout(len(ctx.dims(reader.outputs[0])), axis)))
            elif is_op(reader, "ReduceMean") and reader.inputs[0] is tensor:
                moved = _mean_keeps_channels(reader, here, ctx)
                reshapes.append(reader)
                todo.append((reader.outputs[0], moved))
            elif is_op(reader, "AveragePool") and reader.inputs[0] is tensor and here.axis == 1:
                if not _averages_real_elements(reader):
                    raise Refused("not-exact", f"{reader.name} averages in padding zeros: a shift does not pass it")
                reshapes.append(reader)
                todo.append((reader.outputs[0], here))
            elif is_op(reader, *LINEAR_OPS) and reader.inputs[0] is tensor:
                leaves.append((reader, here))
            else:
                raise Refused("read-elsewhere", f"'{tensor.name}' is also read by {reader.name or reader.op}, "
                                                "not a linear op")
    return reshapes, leaves


def _with_bias(node: gs.Node, ctx: Context) -> Lifted | None:
    """The linear op, with the Add of its bias when it has one (a MatMul's)."""
    readers = node.outputs[0].outputs
    if is_op(node, "MatMul") and len(readers) == 1 and is_op(readers[0], "Add"):
        try:
            with_bias = lift(readers[0], ctx)
        except Refused:
            with_bias = None  # no bias, or one that does not fold: the MatMul alone
        if with_bias is not None and with_bias.nodes[0] is node:
            return with_bias
    return lift(node, ctx)


def _averages_real_elements(pool: gs.Node) -> bool:
    """An AveragePool whose every window averages input elements only: an affine per channel
    then passes through it (the mean of s·x + h is s·mean(x) + h)."""
    pads = pool.attrs.get("pads", ())
    auto_pad = pool.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    unpadded = not any(pads) and auto_pad in ("NOTSET", "", "VALID")
    return not pool.attrs.get("ceil_mode", 0) and (unpadded or not pool.attrs.get("count_include_pad", 0))


def _mean_keeps_channels(node: gs.Node, here: Layout, ctx: Context) -> Layout:
    """Where a ReduceMean over other axes than the channels puts them (a global average pool)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and not node.inputs[1].is_empty():
        axes = ctx.constant(node.inputs[1], "axes")
    if axes is None or node.attrs.get("noop_with_empty_axes", 0):
        raise Refused("layout", f"{node.name} reduces every axis")
    axes = {int(a) % here.rank for a in np.asarray(axes).reshape(-1)}
    if here.axis in axes:
        raise Refused("layout", f"{node.name} averages over the channels")
    if node.attrs.get("keepdims", 1):
        return here
    return Layout(here.rank - len(axes), here.axis - sum(a < here.axis for a in axes))


def match(ctx: Context, op: gs.Node) -> Fanout | None:
    if not op.outputs[0].outputs:
        return None
    known = ctx.dims(op.inputs[0])
    try:
        affine = lift(op, ctx, Hint(Layout(len(known), 1) if known and len(known) > 1 else None))
        if affine is None or affine.linear:
            return None
        reshapes, leaves = _tree(op, affine.layout, ctx)
    except Refused:
        return None  # no affine, or not read by linear ops only: nothing to fold into
    if not reshapes and len(leaves) < 2:
        return None  # one linear op right after: fold_sequential's business
    where = f"{op.name} → {len(reshapes)} reshape(s) → {len(leaves)} linear op(s)"
    try:
        folded = [_folded(affine, node, layout, ctx) for node, layout in leaves]
    except Refused as refusal:
        refusal.where = where
        raise
    after = sum(lower.node_count(linear.layout, merged, bool(merged.bias.any())) for linear, merged in folded)
    if after >= 1 + sum(len(linear.nodes) for linear, _ in folded):
        return None  # the shift would add a bias Add to each of several bias-free MatMuls
    return Fanout(op, tuple(reshapes), tuple(folded))


def _folded(affine: Lifted, node: gs.Node, layout: Layout, ctx: Context) -> tuple[Lifted, ConvSpec]:
    """The linear op ``node`` (with its bias) and its spec with the affine folded in; raises Refused."""
    linear = _with_bias(node, ctx)
    if linear is None or linear.nodes[0] is not node:
        raise Refused("unsupported", f"{node.name} is no linear op")
    if linear.layout != layout:
        raise Refused("layout", f"{node.name} reads axis {linear.layout.axis}, the channels are axis {layout.axis}")
    channels = affine.spec.out_channels
    diagonal = spec.diagonal(affine.spec.weight.reshape(-1), affine.spec.bias, layout.spatial_dims, channels)
    return linear, spec.merge_sequential(diagonal, linear.spec)


def build(b: Builder, m: Fanout) -> Replacement:
    """The reshapes are made again, reading the affine's input and writing fresh tensors (their
    values change); each linear op is replaced by its folded one, writing its own output."""
    renamed = {id(m.affine.outputs[0]): m.affine.inputs[0]}
    for node in m.reshapes:
        old = node.outputs[0]
        renamed[id(old)] = b.tensor(f"{old.name}_unscaled", old.dtype)
        b.node(node.op, node.name, [renamed[id(node.inputs[0])], *node.inputs[1:]], [renamed[id(old)]], node.attrs)
    for linear, merged in m.leaves:
        lower.emit(b, linear.nodes[0].name, renamed[id(linear.source)], merged, linear.layout,
                   linear.nodes[-1].outputs[0], linear.dtype, with_bias=bool(merged.bias.any()))
    return b.replacement(m.nodes, renamed=tuple((node.outputs[0].name, renamed[id(node.outputs[0])].name)
                                                 for node in m.reshapes))


RULE = Rule(NAME, "BatchNormalization (or per-channel affine) → Reshape/Transpose … → only Conv/Gemm/MatMul readers "
                  "→ folded into each of them", AFFINE_OPS, match, build)
