"""fold_constant_sums: constant subexpressions with a float sum in them (MatMul, Gemm, ReduceL2, ...)
become constants, computed in float64 and rounded once.

DoRA's scale ``c = m / ‖W + s·B·A‖`` (one norm per output channel) depends on
weights only. TorchScript exports it as nodes (EyeLike, MatMuls of the LoRA
factors, Transpose, Mul, Add, ReduceL2, Div, Reshape; a Gemm and a Reshape for a
conv); dynamo computes it itself. Until it is a constant, the ``Mul(c, ·)`` on
the data path is no per-channel affine, nothing around it merges, and the
chain's reads of A and B make them weights shared with the data path.

Before:  W, A, B, m (weights) → EyeLike, MatMul, Transpose, Mul, Add → ReduceL2 → Div → c → Mul(c, X)
After:   c (a constant)                                                               → Mul(c, X)

Why a rule apart from fold_constants: fold_constants folds what the ONNX spec
defines to the bit (data movement, IEEE 754 basic operations, integer
arithmetic), the same bits any runtime computes. A float sum has no such
definition: the spec leaves the order of its terms to the runtime, and each
order rounds differently. Its result is defined to rounding only, so this rule
computes the whole subexpression in float64 from the constants and rounds once
to the tensor's type: within rounding of what any runtime computes. Verification
checks every tensor folded so against the original's own value, within the
rounding of the original's computation (``c − 1`` with c ≈ 1 against |c| + 1,
not against its own small value).

Folded: the *cone* of a node, the nodes that compute it from constants (every
input a constant, or the output of such a node), at its frontier: where the
result is read by a node outside any cone. Conditions:
  1. Every node of the cone is of the default domain, in SUMS or EXACT, and
     writes a float tensor: integers (shapes, axes, indices) enter only as
     constants. A Cast inside the cone rounds to its type (a Cast to the type
     its input already has is nothing). At least one node is in SUMS (a cone
     of exact ops is fold_constants' business).
  2. The result is not a graph output.
  3. It is at most 512 KiB, or no bigger than the weights only the cone reads:
     the model never grows much (LoRA factors multiplied out into a dense
     matrix that stays would). Intermediates are never written into the
     model: a real layer's ``W + s·BA`` is megabytes, its row norms a vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context, constant_value, evaluate, is_op, nbytes, producer
from onnxrep.rewrite.contract import Builder, NodeMatch, Replacement, Rule

NAME = "fold_constant_sums"
#: Float sums whose order of terms the ONNX spec leaves to the runtime: results defined to rounding.
SUMS = frozenset(("MatMul", "Gemm", "Sum", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceMean"))
#: Ops whose float result the spec defines from their inputs (copies, selections, IEEE basic operations,
#: 0/1 tables): they may surround the sums inside a cone.
EXACT = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Slice", "Gather",
                   "Expand", "Tile", "ConstantOfShape", "EyeLike", "Identity", "Cast",
                   "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal", "Min", "Max"))
#: Results up to this many bytes are always folded (fold_constants' limit).
SMALL = 1 << 19


@dataclass(frozen=True, eq=False)
class Cone(NodeMatch):
    """``node``: the frontier; ``removed``: it and the cone nodes nothing else reads; ``value``: its result."""

    removed: tuple[gs.Node, ...]
    value: np.ndarray

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return self.removed


@dataclass(frozen=True)
class _Known:
    """What the cone analysis knows of a computable tensor."""

    dtype: np.dtype  # its type in the graph
    has_sum: bool  # a node of SUMS computes it, or one of its inputs


def _float(dtype) -> np.dtype | None:
    """A numpy float type, else None (graphsurgeon keeps ONNX types numpy lacks, bfloat16, as ints)."""
    if dtype is None or isinstance(dtype, int):
        return None
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return None
    return dtype if dtype.kind == "f" else None


def _leaf(tensor: gs.Tensor, ctx: Context) -> np.dtype | None:
    """A constant's dtype (no weight is loaded to say so), None for anything else."""
    if id(tensor) in ctx.graph_inputs:
        return None
    if isinstance(tensor, gs.Constant):
        try:
            return None if isinstance(tensor.dtype, int) else np.dtype(tensor.dtype)
        except TypeError:
            return None
    if is_op(producer(tensor), "Constant"):
        value = constant_value(tensor)
        return None if value is None else value.dtype
    return None


def _output_dtype(node: gs.Node, inputs: list[np.dtype | None]) -> np.dtype | None:
    """The type of the node's output by the spec's type rules, from its inputs' types."""
    if node.op == "Cast":
        return _onnx_dtype(node.attrs.get("to"))
    if node.op == "ConstantOfShape":
        value = node.attrs.get("value")
        return np.dtype(value.values.dtype) if isinstance(value, gs.Constant) else np.dtype(np.float32)
    if node.op == "EyeLike" and node.attrs.get("dtype") is not None:
        return _onnx_dtype(node.attrs["dtype"])
    return next((d for t, d in zip(node.inputs, inputs) if not t.is_empty()), None)


def _onnx_dtype(elem_type) -> np.dtype | None:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(elem_type)))
    except (KeyError, TypeError, ValueError):
        return None


def _known(tensor: gs.Tensor, ctx: Context, memo: dict, depth: int = 0) -> _Known | None:
    """The tensor as computable from constants by cone ops, or None. Memoized by name for the sweep:
    folding makes constants of computable tensors only, so whether a tensor is computable never
    changes within a sweep (``has_sum`` may: match looks at the cone itself)."""
    if tensor.name in memo:
        return memo[tensor.name]
    leaf = _leaf(tensor, ctx)
    known = None
    if leaf is not None:
        known = _Known(leaf, False)
    else:
        node = producer(tensor)
        if (is_op(node, *SUMS, *EXACT) and len(node.outputs) == 1 and depth < 256
                and not any(isinstance(a, gs.Graph) for a in node.attrs.values())):
            inputs = [None if t.is_empty() else _known(t, ctx, memo, depth + 1) for t in node.inputs]
            if all(k is not None for k, t in zip(inputs, node.inputs) if not t.is_empty()):
                dtype = _output_dtype(node, [k.dtype if k else None for k in inputs])
                if _float(dtype) is not None and (node.op != "Cast" or _float(inputs[0].dtype) is not None):
                    known = _Known(dtype, node.op in SUMS or any(k is not None and k.has_sum for k in inputs))
    memo[tensor.name] = known
    return known


def _cone(node: gs.Node) -> list[gs.Node]:
    """The nodes computing ``node`` from constants, in order, ``node`` last (the cone is known computable)."""
    order, seen, stack = [], set(), [(node, False)]
    while stack:
        current, expanded = stack.pop()
        if expanded:
            order.append(current)
            continue
        if id(current) in seen:
            continue
        seen.add(id(current))
        stack.append((current, True))
        for tensor in current.inputs:
            source = producer(tensor)
            if source is not None and not isinstance(tensor, gs.Constant) and not is_op(source, "Constant"):
                stack.append((source, False))
    return order


def _value64(tensor: gs.Tensor, ctx: Context) -> np.ndarray:
    value = np.asarray(ctx.constant(tensor, "value"))
    return value.astype(np.float64) if _float(value.dtype) is not None else value


def _compute(cone: list[gs.Node], ctx: Context, memo: dict) -> np.ndarray:
    """The frontier's value: every float computed in float64 (a Cast rounds to its type), rounded once."""
    values: dict[str, np.ndarray] = {}
    left = {}  # readers inside the cone still to run, per intermediate: freed after the last
    for node in cone:
        for tensor in node.inputs:
            left[tensor.name] = left.get(tensor.name, 0) + 1
    for node in cone:
        inputs = [None if t.is_empty() else values[t.name] if t.name in values else _value64(t, ctx)
                  for t in node.inputs]
        dtype = memo[node.outputs[0].name].dtype
        if node.op == "Cast":
            source = memo[node.inputs[0].name].dtype
            result = inputs[0] if source == dtype else inputs[0].astype(dtype).astype(np.float64)
        else:
            (result,) = evaluate(node, ctx.graph.opset, inputs)
            result = result.astype(np.float64)  # ConstantOfShape, EyeLike, Constant: their own type
        values[node.outputs[0].name] = result
        for tensor in node.inputs:
            left[tensor.name] -= 1
            if not left[tensor.name]:
                values.pop(tensor.name, None)
    return values[cone[-1].outputs[0].name].astype(memo[cone[-1].outputs[0].name].dtype)


def _removed(cone: list[gs.Node], ctx: Context) -> list[gs.Node]:
    """The frontier and the cone nodes whose outputs only removed nodes read (no graph output)."""
    removed = {id(cone[-1])}
    for node in reversed(cone[:-1]):
        if all(id(t) not in ctx.graph_outputs and all(id(r) in removed for r in t.outputs) for t in node.outputs):
            removed.add(id(node))
    return [n for n in cone if id(n) in removed]


def _freed_bytes(removed: list[gs.Node], ctx: Context) -> int:
    """The bytes of the weights that only ``removed`` read: what the fold takes out of the model."""
    ids = {id(n) for n in removed}
    weights = {id(t): t for n in removed for t in n.inputs if isinstance(t, gs.Constant)}
    return sum(nbytes(t) or 0 for t in weights.values()
               if all(id(r) in ids for r in t.outputs) and id(t) not in ctx.graph_outputs)


def _in_a_cone(reader: gs.Node, ctx: Context, memo: dict) -> bool:
    """Whether a reader is computable from constants and may fold itself (not a graph output)."""
    return (len(reader.outputs) == 1 and id(reader.outputs[0]) not in ctx.graph_outputs
            and _known(reader.outputs[0], ctx, memo) is not None)


def match(ctx: Context, node: gs.Node) -> Cone | None:
    if len(node.outputs) != 1:
        return None
    memo = ctx.cache.setdefault(NAME, {})
    output = node.outputs[0]
    known = _known(output, ctx, memo)
    if known is None or not known.has_sum or id(output) in ctx.graph_outputs or not output.outputs:
        return None
    if all(_in_a_cone(r, ctx, memo) for r in output.outputs):
        return None  # every reader is in a cone itself: the fold happens at the frontier
    if _float(output.dtype) not in (None, known.dtype):
        return None  # the export declares another type than the spec's rules give: not ours to judge
    cone = _cone(node)
    if not any(n.op in SUMS for n in cone):
        return None  # exact ops only (a sum folded already): fold_constants' business
    removed = _removed(cone, ctx)
    try:
        value = _compute(cone, ctx, memo)
    except Exception:  # noqa: BLE001 (a node the reference cannot run stays for the runtime)
        return None
    if value.nbytes > SMALL and value.nbytes > _freed_bytes(removed, ctx):
        return None
    return Cone(node, tuple(removed), value)


def build(b: Builder, m: Cone) -> Replacement:
    return b.replacement(m.nodes, constants=((m.node.outputs[0], m.value),))


RULE = Rule(NAME, "Constant subexpressions with float sums (MatMul, Gemm, ReduceL2, ...: DoRA's norms) → "
                  "constants, in float64 rounded once", tuple(sorted(SUMS | EXACT)), match, build)
