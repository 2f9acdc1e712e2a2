"""quantized_branches: branches quantized one by one stay as they are, with one line for the whole model.

A QDQ export (onnxruntime's quantize_static, and the toolkits that write the
same format) puts a QuantizeLinear → DequantizeLinear pair after every branch
and gives each branch's weights their own int8 grid:

    Add(DQ(Q(BN(Conv(DQ(Q(x)), DQ(W1))))), DQ(Q(Conv(DQ(Q(x)), DQ(W2)))), ...)

The model computes Σ DQ(Q(branch_i)), each branch rounded to its own grid
before the sum. Summing the dequantized kernels gives a float kernel on no
int8 grid, and quantizing it again changes the outputs: no merge of such
branches is exact, nor a fold of a BatchNormalization quantized apart from its
conv. Nothing lifts there anyway (the weights are DequantizeLinear outputs);
this rule says why, once for the model, at the first place it applies: how
many quantized branches meet at how many joins, how many BatchNormalizations
read a DequantizeLinear, and the order that works (re-parameterize the float
model, then quantize).

A branch is quantized when its output reaches the join through a Q → DQ pair;
branches are parallel when, followed back through Conv / BatchNormalization /
Gemm / MatMul / AveragePool / Pad ops and Q → DQ pairs, they start from the
same tensor. Join trees are followed through Q → DQ pairs between Adds.

The rule never matches: it only refuses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context, constant_value, is_op, producer
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "quantized_branches"
JOINS = ("Add", "Sum")
#: Ops a branch is made of, each read through its first input.
BRANCH_OPS = ("Conv", "BatchNormalization", "Gemm", "MatMul", "AveragePool", "Pad")


@dataclass(frozen=True)
class Quantized:
    """The model's quantized joins and BatchNormalizations; ``first``: the node that reports them."""

    first: gs.Node | None
    branches: int
    joins: int
    batchnorms: int


def _dequantized(tensor: gs.Tensor) -> gs.Tensor | None:
    """t when ``tensor`` is DequantizeLinear(QuantizeLinear(t)), else None."""
    dq = producer(tensor)
    q = producer(dq.inputs[0]) if is_op(dq, "DequantizeLinear") and dq.inputs else None
    return q.inputs[0] if is_op(q, "QuantizeLinear") and q.inputs else None


def _float(tensor: gs.Tensor) -> gs.Tensor:
    """The tensor behind any Q → DQ pairs."""
    for _ in range(8):
        inner = _dequantized(tensor)
        if inner is None:
            break
        tensor = inner
    return tensor


def _source(tensor: gs.Tensor) -> gs.Tensor:
    """The tensor a branch starts from."""
    tensor = _float(tensor)
    for _ in range(16):
        node = producer(tensor)
        if not is_op(node, *BRANCH_OPS) or not node.inputs:
            break
        tensor = _float(node.inputs[0])
    return tensor


def _operands(join: gs.Node, inner: set[int]) -> list[gs.Tensor]:
    """The join tree's operands, through Q → DQ pairs and Adds whose output only the tree reads;
    ``inner`` collects the joins inside the tree."""
    operands = []
    for tensor in join.inputs:
        behind = _float(tensor)
        node = producer(behind)
        if is_op(node, *JOINS) and len(behind.outputs) == 1 and constant_value(tensor) is None:
            inner.add(id(node))
            operands += _operands(node, inner)
        else:
            operands.append(tensor)
    return operands


def _find(ctx: Context) -> Quantized:
    joins, inner = [], set()
    for node in ctx.graph.nodes:
        if is_op(node, *JOINS) and len(node.inputs) >= 2 and all(constant_value(t) is None for t in node.inputs):
            joins.append((node, _operands(node, inner)))
    places, branches, roots = [], 0, 0
    for node, operands in joins:
        if id(node) in inner:
            continue
        sources = Counter(id(_source(t)) for t in operands)
        parallel = [t for t in operands if sources[id(_source(t))] > 1]
        if any(_dequantized(t) is not None for t in parallel):
            places.append(node)
            branches += len(parallel)
            roots += 1
    batchnorms = [n for n in ctx.graph.nodes if is_op(n, "BatchNormalization") and n.inputs
                  and is_op(producer(n.inputs[0]), "DequantizeLinear")]
    places += batchnorms
    order = {id(n): i for i, n in enumerate(ctx.graph.nodes)}
    first = min(places, key=lambda n: order[id(n)]) if places else None
    return Quantized(first, branches, roots, len(batchnorms))


def match(ctx: Context, node: gs.Node) -> None:
    found = ctx.memo(NAME, lambda: _find(ctx))
    if node is not found.first:
        return None
    counts = [f"{_n(found.branches, 'quantized branch', 'quantized branches')} at "
              f"{_n(found.joins, 'join', 'joins')}"] if found.joins else []
    if found.batchnorms:
        counts.append(f"{_n(found.batchnorms, 'BatchNormalization', 'BatchNormalizations')} after a DequantizeLinear")
    raise Refused("not-exact", "quantized separately (a QuantizeLinear/DequantizeLinear pair after each branch, "
                               "each weight on its own int8 grid): merging them, or folding a BatchNormalization "
                               "into a quantized conv, would not be exact, so they stay. Re-parameterize the float "
                               "model with onnxrep, then quantize it (docs/adapters.md)", ", ".join(counts))


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def build(b: Builder, m) -> Replacement:
    raise AssertionError("quantized_branches never matches")  # match returns None or refuses


RULE = Rule(NAME, "branches quantized one by one (QuantizeLinear/DequantizeLinear): left as they are, with one "
                  "reason for the model", (*JOINS, "BatchNormalization"), match, build)
