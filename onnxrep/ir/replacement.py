"""What a rewrite makes, in graph terms: a :class:`Replacement` (nodes removed, nodes added, tensors
rewired or made constant), built with a :class:`Builder` that never touches the graph. The engine
(onnxrep.rewrite.engine) checks and applies it; see onnxrep.rewrite.contract for the whole contract."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context


@dataclass(frozen=True, eq=False)
class NewNode:
    """A node to add: made into a graphsurgeon node only when the engine applies the replacement
    (a graphsurgeon node links itself into its tensors when created)."""

    op: str
    name: str
    inputs: tuple[gs.Tensor, ...]
    outputs: tuple[gs.Tensor, ...]
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Replacement:
    """What a rewrite does, as data.

    ``removes``: the matched nodes; ``nodes``: what computes their results now.
    ``rewires``: (old, new) pairs: the readers of ``old`` (a tensor that vanishes)
    read ``new`` instead. ``constants``: (tensor, value): a computed tensor that
    becomes a constant of that value, keeping its name and readers.
    ``same_shape``: (old, new): the Shape and Size readers of ``old`` read ``new``,
    which has the same shape (a BatchNormalization folded away). ``renamed``:
    (old name, new name) of tensors whose values change and so get a new name.
    ``notes``: partial refusals of the rewrite, for the report.
    """

    removes: tuple[gs.Node, ...]
    nodes: tuple[NewNode, ...] = ()
    rewires: tuple[tuple[gs.Tensor, gs.Tensor], ...] = ()
    constants: tuple[tuple[gs.Variable, np.ndarray], ...] = ()
    same_shape: tuple[tuple[gs.Tensor, gs.Tensor], ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()


class Builder:
    """Makes the parts of one replacement; names are unique in the graph (the matched nodes' own
    names are free again: a rewrite's node is named after the node it replaces)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._nodes: list[NewNode] = []

    @property
    def opset(self) -> int:
        return self.ctx.graph.opset

    def name(self, base: str) -> str:
        return self.ctx.unique(base)

    def tensor(self, base: str, dtype) -> gs.Variable:
        """A fresh intermediate tensor."""
        return gs.Variable(self.ctx.unique(base), dtype=dtype)

    def constant(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.ctx.unique(base), np.ascontiguousarray(value))

    def node(self, op: str, name: str, inputs: Sequence[gs.Tensor], outputs: Sequence[gs.Tensor],
             attrs: dict | None = None, *, named: bool = False) -> NewNode:
        """A node named ``name`` (made unique, unless ``named``: a name this builder gave) computing ``outputs``."""
        node = NewNode(op, name if named else self.ctx.unique(name or op), tuple(inputs), tuple(outputs),
                       dict(attrs or {}))
        self._nodes.append(node)
        return node

    def replacement(self, removes: Iterable[gs.Node], **parts) -> Replacement:
        """The replacement of ``removes`` by the nodes made so far (and ``parts``, see Replacement)."""
        return Replacement(tuple(removes), tuple(self._nodes), **parts)


