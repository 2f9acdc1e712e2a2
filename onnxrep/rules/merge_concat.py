"""merge_concat: convs of one tensor concatenated on the channel axis become one Conv.

Before:  Y = Concat(Conv_a(X), Conv_b(X), ..., axis=1)
After:   Y = Conv(X)   with the kernels stacked along output channels

A run of consecutive operands that are branches of one source merges (the
branches as merge_parallel lifts them: conv chains, BN, ...); operands around
it stay, so the Concat keeps its order.

Conditions:
  1. Every merged branch's output is read by the Concat only (no graph output).
  2. The branches align as in merge_parallel (same strides, equal output
     size for every input size, taps lined up); the result is dense (group 1).
  3. The stacked kernel costs no more than the branches (a 1x1 padded into a
     3x3 beside it would: Inception-style blocks stay).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir import lower
from onnxrep.ir.branches import Branch, layouts, lift_branch
from onnxrep.ir.graph import Context
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "merge_concat"


@dataclass(frozen=True, eq=False)
class ConcatRun:
    concat: gs.Node
    start: int  # operand index where the merged run begins
    branches: tuple[Branch, ...]
    merged: ConvSpec

    @property
    def output(self) -> str:
        return self.concat.outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.concat,) + tuple(n for b in self.branches for n in b.nodes)


def _runs(lifted: list) -> Iterator[tuple[int, list[Branch]]]:
    """Maximal runs of consecutive branches of one source, with at least one real op."""
    start = 0
    while start < len(lifted):
        first = lifted[start]
        end = start + 1
        if isinstance(first, Branch):
            while end < len(lifted) and isinstance(lifted[end], Branch) and lifted[end].source is first.source:
                end += 1
            if end - start > 1:
                yield start, lifted[start:end]
        start = end


def _lift(tensor: gs.Tensor, concat: gs.Node, ctx: Context, ranks) -> Branch | None:
    try:
        return lift_branch(tensor, 1, concat, ctx, ranks)
    except Refused as refusal:
        refusal.where = concat.name
        ctx.note(refusal)
        return None


def match(ctx: Context, concat: gs.Node) -> ConcatRun | None:
    if len(concat.inputs) < 2:
        return None
    ranks = layouts(concat.inputs)
    lifted = [_lift(t, concat, ctx, ranks) for t in concat.inputs]
    for start, run in _runs(lifted):
        layout = run[0].layout
        if int(concat.attrs.get("axis", 1)) % layout.rank != layout.axis:
            raise Refused("layout", "the Concat is not along the channel axis", concat.name)
        try:
            merged = spec.merge_concat([b.spec for b in run])
        except Refused as refusal:
            refusal.where = concat.name
            ctx.note(refusal)
        else:
            return ConcatRun(concat, start, tuple(run), merged)  # one run per Concat and sweep
    return None


def build(b: Builder, m: ConcatRun) -> Replacement:
    concat, output = m.concat, m.concat.outputs[0]
    operands = list(concat.inputs)
    anchor = max(m.branches, key=lambda br: br.spec.cost)
    dtype = np.dtype(next((br.dtype for br in m.branches if br.dtype is not None), output.dtype))
    alone = len(m.branches) == len(operands)
    target = output if alone else b.tensor(f"{anchor.name}_stacked", output.dtype)
    lower.emit(b, anchor.name, m.branches[0].source, m.merged, m.branches[0].layout, target, dtype,
               with_bias=any(br.has_bias for br in m.branches))
    if not alone:
        operands[m.start:m.start + len(m.branches)] = [target]
        b.node("Concat", concat.name or "Concat", operands, [output], dict(concat.attrs))
    return b.replacement(m.nodes)


RULE = Rule(NAME, "Concat (channel axis) of conv branches of one tensor → one Conv with stacked kernels",
            ("Concat",), match, build)
