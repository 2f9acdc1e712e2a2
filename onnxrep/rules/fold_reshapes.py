"""fold_reshapes: a chain of Reshape/Flatten ops becomes one Reshape, or nothing.

Before:  X → Flatten → T → Reshape(shape of X) → Y      (what fold_reshaped_affine leaves of LeViT's
                                                        ``bn(x.flatten(0, 1)).reshape_as(x)``)
After:   the readers of Y read X          (X → Reshape(Y's shape) → Y when the shapes differ)

Reshape and Flatten never move an element in row-major order: a chain of
them is one Reshape to its last shape, and the identity when that is X's.

Conditions:
  1. The chain is Reshape and Flatten only; its intermediates are read by the
     next op only. Dropped: Y is not a graph output (its name would be lost).
  2. Y's shape is static (and equal to X's, to drop the chain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context, is_op, producer
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "fold_reshapes"
OPS = ("Reshape", "Flatten")


@dataclass(frozen=True, eq=False)
class ReshapeChain:
    chain: tuple[gs.Node, ...]  # in order; the last one writes Y
    same: bool  # Y has X's shape
    shape: tuple[int, ...]  # Y's (static) shape

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


def match(ctx: Context, last: gs.Node) -> ReshapeChain | None:
    top = ctx.memo("top-level nodes", lambda: {id(n) for n in ctx.graph.nodes})
    if any(id(reader) not in top for reader in last.outputs[0].outputs):
        return None  # read inside a subgraph
    if any(is_op(reader, *OPS) and ctx.private(last.outputs[0], reader) for reader in last.outputs[0].outputs):
        return None  # not the end of its chain
    chain = _start(last, ctx)
    after = ctx.dims(last.outputs[0])
    if after is None or None in after or 0 in after:
        return None
    same = id(last.outputs[0]) not in ctx.graph_outputs and ctx.dims(chain[0].inputs[0]) == after
    return ReshapeChain(tuple(chain), same, tuple(after)) if same or len(chain) > 1 else None


def build(b: Builder, m: ReshapeChain) -> Replacement:
    source, output = m.chain[0].inputs[0], m.chain[-1].outputs[0]
    if m.same:  # the chain is the identity: its readers read its input
        return b.replacement(m.chain, rewires=((output, source),))
    name = b.name(m.chain[-1].name or "Reshape")
    b.node("Reshape", name, [source, b.constant(f"{name}.shape", np.array(m.shape, np.int64))], [output], named=True)
    return b.replacement(m.chain)


RULE = Rule(NAME, "Reshape/Flatten chain → one Reshape to its static shape, or nothing when that is its input's",
            OPS, match, build)
