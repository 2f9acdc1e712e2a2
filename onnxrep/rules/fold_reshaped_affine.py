"""fold_reshaped_affine: a per-channel affine applied through reshapes folds into the linear before them.

Before:  X → MatMul (+ Add) → T0 → Flatten / Reshape / Transpose … → T1 → BatchNormalization → Y
         (LeViT's LinearNorm: ``bn(linear(x).flatten(0, 1)).reshape_as(x)``)
After:   X → MatMul + Add (BN folded) → T0 → Flatten / Reshape / Transpose … → Y

The BN normalizes axis 1 of the reshaped tensor, which is the Linear's
output-feature axis carried through the chain: folding is exact when every
element keeps its channel index. The channel axis is followed op by op: a
Transpose moves it; a Reshape or Flatten keeps it when the output has an
axis of the same size C whose trailing dims hold as many elements as the
input's did after the channel axis (row-major order then gives every
element the same channel index, whatever happens to the leading axes).

Conditions:
  1. T0 and every tensor of the chain are read by the next op only (no graph output).
  2. The linear lifts (constant weights read by it only); the affine is per
     channel along the axis the chain carries the features to (a BN with
     constant parameters in inference mode, read by no other node), or by
     scalars (then the chain may do anything to the feature axis: attention's
     ``q · scale`` after the split into heads).
  3. The dims from the channel axis on are static at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels
from onnxrep.ir import lower
from onnxrep.ir.affine import SHAPE_OPS, affine, moved_axis
from onnxrep.ir.graph import Context, constant_value, is_op, producer
from onnxrep.ir.lift import AFFINE_OPS, Hint, Layout, Lifted, lift
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "fold_reshaped_affine"


@dataclass(frozen=True, eq=False)
class Reshaped:
    linear: Lifted
    chain: tuple[gs.Node, ...]  # from the linear's output to the affine's input, in order
    affine: Lifted

    @property
    def output(self) -> str:
        return self.affine.nodes[-1].outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return self.linear.nodes + self.chain + self.affine.nodes


def _chain(op: gs.Node, ctx: Context) -> tuple[list[gs.Node], gs.Node] | None:
    """The Reshape/Flatten/Transpose chain before ``op``, back to the op that starts it."""
    chain, tensor = [], op.inputs[0]
    while is_op(node := producer(tensor), *SHAPE_OPS) and len(chain) < 8:
        chain.insert(0, node)
        tensor = node.inputs[0]
    start = producer(tensor)
    return (chain, start) if chain and start is not None else None


def _check_private(match_nodes: list[gs.Node], ctx: Context) -> None:
    for node, reader in zip(match_nodes, match_nodes[1:]):
        if not ctx.private(node.outputs[0], reader):
            raise Refused("read-elsewhere",
                          f"{node.name}'s output is also read by {ctx.readers(node.outputs[0], reader)}")


def _features_axis(linear: Lifted, chain: list[gs.Node], op: gs.Node, ctx: Context) -> Layout | None:
    """The layout of the features at the end of the chain; None for an affine by scalars, which
    folds whatever the reshapes did to the feature axis (attention's ``q · scale`` after the head split).
    Raises Refused when a reshape moves the features where a per-channel affine cannot follow."""
    axis = linear.layout.axis
    for node in chain:
        try:
            axis = moved_axis(node, axis, ctx)
        except Refused:
            if _by_scalars(op, ctx):
                return None
            raise
    return Layout(len(ctx.dims(chain[-1].outputs[0])), axis)


def _by_scalars(op: gs.Node, ctx: Context) -> bool:
    try:
        scalar = affine(op, ctx, None)
    except Refused:
        return False
    return scalar is not None and scalar.scale.size == scalar.shift.size == 1


def match(ctx: Context, op: gs.Node) -> Reshaped | None:
    if not op.inputs or constant_value(op.inputs[0]) is not None:
        return None
    found = _chain(op, ctx)
    if found is None:
        return None
    chain, start = found
    try:
        linear = lift(start, ctx)
    except Refused:
        return None
    if linear is None or not linear.linear:
        return None
    where = f"{start.name} → {len(chain)} reshape(s) → {op.name}"
    try:
        layout = _features_axis(linear, chain, op, ctx)
        lifted = lift(op, ctx, Hint(layout or linear.layout, linear.spec.out_channels))
        if lifted is None:
            return None
        _check_private([linear.nodes[-1], *chain, op], ctx)
        if layout is not None and lifted.layout != layout:
            raise Refused("layout", f"{op.op} runs along axis {lifted.layout.axis}; the features are on axis "
                                    f"{layout.axis}")
    except Refused as refusal:
        refusal.where = where
        raise
    return Reshaped(linear, tuple(chain), lifted)


def build(b: Builder, m: Reshaped) -> Replacement:
    """The folded linear and copies of the reshapes after it write fresh tensors (their values change);
    the last reshape writes the affine's output (whose values do not)."""
    linear, affine = m.linear, m.affine
    weight, bias = kernels.scale_conv(linear.spec.weight, linear.spec.bias, affine.spec.weight.reshape(-1),
                                      affine.spec.bias)
    output = affine.nodes[-1].outputs[0]
    current = _fresh(b, m.chain[0].inputs[0])
    renamed = [(m.chain[0].inputs[0].name, current.name)]
    lower.emit(b, linear.nodes[0].name, linear.source, replace(linear.spec, weight=weight, bias=bias),
               linear.layout, current, linear.dtype, with_bias=linear.has_bias or bool(np.any(bias)))
    for node in m.chain:
        written = output if node is m.chain[-1] else _fresh(b, node.outputs[0])
        b.node(node.op, node.name, [current, *node.inputs[1:]], [written], node.attrs)
        if written is not output:
            renamed.append((node.outputs[0].name, written.name))
        current = written
    return b.replacement(m.nodes, renamed=tuple(renamed))


def _fresh(b: Builder, tensor: gs.Tensor) -> gs.Variable:
    return b.tensor(f"{tensor.name}_folded", tensor.dtype)


RULE = Rule(NAME, "Linear → Reshape/Flatten/Transpose … → BatchNormalization (or per-channel affine) on the "
                  "features → the Linear with the affine folded, then the reshapes", AFFINE_OPS, match, build)
