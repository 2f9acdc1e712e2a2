"""drop_reshape_roundtrip: Reshape/Flatten chains that give a tensor back its own shape are dropped.

Before:  X → Flatten → T → Reshape(shape of X) → Y      (what fold_reshaped_affine leaves of LeViT's
                                                        ``bn(x.flatten(0, 1)).reshape_as(x)``)
After:   the readers of Y read X

Reshape and Flatten never move an element in row-major order, so a chain of
them whose output has the input's shape is the identity.

Conditions:
  1. The chain is Reshape and Flatten only; its intermediates are read by the
     next op only; Y is not a graph output (its name would be lost).
  2. X's and Y's shapes are static and equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxrep.graph import Context, is_op, producer
from onnxrep.rules import Rule

NAME = "drop_reshape_roundtrip"
OPS = ("Reshape", "Flatten")


@dataclass(frozen=True, eq=False)
class Roundtrip:
    chain: tuple[gs.Node, ...]  # in order; the last one writes Y

    @property
    def output(self) -> str:
        return self.chain[-1].outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return self.chain


def _start(last: gs.Node, ctx: Context) -> list[gs.Node]:
    """The longest chain of private Reshape/Flatten ops that ends in ``last``."""
    chain = [last]
    while is_op(node := producer(chain[0].inputs[0]), *OPS) and ctx.private(node.outputs[0], chain[0]):
        chain.insert(0, node)
    return chain


def find(ctx: Context) -> Iterator[Roundtrip]:
    top = {id(n) for n in ctx.graph.nodes}
    for last in ctx.nodes():
        if not is_op(last, *OPS) or id(last.outputs[0]) in ctx.graph_outputs:
            continue
        if any(id(reader) not in top for reader in last.outputs[0].outputs):
            continue  # read inside a subgraph
        if any(is_op(reader, *OPS) and ctx.private(last.outputs[0], reader) for reader in last.outputs[0].outputs):
            continue  # not the end of its chain
        chain = _start(last, ctx)
        after = ctx.dims(last.outputs[0])
        if after is None or None in after:
            continue
        for i, node in enumerate(chain):  # the longest round trip: from the earliest input with Y's shape
            if ctx.dims(node.inputs[0]) == after:
                yield Roundtrip(tuple(chain[i:]))
                break


def rewrite(ctx: Context, match: Roundtrip) -> None:
    source, output = match.chain[0].inputs[0], match.chain[-1].outputs[0]
    for reader in list(output.outputs):
        for i, tensor in enumerate(reader.inputs):
            if tensor is output:
                reader.inputs[i] = source
    ctx.detach(match.chain)


RULE = Rule(NAME, "Reshape/Flatten chain back to its input's static shape → dropped", find, rewrite)
