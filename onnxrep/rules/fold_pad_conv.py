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

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import lift
from onnxrep.graph import Context, is_op, producer
from onnxrep.rules import Finding, PairMatch, Rule
from onnxrep.spec import Refusal

NAME = "fold_pad_conv"


@dataclass(frozen=True, eq=False)
class PadConv(PairMatch):
    """first: the Pad; second: the Conv."""

    lifted: lift.LiftedConv
    spatial_pads: tuple[int, ...]  # ONNX order: begins, then ends


def _zero_pads(pad: gs.Node, ctx: Context, rank: int) -> tuple[int, ...] | Refusal:
    """The pad's amounts on the spatial axes, if it is a provable zero pad of those only."""
    mode = pad.attrs.get("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return Refusal(f"Pad mode is {mode}, not constant")
    if "pads" in pad.attrs:  # opset < 11
        amounts, value = np.asarray(pad.attrs["pads"]), np.asarray(pad.attrs.get("value", 0.0))
    else:
        amounts = ctx.constant(pad.inputs[1], "pads") if len(pad.inputs) > 1 else Refusal("no pads")
        if isinstance(amounts, Refusal):
            return amounts
        value = np.asarray(0.0)
        if len(pad.inputs) > 2 and not pad.inputs[2].is_empty():
            value = ctx.constant(pad.inputs[2], "pad value")
            if isinstance(value, Refusal):
                return value
        if len(pad.inputs) > 3 and not pad.inputs[3].is_empty():  # opset 18 axes
            axes = ctx.constant(pad.inputs[3], "pad axes")
            if isinstance(axes, Refusal):
                return axes
            full = np.zeros(2 * rank, np.int64)
            half = len(axes)
            for i, axis in enumerate(np.asarray(axes) % rank):
                full[axis], full[axis + rank] = amounts[i], amounts[i + half]
            amounts = full
    amounts = np.asarray(amounts, np.int64).reshape(-1)
    if np.any(np.asarray(value) != 0):
        return Refusal("Pad value is not 0")
    if amounts.size != 2 * rank:
        return Refusal(f"Pad has {amounts.size} amounts for rank {rank}")
    if np.any(amounts < 0):
        return Refusal("Pad crops (negative pads)")
    begins, ends = amounts[:rank], amounts[rank:]
    if begins[:2].any() or ends[:2].any():
        return Refusal("Pad pads the batch or channel axis")
    return tuple(int(v) for v in (*begins[2:], *ends[2:]))


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
        lifted = lift.conv(conv, ctx)
        if isinstance(lifted, Refusal):
            yield Finding(NAME, where, lifted.reason)
            continue
        amounts = _zero_pads(pad, ctx, lifted.spec.weight.ndim)
        if isinstance(amounts, Refusal):
            yield Finding(NAME, where, amounts.reason)
        else:
            yield PadConv(pad, conv, lifted, amounts)


def rewrite(ctx: Context, match: PadConv) -> None:
    spec = match.lifted.spec
    pads = tuple(a + b for a, b in zip(spec.pads, match.spatial_pads))
    source, output = match.first.inputs[0], match.second.outputs[0]
    ctx.detach(match.nodes)
    ctx.emit_conv(match.second.name, source, replace(spec, pads=pads), output, match.lifted.dtype,
                  with_bias=match.lifted.has_bias)


RULE = Rule(NAME, "Pad with zeros on spatial axes → Conv becomes one Conv with larger pads", find, rewrite)
