"""fold_constants: index arithmetic on constants and static shapes becomes constants.

Exporters compute indices, shapes and pads at run time: DBB's BN-and-pad layer
exports with ~40 (dynamo) to ~400 (TorchScript) such nodes per layer. Folding
them lets the other rules see the constants they are, and saves the runtime
that work (onnxruntime does not fold Shape).

Before:  X → Shape → Gather(2) → Range(0, ·, 1) → Slice → Unsqueeze → ScatterND(·, indices, ·)
After:   ScatterND(·, constant indices, ·)        (X's dim 2 being static)

Folded, for a node of the default domain whose outputs are not graph outputs:
  1. Shape / Size of a tensor whose shape (or the part of it that Shape's
     start/end select) is static; Gather / Slice of a Shape output that select
     static dims only (dynamo: the spatial dims of a tensor with a dynamic batch).
  2. A node whose inputs are all constants, when its op moves, selects or
     compares data (Reshape, Gather, Expand, Concat, Where, Equal, Cast, ...),
     is an IEEE 754 basic operation (+ − × ÷ √, which every runtime rounds
     the same way: dynamo exports compute BN-and-pad values and zero biases
     so), or computes on integers (integer Div aside: its division by zero
     is undefined). Such results are the bits the ONNX spec defines;
     transcendental functions (Exp, Erf, ...) are not folded. A runtime may
     skip a rounding the spec asks for (onnxruntime's CPU runs a float16 Add
     after a Cast to float16 as one float32 Add): folding that Cast rounds
     its constant, and verification judges whether that matters.
  3. Its result is at most 512 KiB, or no bigger in bytes than the constants
     it reads when nothing else reads them: folding never grows the model
     much (a Cast of float16 weights to float32 stays).
The values come from ONNX's reference implementation (onnx.reference).

Also, an Identity of a weight is dropped and its readers read the weight
itself: TorchScript writes one for each weight it deduplicated under a second
name, and it is nothing but a node to run (no weight is copied).

Also, a CastLike whose target tensor has a known dtype becomes a Cast to that
dtype: the target is read for its type only, and dynamo exports (optimize=False)
otherwise keep whole Slice chains alive just to name a dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context, evaluate, is_op, onnx_elem_type, producer
from onnxrep.rewrite.contract import Builder, NodeMatch, Replacement, Rule

NAME = "fold_constants"
#: Ops whose results are copies, selections or comparisons of their inputs: exact for any dtype.
DATA_OPS = frozenset((
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "ConstantOfShape", "Where", "Cast", "ScatterND",
    "ScatterElements", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "NonZero", "Shape", "Size"))
#: IEEE 754 correctly rounded operations (floats: one rounding of the exact result, the same bits in any
#: runtime), also exact on integers — except integer Div, whose division by zero is undefined.
IEEE_OPS = frozenset(("Add", "Sub", "Mul", "Div", "Neg", "Abs", "Min", "Max", "Sqrt", "Reciprocal"))
#: Folded only when every input is an integer or boolean (on floats their order of operations varies).
INTEGER_OPS = frozenset(("Sum", "Range", "Sign", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax"))
FOLDABLE = DATA_OPS | IEEE_OPS | INTEGER_OPS | {"CastLike", "Identity"}
#: Results up to this many bytes are always folded (indices, shapes, small per-channel tables).
SMALL = 1 << 19


@dataclass(frozen=True, eq=False)
class Fold(NodeMatch):
    values: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class Alias(NodeMatch):
    """An Identity of an initializer (a weight shared under two names)."""


@dataclass(frozen=True, eq=False)
class CastLikeToCast(NodeMatch):
    to: int  # the ONNX element type


def _shape_vector(tensor: gs.Tensor, ctx: Context) -> list[int | None] | None:
    """The dims a Shape node's output holds (None where not static), when ``tensor`` is one."""
    node = producer(tensor)
    if not is_op(node, "Shape"):
        return None
    known = ctx.dims(node.inputs[0])
    if known is None:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return known[slice(start, end)]  # ONNX's start/end clamp like Python's slices


#: An input that is no constant (computed, or a graph input that can be overridden).
COMPUTED = object()


def _value(tensor: gs.Tensor, ctx: Context):
    value = ctx.maybe_constant(tensor)
    return COMPUTED if value is None else value


def _fold(node: gs.Node, ctx: Context) -> tuple[np.ndarray, ...] | None:
    if node.op == "Shape" or node.op == "Size":
        known = (_shape_vector(node.outputs[0], ctx) if node.op == "Shape"
                 else ctx.dims(node.inputs[0]))
        if known is None or None in known:
            return None
        return (np.array(known, np.int64) if node.op == "Shape" else np.array(int(np.prod(known)), np.int64),)
    values = [None if tensor.is_empty() else _value(tensor, ctx) for tensor in node.inputs]
    if is_op(node, "Gather", "Slice") and values[0] is COMPUTED and not any(v is COMPUTED for v in values[1:]):
        # Dims picked out of a partly static shape: evaluate the selection on the dims' positions.
        known = _shape_vector(node.inputs[0], ctx)
        if known is None:
            return None
        positions = evaluate(node, ctx.graph.opset, [np.arange(len(known), dtype=np.int64), *values[1:]])[0]
        picked = [known[int(p)] for p in positions.reshape(-1)]
        if None in picked:
            return None
        return (np.array(picked, np.int64).reshape(positions.shape),)
    if node.op == "CastLike" and values[1] is COMPUTED and node.inputs[1].dtype is not None:
        values[1] = np.zeros(0, node.inputs[1].dtype)  # only its dtype matters
    if any(v is COMPUTED for v in values):
        return None
    present = [v for v in values if v is not None]
    integers = all(v.dtype.kind in "biu" for v in present)
    if node.op in INTEGER_OPS and not integers or node.op == "Div" and integers:
        return None
    results = evaluate(node, ctx.graph.opset, values)
    size = sum(r.nbytes for r in results)
    private = all(len(t.outputs) == 1 for t in node.inputs if not t.is_empty())
    if size > SMALL and not (private and size <= sum(v.nbytes for v in present)):
        return None
    return tuple(results)


def match(ctx: Context, node: gs.Node) -> Fold | Alias | CastLikeToCast | None:
    if (node.op not in FOLDABLE or any(id(t) in ctx.graph_outputs for t in node.outputs)
            or any(isinstance(a, gs.Graph) for a in node.attrs.values())):
        return None
    if node.op == "Identity":
        source = node.inputs[0] if node.inputs else None
        if isinstance(source, gs.Constant) and id(source) not in ctx.graph_inputs:
            return Alias(node)
        return None
    if node.op == "CastLike":
        to = onnx_elem_type(node.inputs[1].dtype) if len(node.inputs) == 2 else None
        if to is not None and ctx.maybe_constant(node.inputs[0]) is None:
            return CastLikeToCast(node, to)  # a constant input is folded instead
    try:
        values = _fold(node, ctx)
    except Exception:  # noqa: BLE001 (a node the reference cannot run stays for the runtime)
        return None
    if values is not None and len(values) == len(node.outputs):
        return Fold(node, values)
    return None


def build(b: Builder, m: Fold | Alias | CastLikeToCast) -> Replacement:
    if isinstance(m, Alias):  # the readers of the alias read the weight itself
        return b.replacement(m.nodes, rewires=((m.node.outputs[0], m.node.inputs[0]),))
    if isinstance(m, CastLikeToCast):
        b.node("Cast", m.node.name or "Cast", [m.node.inputs[0]], list(m.node.outputs), {"to": m.to})
        return b.replacement(m.nodes)
    return b.replacement(m.nodes, constants=tuple(zip(m.node.outputs, m.values)))


RULE = Rule(NAME, "Shape of static tensors, integer and data-movement ops on constants → constants",
            tuple(sorted(FOLDABLE)), match, build)
