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

from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs

from onnxrep.ir import lift, lower
from onnxrep.ir.graph import Context, is_op, producer
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, PairMatch, Replacement, Rule

NAME = "fold_pad_conv"


@dataclass(frozen=True, eq=False)
class PadConv(PairMatch):
    """first: the Pad; second: the Conv."""

    lifted: lift.Lifted
    spatial_pads: tuple[int, ...]  # ONNX order: begins, then ends


def match(ctx: Context, conv: gs.Node) -> PadConv | None:
    pad = producer(conv.inputs[0]) if conv.inputs else None
    if not is_op(pad, "Pad"):
        return None
    where = f"{pad.name} → {conv.name}"
    if not ctx.private(conv.inputs[0], conv):
        raise Refused("read-elsewhere", f"the pad output is also read by {ctx.readers(conv.inputs[0], conv)}", where)
    try:
        lifted = lift.lift(conv, ctx)
        return PadConv(pad, conv, lifted, lift.zero_pads(pad, ctx, lifted.layout.rank))
    except Refused as refusal:
        refusal.where = where
        raise


def build(b: Builder, m: PadConv) -> Replacement:
    spec = m.lifted.spec
    pads = tuple(a + c for a, c in zip(spec.pads, m.spatial_pads))
    lower.emit(b, m.second.name, m.first.inputs[0], replace(spec, pads=pads), m.lifted.layout, m.second.outputs[0],
               m.lifted.dtype, with_bias=m.lifted.has_bias)
    return b.replacement(m.nodes)


RULE = Rule(NAME, "Pad with zeros on spatial axes → Conv becomes one Conv with larger pads", ("Conv",), match, build)
