"""What the engine did, as values: the rewrites it applied (:class:`Rewrite`) and the ones it refused
(:class:`Finding`). Verification and rollback read these; nothing parses a name back out of a string."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """A refused rewrite: where in the graph, why (in words), and its stable ``code`` (onnxrep.refusal.CODES)."""

    rule: str
    where: str
    reason: str
    code: str = ""


@dataclass(frozen=True)
class Rewrite:
    """One applied rewrite.

    ``anchor`` is the tensor it rewrites (the match's output, which keeps its name);
    ``ordinal`` counts the rewrites of one rule at one anchor in a run (two
    merge_concat runs on one Concat are 1 and 2), so ``key`` is the same from
    run to run as long as the rewrites before it are. ``node`` names the node
    that computed the anchor, as refusals name nodes, and ``op`` its type. ``replaced``: every
    tensor the matched nodes wrote (the ones that vanish too); ``renamed``:
    tensors whose values changed and which now go by a new name (old, new).
    """

    rule: str
    anchor: str
    ordinal: int
    node: str
    op: str = ""  # the type of that node (the report says what housekeeping did: an Identity dropped, ...)
    replaced: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        return self.rule, self.anchor, self.ordinal

    @property
    def touches(self) -> frozenset[str]:
        """The original tensors this rewrite changed or removed: its region in the original graph."""
        return frozenset({self.anchor, *self.replaced, *(old for old, _ in self.renamed)})


@dataclass(frozen=True)
class RolledBack:
    """A rewrite verification undid, and why."""

    rewrite: Rewrite
    reason: str

    @property
    def rule(self) -> str:
        return self.rewrite.rule

    @property
    def where(self) -> str:
        return self.rewrite.node


@dataclass
class Ledger:
    """A run of the engine: applied rewrites in order, the last sweep's refusals, and the rule errors."""

    applied: list[Rewrite] = field(default_factory=list)
    refusals: list[Finding] = field(default_factory=list)
    sweeps: int = 0
    #: Shared weights a rewrite folded into a private copy, still kept for their other readers: name -> bytes.
    shared_copies: dict[str, int] = field(default_factory=dict)
    #: Tracebacks of rules that raised (each also a refusal with code "rule-error"), for --debug.
    errors: list[str] = field(default_factory=list)
