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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context
from onnxrep.ir.replacement import Builder, NewNode, Replacement

__all__ = ["Builder", "NewNode", "NodeMatch", "PairMatch", "Replacement", "Rule"]


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    anchors: tuple[str, ...]
    match: Callable[[Context, gs.Node], Any]
    build: Callable[[Builder, Any], Replacement]


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
