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
from onnxrep.algebra.spec import ConvSpec, Refusal
from onnxrep.ir import lower
from onnxrep.ir.branches import Branch, layouts, lift_branch
from onnxrep.ir.graph import Context, is_op
from onnxrep.rules import Finding, Rule

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


def find(ctx: Context) -> Iterator[ConcatRun | Finding]:
    for concat in ctx.nodes():
        if not is_op(concat, "Concat") or len(concat.inputs) < 2:
            continue
        ranks = layouts(concat.inputs)
        lifted = [lift_branch(t, 1, concat, ctx, ranks) for t in concat.inputs]
        for start, run in _runs(lifted):
            layout = run[0].layout
            if int(concat.attrs.get("axis", 1)) % layout.rank != layout.axis:
                yield Finding(NAME, concat.name, "the Concat is not along the channel axis")
                break
            merged = spec.merge_concat([b.spec for b in run])
            if isinstance(merged, Refusal):
                yield Finding(NAME, concat.name, merged.reason)
            else:
                yield ConcatRun(concat, start, tuple(run), merged)
                break  # one run per Concat and sweep: the next sweep sees the rest afresh
        for branch in lifted:
            if isinstance(branch, Refusal):
                yield Finding(NAME, concat.name, branch.reason)


def rewrite(ctx: Context, match: ConcatRun) -> None:
    concat, output = match.concat, match.concat.outputs[0]
    operands = list(concat.inputs)
    anchor = max(match.branches, key=lambda b: b.spec.cost)
    dtype = np.dtype(next((b.dtype for b in match.branches if b.dtype is not None), output.dtype))
    alone = len(match.branches) == len(operands)
    ctx.detach(match.nodes)
    target = output if alone else gs.Variable(ctx.unique(f"{anchor.name}_stacked"), dtype=output.dtype)
    lower.emit(ctx, anchor.name, match.branches[0].source, match.merged, match.branches[0].layout, target, dtype,
               with_bias=any(b.has_bias for b in match.branches))
    if not alone:
        operands[match.start:match.start + len(match.branches)] = [target]
        ctx.graph.nodes.append(gs.Node("Concat", ctx.unique(concat.name or "Concat"), dict(concat.attrs),
                                       inputs=operands, outputs=[output]))


RULE = Rule(NAME, "Concat (channel axis) of conv branches of one tensor → one Conv with stacked kernels",
            find, rewrite)
