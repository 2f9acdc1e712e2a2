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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec, Refusal
from onnxrep.ir import lower
from onnxrep.ir.affine import SHAPE_OPS, moved_axis
from onnxrep.ir.graph import Context, is_op
from onnxrep.ir.lift import AFFINE_OPS, LINEAR_OPS, Hint, Layout, Lifted, lift
from onnxrep.rules import Finding, Rule

NAME = "fold_pre_affine"


@dataclass(frozen=True, eq=False)
class Fanout:
    affine: gs.Node
    reshapes: tuple[gs.Node, ...]  # in graph order from the affine
    leaves: tuple[tuple[Lifted, ConvSpec], ...]  # each linear op and its spec with the affine folded in

    @property
    def output(self) -> str:
        return self.affine.outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.affine, *self.reshapes, *(n for lifted, _ in self.leaves for n in lifted.nodes))


def _tree(op: gs.Node, layout: Layout, ctx: Context):
    """The reshapes and (leaf node, layout there) pairs reading ``op``'s output, or a Refusal."""
    reshapes, leaves, todo = [], [], [(op.outputs[0], layout)]
    while todo:
        tensor, here = todo.pop(0)
        if id(tensor) in ctx.graph_outputs or not tensor.outputs:
            return Refusal(f"'{tensor.name}' is a graph output")
        for reader in tensor.outputs:
            if is_op(reader, *SHAPE_OPS) and reader.inputs[0] is tensor and len(reshapes) < 16:
                axis = moved_axis(reader, here.axis, ctx)
                if isinstance(axis, Refusal):
                    return axis
                reshapes.append(reader)
                todo.append((reader.outputs[0], Layout(len(ctx.dims(reader.outputs[0])), axis)))
            elif is_op(reader, "ReduceMean") and reader.inputs[0] is tensor:
                moved = _mean_keeps_channels(reader, here, ctx)
                if isinstance(moved, Refusal):
                    return moved
                reshapes.append(reader)
                todo.append((reader.outputs[0], moved))
            elif is_op(reader, "AveragePool") and reader.inputs[0] is tensor and here.axis == 1:
                if not _averages_real_elements(reader):
                    return Refusal(f"{reader.name} averages in padding zeros: a shift does not pass it")
                reshapes.append(reader)
                todo.append((reader.outputs[0], here))
            elif is_op(reader, *LINEAR_OPS) and reader.inputs[0] is tensor:
                leaves.append((reader, here))
            else:
                return Refusal(f"'{tensor.name}' is also read by {reader.name or reader.op}, not a linear op")
    return reshapes, leaves


def _with_bias(node: gs.Node, ctx: Context) -> Lifted | Refusal | None:
    """The linear op, with the Add of its bias when it has one (a MatMul's)."""
    readers = node.outputs[0].outputs
    if is_op(node, "MatMul") and len(readers) == 1 and is_op(readers[0], "Add"):
        with_bias = lift(readers[0], ctx)
        if isinstance(with_bias, Lifted) and with_bias.nodes[0] is node:
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


def _mean_keeps_channels(node: gs.Node, here: Layout, ctx: Context) -> Layout | Refusal:
    """Where a ReduceMean over other axes than the channels puts them (a global average pool)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and not node.inputs[1].is_empty():
        axes = ctx.constant(node.inputs[1], "axes")
        if isinstance(axes, Refusal):
            return axes
    if axes is None or node.attrs.get("noop_with_empty_axes", 0):
        return Refusal(f"{node.name} reduces every axis")
    axes = {int(a) % here.rank for a in np.asarray(axes).reshape(-1)}
    if here.axis in axes:
        return Refusal(f"{node.name} averages over the channels")
    if node.attrs.get("keepdims", 1):
        return here
    return Layout(here.rank - len(axes), here.axis - sum(a < here.axis for a in axes))


def _match(op: gs.Node, ctx: Context) -> Fanout | Finding | None:
    known = ctx.dims(op.inputs[0])
    affine = lift(op, ctx, Hint(Layout(len(known), 1) if known and len(known) > 1 else None))
    if not isinstance(affine, Lifted) or affine.linear:
        return None
    tree = _tree(op, affine.layout, ctx)
    if isinstance(tree, Refusal) or (not tree[0] and len(tree[1]) < 2):
        return None  # one linear op right after: fold_sequential's business
    reshapes, leaves = tree
    where = f"{op.name} → {len(reshapes)} reshape(s) → {len(leaves)} linear op(s)"
    folded = []
    for node, layout in leaves:
        linear = _with_bias(node, ctx)
        if not isinstance(linear, Lifted) or linear.nodes[0] is not node:
            reason = linear.reason if isinstance(linear, Refusal) else f"{node.name} is no linear op"
            return Finding(NAME, where, reason)
        if linear.layout != layout:
            return Finding(NAME, where, f"{node.name} reads axis {linear.layout.axis}, "
                                        f"the channels are axis {layout.axis}")
        channels = affine.spec.out_channels
        diagonal = spec.diagonal(affine.spec.weight.reshape(-1), affine.spec.bias, layout.spatial_dims, channels)
        merged = spec.merge_sequential(diagonal, linear.spec)
        if isinstance(merged, Refusal):
            return Finding(NAME, where, merged.reason)
        folded.append((linear, merged))
    after = sum(lower.node_count(linear.layout, merged, bool(merged.bias.any())) for linear, merged in folded)
    if after >= 1 + sum(len(linear.nodes) for linear, _ in folded):
        return None  # the shift would add a bias Add to each of several bias-free MatMuls
    return Fanout(op, tuple(reshapes), tuple(folded))


def find(ctx: Context) -> Iterator[Fanout | Finding]:
    for op in ctx.nodes():
        if is_op(op, *AFFINE_OPS) and op.outputs[0].outputs:
            match = _match(op, ctx)
            if match is not None:
                yield match


def rewrite(ctx: Context, match: Fanout) -> None:
    """The reshapes read the affine's input and write fresh tensors (their values change); each
    linear op is replaced by its folded one, writing its own output."""
    source = match.affine.inputs[0]
    renamed = {id(match.affine.outputs[0]): source}
    for node in match.reshapes:
        old = node.outputs[0]
        renamed[id(old)] = gs.Variable(ctx.unique(f"{old.name}_unscaled"), dtype=old.dtype)
        node.inputs[0] = renamed[id(node.inputs[0])]
        node.outputs.clear()
        node.outputs.append(renamed[id(old)])
    for linear, merged in match.leaves:
        output, name, feeds = linear.nodes[-1].outputs[0], linear.nodes[0].name, renamed[id(linear.source)]
        ctx.detach(linear.nodes)
        lower.emit(ctx, name, feeds, merged, linear.layout, output, linear.dtype, with_bias=bool(merged.bias.any()))
    ctx.detach([match.affine])


RULE = Rule(NAME, "BatchNormalization (or per-channel affine) → Reshape/Transpose … → only Conv/Gemm/MatMul readers "
                  "→ folded into each of them", find, rewrite)
