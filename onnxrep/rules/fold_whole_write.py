"""fold_whole_write: a ScatterND that overwrites every row of its data is its updates.

torch's dynamo exporter, unoptimized (optimize=False), lowers a slice
assignment ``t[:, :, 0:p, :] = v`` to a ScatterND of the modified copy back
into every row of ``t``, with the rows enumerated at run time:

Before:  Z = ScatterND(D, Unsqueeze(Range(0, Shape(D)[0], 1), -1), U)
After:   Z = Identity(U)

ScatterND requires U's shape to be (rows of D) + D.shape[1:], that is D's
shape, and every row is written once: the result is U. Dropping the
enumeration frees D of its extra readers, so fold_bias_pad can see DBB's
BN-and-pad as one chain of writes.

Conditions: reduction none; the indices are ``Unsqueeze(·, -1 or 1)`` of
``Range(0, n, 1)`` (optionally behind a Slice that keeps it whole, a Cast to an
integer type, or a Reshape to (-1, 1)), where n is ``Shape(D)[0]`` (a Gather
of index 0 from a Shape of D itself, starting at 0); or, D's rows being static
(n of them), the indices are the constant [[0], [1], …, [n − 1]].
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context, is_op, producer, selects_all
from onnxrep.rewrite.contract import Builder, NodeMatch, Replacement, Rule

NAME = "fold_whole_write"


class WholeWrite(NodeMatch):
    """The ScatterND whose every row is written."""


def _is(tensor: gs.Tensor, ctx: Context, *values: int) -> bool:
    value = ctx.maybe_constant(tensor)
    return value is not None and value.size == len(values) and value.reshape(-1).tolist() == list(values)


def _rows_of(tensor: gs.Tensor, data: gs.Tensor, ctx: Context) -> bool:
    """Whether ``tensor`` is Shape(data)[0] (through Casts)."""
    node = producer(tensor)
    while is_op(node, "Cast"):
        node = producer(node.inputs[0])
    if not (is_op(node, "Gather") and node.attrs.get("axis", 0) == 0 and _is(node.inputs[1], ctx, 0)):
        return False
    shape = producer(node.inputs[0])
    return is_op(shape, "Shape") and shape.inputs[0] is data and shape.attrs.get("start", 0) == 0


def _every_row(indices: gs.Tensor, data: gs.Tensor, ctx: Context) -> bool:
    """Whether ``indices`` is [[0], [1], …, [n − 1]] for n the rows of ``data``."""
    value = ctx.maybe_constant(indices)
    if value is not None:  # a static batch: fold_constants has made the enumeration a constant
        rows = (ctx.dims(data) or [None])[0]
        return rows is not None and value.shape == (rows, 1) and value.reshape(-1).tolist() == list(range(rows))
    node = producer(indices)
    if is_op(node, "Unsqueeze"):
        axes = node.attrs.get("axes") if "axes" in node.attrs else (
            ctx.maybe_constant(node.inputs[1]) if len(node.inputs) > 1 else None)
        if axes is None or np.asarray(axes).reshape(-1).tolist() not in ([-1], [1]):
            return False
    elif not (is_op(node, "Reshape") and _is(node.inputs[1], ctx, -1, 1)):
        return False
    node = producer(node.inputs[0])
    while is_op(node, "Cast", "Slice"):
        if node.op == "Slice" and not selects_all(node, ctx):
            return False
        node = producer(node.inputs[0])
    return (is_op(node, "Range") and _is(node.inputs[0], ctx, 0) and _is(node.inputs[2], ctx, 1)
            and _rows_of(node.inputs[1], data, ctx))


def match(ctx: Context, node: gs.Node) -> WholeWrite | None:
    if (len(node.inputs) == 3 and node.attrs.get("reduction", "none") in ("none", b"none")
            and _every_row(node.inputs[1], node.inputs[0], ctx)):
        return WholeWrite(node)
    return None


def build(b: Builder, m: WholeWrite) -> Replacement:
    b.node("Identity", m.node.name or "Identity", [m.node.inputs[2]], [m.node.outputs[0]])
    return b.replacement(m.nodes)


RULE = Rule(NAME, "ScatterND writing every row of its data (dynamo's unoptimized slice assignment) → its updates",
            ("ScatterND",), match, build)
