"""fold_pad_conv: a zero Pad on spatial axes before a Conv becomes the Conv's own padding.

Before:  X → Pad(pads p, mode constant, value 0) → T → Conv(W, b, pads q) → Y
After:   X → Conv(W, b, pads p + q) → Y

Conditions:
  1. T is read by the Conv only, and is not a graph output.
  2. The Pad is mode "constant" with value 0 (absent counts as 0), its pads
     are constants, non-negative, and zero on the batch and channel axes.
  3. The Conv's weights are constants read by it only; its auto_pad is explicit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from onnxrep.algebra.spec import Refusal
from onnxrep.ir import lift, lower
from onnxrep.ir.graph import Context, is_op, producer
from onnxrep.rules import Finding, PairMatch, Rule

NAME = "fold_pad_conv"


@dataclass(frozen=True, eq=False)
class PadConv(PairMatch):
    """first: the Pad; second: the Conv."""

    lifted: lift.Lifted
    spatial_pads: tuple[int, ...]  # ONNX order: begins, then ends


def find(ctx: Context) -> Iterator[PadConv | Finding]:
    for conv in ctx.nodes():
        if not is_op(conv, "Conv") or not conv.inputs:
            continue
        pad = producer(conv.inputs[0])
        if not is_op(pad, "Pad"):
            continue
        where = f"{pad.name} → {conv.name}"
        if not ctx.private(conv.inputs[0], conv):
            yield Finding(NAME, where, f"the pad output is also read by {ctx.readers(conv.inputs[0], conv)}")
            continue
        lifted = lift.lift(conv, ctx)
        if isinstance(lifted, Refusal):
            yield Finding(NAME, where, lifted.reason)
            continue
        amounts = lift.zero_pads(pad, ctx, lifted.layout.rank)
        if isinstance(amounts, Refusal):
            yield Finding(NAME, where, amounts.reason)
        else:
            yield PadConv(pad, conv, lifted, amounts)


def rewrite(ctx: Context, match: PadConv) -> None:
    spec = match.lifted.spec
    pads = tuple(a + b for a, b in zip(spec.pads, match.spatial_pads))
    source, output = match.first.inputs[0], match.second.outputs[0]
    ctx.detach(match.nodes)
    lower.emit(ctx, match.second.name, source, replace(spec, pads=pads), match.lifted.layout, output,
               match.lifted.dtype, with_bias=match.lifted.has_bias)


RULE = Rule(NAME, "Pad with zeros on spatial axes → Conv becomes one Conv with larger pads", find, rewrite)
