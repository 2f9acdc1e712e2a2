"""drop_noop_casts: a Cast to the type its input already has is dropped; its readers read the input.

PEFT's LoRA layers end with ``result.to(previous_dtype)``, which TorchScript
exports as ``Cast(to=FLOAT)`` of a tensor that is already float: between a
merged conv and its BatchNormalization it blocks the fold, elsewhere it is a
node to run. The ONNX spec's Cast to the input's own type is the identity, so
dropping it is exact bit for bit.

Before:  X (float) → Cast(to=FLOAT) → T → readers
After:   X (float) → readers

Conditions:
  1. It casts to a float type (re-parameterization works on float tensors;
     integer no-op Casts are index arithmetic, fold_constants' business).
  2. X's element type is known for sure (ir.graph.Context.elem_type: a
     constant's own, or ONNX type inference through each op's schema from the
     graph's inputs and weights: TorchScript exports hold no type of their
     intermediates) and equals ``to``. An unknown type leaves the Cast.
  3. T is not a graph output (its name is part of the model's interface).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxrep.ir.graph import Context
from onnxrep.rewrite.contract import Builder, NodeMatch, Replacement, Rule

NAME = "drop_noop_casts"
FLOAT_TYPES = frozenset((TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16))


@dataclass(frozen=True, eq=False)
class NoOpCast(NodeMatch):
    """A Cast whose input already has the type it casts to."""


def match(ctx: Context, cast: gs.Node) -> NoOpCast | None:
    if len(cast.inputs) != 1 or len(cast.outputs) != 1 or id(cast.outputs[0]) in ctx.graph_outputs:
        return None
    to = cast.attrs.get("to")
    if to not in FLOAT_TYPES or ctx.elem_type(cast.inputs[0]) != int(to):
        return None
    return NoOpCast(cast)


def build(b: Builder, m: NoOpCast) -> Replacement:
    return b.replacement(m.nodes, rewires=((m.node.outputs[0], m.node.inputs[0]),))


RULE = Rule(NAME, "Cast to the float type its input already has → dropped", ("Cast",), match, build)
