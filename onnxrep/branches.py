"""Branches: what reaches a join from one source tensor, lifted into a ConvSpec.

A branch is a chain of linear ops (Conv, Gemm, AveragePool, per-channel
affines) whose intermediates nothing else reads, followed back from a join's
operand to the tensor it starts from. merge_parallel sums branches of one
source; merge_concat stacks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import lift, spec
from onnxrep.graph import Context, constant_value, is_op, producer
from onnxrep.spec import ConvSpec, Refusal


@dataclass(frozen=True, eq=False)
class Branch:
    operand: gs.Tensor
    sign: int  # +1, or −1 for a Sub's second operand; ``spec`` already carries it
    source: gs.Tensor
    spec: ConvSpec
    nodes: tuple[gs.Node, ...]
    name: str
    dtype: np.dtype | None
    has_bias: bool


def layouts(operands) -> dict[int, tuple[int, int]]:
    """(spatial rank, channels) of each tensor some operand's Conv/Gemm reads, from its weight."""
    ranks = {}
    for tensor in operands:
        node = producer(tensor)
        known = lift.layout(node) if node is not None else None
        if known is not None:
            ranks[id(node.inputs[0])] = known
    return ranks


def lift_node(node: gs.Node | None, ctx: Context, ranks) -> tuple | Refusal | None:
    """One linear op as (source, spec, dtype, has_bias); None when it is no such op."""
    if is_op(node, *lift.LINEAR_OPS):
        lifted = lift.conv(node, ctx)
        if isinstance(lifted, Refusal):
            return lifted
        return node.inputs[0], lifted.spec, lifted.dtype, lifted.has_bias
    if is_op(node, "AveragePool"):
        source = node.inputs[0]
        pool = lift.average_pool(node, _source_channels(source, ranks))
        return pool if isinstance(pool, Refusal) else (source, pool, None, False)
    if is_op(node, "BatchNormalization", *lift.ELEMENTWISE):
        # The rank of the data input: a constant operand (Mul(c, X) as well as Mul(X, c)) says nothing of it.
        known = [r for t in node.inputs[:1 if node.op == "BatchNormalization" else 2]
                 if constant_value(t) is None and (r := _spatial_rank(t, ranks)) is not None]
        affine = lift.affine(node, ctx, known[0] + 2 if known else None)
        if affine is None or isinstance(affine, Refusal):
            return affine
        nd = _spatial_rank(affine.source, ranks)
        channels = _channels(affine, ranks)
        if nd is None or channels is None:
            return Refusal(f"the rank or channel count of {node.name}'s input is unknown")
        scale, shift = affine.per_channel(channels)
        return (affine.source, spec.diagonal(scale, shift, nd, cost=channels), affine.dtype,
                bool(shift.any()))
    return None


def lift_branch(tensor: gs.Tensor, sign: int, reader: gs.Node, ctx: Context, ranks) -> Branch | Refusal | None:
    """The operand as a branch of its source; None when it is no linear op at all.

    A branch may be a chain of linear ops (DBB's 1x1 conv → AveragePool → BN):
    it is followed back while each intermediate is private and the pair
    composes exactly; the cost is checked once, for the whole merged block.
    ``ranks`` maps a source tensor to its (spatial rank, channels), as learnt
    from Conv branches, for ops whose shapes were not exported.
    """
    node = producer(tensor)
    lifted = lift_node(node, ctx, ranks)
    if lifted is None or isinstance(lifted, Refusal):
        return lifted
    if not ctx.private(tensor, reader):
        return Refusal(f"output of {node.name} is also read by {ctx.readers(tensor, reader)}")
    source, conv_spec, dtype, has_bias = lifted
    nodes = [node]
    while True:
        inner_node = producer(source)
        inner = lift_node(inner_node, ctx, ranks) if ctx.private(source, nodes[-1]) else None
        if inner is None or isinstance(inner, Refusal):
            break
        composed = spec.merge_sequential(inner[1], conv_spec, check_cost=False)
        if isinstance(composed, Refusal):
            break
        source, conv_spec = inner[0], composed
        dtype, has_bias = dtype or inner[2], True
        nodes.append(inner_node)
    if sign < 0:
        conv_spec = conv_spec.negated()
    return Branch(tensor, sign, source, conv_spec, tuple(nodes), node.name, dtype, has_bias)


#: Ops whose output has the shape of their first input.
SHAPE_KEEPING = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu",
                 "Celu", "Gelu", "Mish", "Softplus", "Softsign", "Erf", "Abs", "Neg", "Exp", "Identity", "Dropout",
                 "BatchNormalization", "InstanceNormalization")
#: Ops that keep the rank and the channels (axis 1) of their first input.
CHANNEL_KEEPING = ("AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample")
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow")


def _rank_and_channels(tensor: gs.Tensor, ranks, depth: int = 0) -> tuple[int | None, int | None]:
    """A tensor's rank and channel count (axis 1), or None for what is unknown.

    From, in order: the convs reading it, its exported shape or constant value,
    or the op that makes it (followed back through ops that keep shapes, for
    graphs exported without value_info).
    """
    if id(tensor) in ranks:
        spatial, channels = ranks[id(tensor)]
        return spatial + 2, channels
    value = constant_value(tensor)
    shape = value.shape if value is not None else tensor.shape
    if shape is not None:
        channels = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None
        return len(shape), channels
    node = producer(tensor)
    if node is None or not node.inputs or depth > 64:
        return None, None
    if is_op(node, *lift.LINEAR_OPS):
        known = lift.layout(node)
        return (known[0] + 2, lift.conv_out_channels(node)) if known is not None else (None, None)
    if is_op(node, *SHAPE_KEEPING, *CHANNEL_KEEPING):
        return _rank_and_channels(node.inputs[0], ranks, depth + 1)
    if is_op(node, *BROADCASTING):
        return _broadcast([_rank_and_channels(t, ranks, depth + 1) for t in node.inputs],
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


def _source_channels(tensor: gs.Tensor, ranks) -> int | None:
    return _rank_and_channels(tensor, ranks)[1]


def _channels(affine: lift.Affine, ranks: dict[int, tuple[int, int]]) -> int | None:
    """Channels of an affine branch: its parameters', a sibling conv's, or the source's."""
    sizes = {affine.scale.size, affine.shift.size} - {1}
    if sizes:
        return sizes.pop() if len(sizes) == 1 else None
    return _source_channels(affine.source, ranks)


def _spatial_rank(tensor: gs.Tensor, ranks: dict[int, tuple[int, int]]) -> int | None:
    rank = _rank_and_channels(tensor, ranks)[0]
    return rank - 2 if rank is not None and rank >= 2 else None
