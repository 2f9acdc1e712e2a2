"""Branches: what reaches a join from one source tensor, lifted into a ConvSpec.

A branch is a chain of linear ops (Conv, Gemm, MatMul, AveragePool,
per-channel affines) whose intermediates nothing else reads, followed back
from a join's operand to the tensor it starts from. merge_parallel sums
branches of one source; merge_concat stacks them.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir import lift
from onnxrep.ir.graph import Context, constant_value, is_op, producer
from onnxrep.ir.lift import Hint, Layout
from onnxrep.refusal import Refused


@dataclass(frozen=True, eq=False)
class Branch:
    operand: gs.Tensor
    sign: int  # +1, or −1 for a Sub's second operand; ``spec`` already carries it
    source: gs.Tensor
    spec: ConvSpec
    layout: Layout
    nodes: tuple[gs.Node, ...]
    name: str
    dtype: np.dtype | None
    has_bias: bool
    #: (id of an op's last node, its multiply-adds per output pixel) for each op of the chain: two
    #: branches that follow one tensor back (see lift_branch's region) share ops, counted once
    costs: tuple[tuple[int, int], ...] = ()


Hints = dict[int, Hint]


def layouts(operands) -> Hints:
    """The layout and channels of each tensor some operand's Conv/Gemm/MatMul reads, from its weight."""
    hints = {}
    for tensor in operands:
        node = _linear_producer(tensor)
        known = lift.weight_layout(node)
        if known is not None:
            hints[id(node.inputs[0])] = Hint(known[0], known[1])
    return hints


def _linear_producer(tensor: gs.Tensor) -> gs.Node | None:
    """The op making ``tensor``; for a MatMul's bias Add, the MatMul."""
    node = producer(tensor)
    if is_op(node, "Add"):
        node = next((producer(t) for t in node.inputs if is_op(producer(t), "MatMul")), node)
    return node


def lift_branch(tensor: gs.Tensor, sign: int, reader: gs.Node, ctx: Context, hints: Hints,
                region: Container[int] | None = None) -> Branch | None:
    """The operand as a branch of its source; None when it is no linear op at all; raises Refused
    when it is one but cannot be lifted or is read elsewhere.

    A branch may be a chain of linear ops (DBB's 1x1 conv → AveragePool → BN):
    it is followed back while each intermediate is private and the pair
    composes exactly; the cost is checked once, for the whole merged block.
    ``hints`` maps a source tensor to its layout and channels, as learnt from
    Conv branches, for ops whose shapes were not exported. ``region``: ids of
    nodes whose reads do not count as "elsewhere" (the nodes of one join, see
    merge_parallel: a tensor only they read may be followed back by several
    branches, each recomputing it in its spec).
    """
    node = producer(tensor)
    try:
        lifted = lift.lift(node, ctx, hint_of(tensor_input(node), hints, ctx))
    except Refused as refusal:
        if refusal.code != "shape-unknown":
            raise
        known = "ONNX shape inference fails on this graph" if ctx.inferred == {} else \
            "ONNX shape inference cannot tell either"
        raise Refused(refusal.code, f"{refusal.reason}: not in the exported shapes, and {known}",
                      refusal.where) from None
    if lifted is None:
        return None
    if not _private(tensor, reader, ctx, region):
        raise Refused("read-elsewhere", f"output of {node.name} is also read by {ctx.readers(tensor, reader)}")
    source, conv_spec, dtype, has_bias = lifted.source, lifted.spec, lifted.dtype, lifted.has_bias
    nodes, reader = list(lifted.nodes), lifted.nodes[0]
    costs = [(id(lifted.nodes[-1]), lifted.spec.cost)]
    while True:
        inner_node = producer(source)
        if not _private(source, reader, ctx, region):
            break
        try:  # the chain ends where an op does not lift or compose exactly: the branch starts there
            inner = lift.lift(inner_node, ctx, hint_of(tensor_input(inner_node), hints, ctx))
            if inner is None or inner.layout != lifted.layout:
                break
            composed = spec.merge_sequential(inner.spec, conv_spec, check_cost=False)
        except Refused:
            break
        costs.append((id(inner.nodes[-1]), composed.cost - conv_spec.cost))  # on the pixels it runs on
        source, conv_spec = inner.source, composed
        dtype, has_bias = dtype or inner.dtype, True
        nodes.extend(inner.nodes)
        reader = inner.nodes[0]
    if sign < 0:
        conv_spec = conv_spec.negated()
    return Branch(tensor, sign, source, conv_spec, lifted.layout, tuple(nodes), node.name, dtype, has_bias,
                  tuple(costs))


def _private(tensor: gs.Tensor, reader: gs.Node, ctx: Context, region: Container[int] | None) -> bool:
    """``reader`` alone reads ``tensor``, or (with a region) only nodes of the region do."""
    if ctx.private(tensor, reader):
        return True
    return region is not None and id(tensor) not in ctx.graph_outputs and all(id(r) in region for r in tensor.outputs)


def tensor_input(node: gs.Node | None) -> gs.Tensor | None:
    """The data input of a node that may be lifted: the first non-constant one."""
    if node is None or not node.inputs:
        return None
    return next((t for t in node.inputs if constant_value(t) is None), node.inputs[0])


def hint_of(tensor: gs.Tensor | None, hints: Hints, ctx: Context | None = None) -> Hint:
    """What is known of a tensor's layout: from the linear ops reading it, else its rank and axis-1
    channels (from its shape or the ops that make it, else, with ``ctx``, ONNX shape inference)."""
    if tensor is None:
        return lift.NO_HINT
    if id(tensor) in hints:
        return hints[id(tensor)]
    known = lift.weight_layout(_linear_producer(tensor))
    if known is not None:
        return Hint(known[0], known[2])
    rank, channels = _rank_and_channels(tensor)
    if (rank is None or channels is None) and ctx is not None:
        inferred = ctx.dims(tensor)  # runs shape inference (once a sweep) when the export left the shape out
        if inferred is not None:
            rank = len(inferred) if rank is None else rank
            channels = channels if channels is not None or len(inferred) < 2 else inferred[1]
    return Hint(Layout.conv(rank - 2) if rank is not None and rank >= 2 else None, channels)


#: Ops whose output has the shape of their first input.
SHAPE_KEEPING = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu",
                 "Celu", "Gelu", "Mish", "Softplus", "Softsign", "Erf", "Abs", "Neg", "Exp", "Identity", "Dropout",
                 "BatchNormalization", "InstanceNormalization")
#: Ops that keep the rank and the channels (axis 1) of their first input.
CHANNEL_KEEPING = ("AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample")
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow")


def _rank_and_channels(tensor: gs.Tensor, depth: int = 0) -> tuple[int | None, int | None]:
    """A tensor's rank and channel count (axis 1), or None for what is unknown.

    From its exported shape or constant value, or the op that makes it
    (followed back through ops that keep shapes, for graphs exported without
    value_info).
    """
    value = constant_value(tensor)
    shape = value.shape if value is not None else tensor.shape
    if shape is not None:
        channels = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None
        return len(shape), channels
    node = producer(tensor)
    if node is None or not node.inputs or depth > 64:
        return None, None
    known = lift.weight_layout(node)
    if known is not None:
        return (known[0].rank, known[2]) if known[0].axis == 1 else (known[0].rank, None)
    if is_op(node, *SHAPE_KEEPING, *CHANNEL_KEEPING):
        return _rank_and_channels(node.inputs[0], depth + 1)
    if is_op(node, *BROADCASTING):
        return _broadcast([_rank_and_channels(t, depth + 1) for t in node.inputs],
                          [constant_value(t) for t in node.inputs])
    return None, None


def _broadcast(known: list[tuple[int | None, int | None]], values: list) -> tuple[int | None, int | None]:
    """Rank and channels of a broadcasting op's output, when every input's are known."""
    if any(rank is None for rank, _ in known):
        return None, None
    rank = max(r for r, _ in known)
    if rank < 2:
        return rank, None
    channels = set()
    for (r, c), value in zip(known, values):
        axis = 1 - (rank - r)  # the input's axis that lands on the output's axis 1
        if axis < 0:
            continue
        dim = c if axis == 1 else (value.shape[0] if value is not None else None)
        if dim is None:
            return rank, None
        channels.add(dim)
    channels.discard(1)
    return rank, (channels.pop() if len(channels) == 1 else None if channels else 1)
