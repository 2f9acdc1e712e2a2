"""The rule contract: a rule proposes, the engine applies.

A rule is data and two functions (:class:`Rule`):

- ``anchors``: the op types a match starts from; the engine calls ``match``
  on every node of those types (default domain) in the graph as it is now.
- ``match(ctx, node)`` reads the graph through ``ctx`` and returns a frozen
  match, or None when the node is no candidate at all, or raises
  :class:`~onnxrep.refusal.Refused` (a stable code and a reason) when it is a
  candidate that would not be exact or worth it. A partial refusal ("merged
  these operands, not that one") is recorded with ``ctx.note`` and the match
  still returned. A match has ``nodes`` (the nodes its rewrite replaces) and
  ``output`` (the name of the tensor it rewrites: the rewrite writes that very
  tensor, so it keeps its name; rollback and the local checks key on it).
- ``build(builder, match)`` returns the :class:`Replacement`, made with the
  :class:`Builder`: new nodes, new constants and tensors, which tensors the
  readers of a vanished one read instead. It never touches the graph.

The engine (onnxrep.rewrite.engine) is the only writer of the graph: it checks
the replacement (no tensor that anything outside the match reads is left
without a producer), applies it, and records it in the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    anchors: tuple[str, ...]
    match: Callable[[Context, gs.Node], Any]
    build: Callable[[Builder, Any], Replacement]


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


@dataclass(frozen=True, eq=False)
class NodeMatch:
    """A match of one node that a rewrite replaces."""

    node: gs.Node

    @property
    def output(self) -> str:
        return self.node.outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.node,)


@dataclass(frozen=True, eq=False)
class PairMatch:
    """A match of two chained nodes, ``first → second``, that a rewrite turns into one."""

    first: gs.Node
    second: gs.Node

    @property
    def output(self) -> str:
        return self.second.outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.first, self.second)
