"""The rules, as an explicit pipeline. A rule is a module with one :class:`Rule`.

A rule's ``find`` walks the graph (``ctx.nodes()``) without changing it and
yields matches (any object with a ``nodes`` tuple: the nodes its rewrite
removes or replaces, and ``output``: the name of the tensor it rewrites, which
stays the same from run to run; the engine keys each applied rewrite by it,
numbered ``#N`` when a rule rewrites one tensor again, for rollback) and
:class:`Finding` refusals. The engine applies each match with ``rewrite`` as
soon as it is yielded, before ``find`` resumes: ``find`` must not carry what it
learnt about the graph from one match to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs

from onnxrep.ir.graph import Context


@dataclass(frozen=True)
class Finding:
    """A refused rewrite: where in the graph, and why it would not be exact or worth it."""

    rule: str
    where: str
    reason: str


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


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    find: Callable[[Context], Iterator[Any]]
    rewrite: Callable[[Context, Any], None]


# The rule modules import Rule and Finding from here, so they come after them.
from onnxrep.rules import (  # noqa: E402
    fold_bias_pad,
    fold_constants,
    fold_conv_affine,
    fold_pad_conv,
    fold_pre_affine,
    fold_reshaped_affine,
    fold_reshapes,
    fold_sequential,
    fold_whole_write,
    merge_concat,
    merge_parallel,
)

#: Order matters within a sweep: folding Conv→BN (and other affines) first turns conv-BN branches into
#: plain Conv branches that merge_parallel can lift.
DEFAULT_RULES: tuple[Rule, ...] = (
    fold_constants.RULE,
    fold_whole_write.RULE,
    fold_pad_conv.RULE,
    fold_conv_affine.RULE,
    fold_reshaped_affine.RULE,
    fold_reshapes.RULE,
    fold_bias_pad.RULE,
    fold_sequential.RULE,
    fold_pre_affine.RULE,
    merge_parallel.RULE,
    merge_concat.RULE,
)

RULES_BY_NAME = {rule.name: rule for rule in DEFAULT_RULES}
