"""The rewrite loop: rules matched on the nodes of their anchor op types, replacements applied one
at a time, sweeps until one changes nothing; every applied rewrite in the ledger.

The engine is the only writer of the graph (see onnxrep.rewrite.contract). A rule
that raises anything but a refusal costs that match, not the run: the match is
left as it was, reported as a refusal with code "rule-error", and verification
judges the rest (``RULE_ERRORS = "raise"`` makes it an exception: the test suite
sets it, so that bugs are not hidden).
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Sequence

import onnx_graphsurgeon as gs

from onnxrep.ir.convert import release
from onnxrep.ir.graph import Context, is_op, nbytes, producer
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule
from onnxrep.rewrite.ledger import Finding, Ledger, Rewrite

MAX_SWEEPS = 50
#: "refuse": a rule that raises refuses that match (the default); "raise": the exception propagates.
RULE_ERRORS = "refuse"

Key = tuple[str, str, int]  # Rewrite.key: (rule, anchor, ordinal)


class RuleBug(Exception):
    """A replacement that breaks the contract (it leaves a tensor others read without a producer)."""


def rewrite_graph(graph: gs.Graph, rules: Sequence[Rule], overridable: frozenset[str] = frozenset(),
                  allowed: set[Key] | None = None, blocked: set[Key] | frozenset = frozenset()) -> Ledger:
    """Apply ``rules`` to a fixed point and return the ledger. Refusals are those of the last sweep
    (the final graph). ``allowed`` (when given) limits the run to those keys, ``blocked`` holds keys
    never to apply: rollback uses both."""
    ledger = Ledger()
    done: Counter[tuple[str, str]] = Counter()  # rewrites applied so far, per (rule, anchor)
    copied: dict[str, gs.Constant] = {}  # shared weights a rewrite read and left to their other readers
    for sweep in range(1, MAX_SWEEPS + 1):
        ledger.sweeps = sweep
        findings: list[Finding] = []
        errors: list[str] = []  # tracebacks of rules that raised, this sweep
        changed = False
        for rule in rules:
            ctx = Context.of(graph, overridable)
            touched = False
            # Each match is applied as soon as it is found, so that only one match's float64 kernels
            # are alive at a time; the nodes cut out meanwhile are skipped (ctx.nodes()).
            for node in ctx.nodes():
                if not node.outputs or not is_op(node, *rule.anchors):
                    continue
                match = _attempt(rule, node, findings, errors, ctx, rule.match, ctx, node)
                if match is None:
                    continue
                anchor = match.output
                key = (rule.name, anchor, done[(rule.name, anchor)] + 1)
                if key in blocked or (allowed is not None and key not in allowed):
                    continue  # rolled back (the caller reports it), or outside a bisection prefix
                rewrite = _apply(rule, ctx, match, key, findings, errors, copied)
                if rewrite is not None:
                    done[(rule.name, anchor)] += 1
                    ledger.applied.append(rewrite)
                    touched = True
            if touched:
                changed = True
                graph.cleanup().toposort()
        if not changed:
            ledger.refusals = list(dict.fromkeys(findings))
            ledger.errors = errors
            # A shared weight costs a copy only while something still reads it: when every
            # reader was rewritten, the original went away and the copy cost nothing.
            kept = graph.tensors()
            ledger.shared_copies = {name: nbytes(t) or 0 for name, t in copied.items() if kept.get(name) is t}
            return ledger
    return ledger


def _attempt(rule: Rule, node: gs.Node, findings: list[Finding], errors: list[str], ctx: Context, step, *args):
    """``step(*args)`` (a rule's match or build), its refusals and notes recorded as findings; an
    unexpected exception is a refusal with code "rule-error" (or raised, see RULE_ERRORS)."""
    where = node.name or node.op
    ctx.notes.clear()
    try:
        return step(*args)
    except Refused as refusal:
        findings.append(Finding(rule.name, refusal.where or where, refusal.reason, refusal.code))
        return None
    except Exception as error:  # noqa: BLE001 (a bug in one rule costs that match, not the model)
        if RULE_ERRORS == "raise":
            raise
        findings.append(Finding(rule.name, where, f"internal error in the rule, left as it was: "
                                                  f"{type(error).__name__}: {error}", "rule-error"))
        errors.append(f"{rule.name} at {where}:\n{traceback.format_exc()}")
        return None
    finally:
        findings.extend(Finding(rule.name, n.where or where, n.reason, n.code) for n in ctx.notes)
        ctx.notes.clear()


def _apply(rule: Rule, ctx: Context, match, key: Key, findings: list[Finding], errors: list[str],
           copied: dict) -> Rewrite | None:
    """Build the match's replacement and apply it; None when the rule refused or failed."""
    anchor_node = next((n for n in match.nodes if any(t.name == match.output for t in n.outputs)), None)
    node_name = (anchor_node.name or anchor_node.op) if anchor_node is not None else match.output
    node_op = anchor_node.op if anchor_node is not None else ""
    freed = {n.name for n in match.nodes if n.name in ctx.names}
    ctx.names -= freed  # the new nodes may take the names of the ones they replace

    replacement = _attempt(rule, anchor_node or match.nodes[0], findings, errors, ctx, _build, rule, ctx, match)
    if replacement is None:
        ctx.names |= freed
        return None
    weights = [t for n in replacement.removes for t in n.inputs if isinstance(t, gs.Constant)]
    read = _weights_read(replacement.removes)
    replaced = tuple(t.name for n in replacement.removes for t in n.outputs if t.name != key[1])
    _write(replacement, ctx)
    release(weights, ctx.graph_outputs)
    copied.update({name: t for name, (t, others) in read.items() if _left_to_others(t, others)})
    return Rewrite(rule.name, key[1], key[2], node_name, node_op, replaced, replacement.renamed)


def _build(rule: Rule, ctx: Context, match) -> Replacement:
    replacement = rule.build(Builder(ctx), match)
    _check(replacement, match.output, ctx)
    return replacement


def _check(replacement: Replacement, anchor: str, ctx: Context) -> None:
    """The contract, before anything is written: every tensor the removed nodes wrote that anything
    outside them still reads (or a graph output) is written again, rewired, made a constant, or read
    only by Shape/Size nodes that move to a tensor of the same shape; the anchor is written again."""
    removed = {id(n) for n in replacement.removes}
    written = {id(t) for n in replacement.nodes for t in n.outputs} | {id(t) for t, _ in replacement.constants}
    rewired = {id(old) for old, _ in replacement.rewires}
    measured = {id(old) for old, _ in replacement.same_shape}
    for node in replacement.removes:
        for tensor in node.outputs:
            if id(tensor) in written or id(tensor) in rewired:
                continue
            if id(tensor) in ctx.graph_outputs:
                raise RuleBug(f"the replacement drops graph output '{tensor.name}'")
            readers = [r for r in tensor.outputs if id(r) not in removed]
            if id(tensor) in measured:
                readers = [r for r in readers if not is_op(r, "Shape", "Size")]
            if readers:
                raise RuleBug(f"the replacement drops '{tensor.name}', which {readers[0].name or readers[0].op} reads")
            if tensor.name == anchor:
                raise RuleBug(f"the replacement does not write the tensor it rewrites, '{anchor}'")


def _write(replacement: Replacement, ctx: Context) -> None:
    """Apply a checked replacement: the only place the graph is edited."""
    ctx.detach(replacement.removes)
    for tensor, value in replacement.constants:
        tensor.to_constant(value)
    for new in replacement.nodes:
        ctx.graph.nodes.append(gs.Node(new.op, new.name, new.attrs, list(new.inputs), list(new.outputs)))
    for old, new in replacement.rewires:
        _move_readers(old, new, lambda reader: True)
    for old, new in replacement.same_shape:
        _move_readers(old, new, lambda reader: is_op(reader, "Shape", "Size"))


def _move_readers(old: gs.Tensor, new: gs.Tensor, which) -> None:
    for reader in [r for r in old.outputs if which(r)]:
        for i, tensor in enumerate(reader.inputs):
            if tensor is old:
                reader.inputs[i] = new


def _weights_read(nodes) -> dict[str, tuple[gs.Constant, set[int]]]:
    """The initializers the matched nodes read, directly or through Identity chains (a dedup'd export),
    each with the ids of its readers outside the match."""
    matched = {id(n) for n in nodes}
    read = {}
    for node in nodes:
        for tensor in node.inputs:
            seen = 0
            while isinstance(tensor, gs.Variable) and seen < 16 and is_op(producer(tensor), "Identity"):
                tensor, seen = producer(tensor).inputs[0], seen + 1
            if isinstance(tensor, gs.Constant):
                read[tensor.name] = (tensor, {id(n) for n in tensor.outputs} - matched)
    return read


def _left_to_others(tensor: gs.Constant, others: set[int]) -> bool:
    """Whether a rewrite folded a copy of a shared weight: the weight is now read only by (some of)
    the readers it had outside the match, no longer by the match (a rewrite that keeps a matched
    node, or points new readers at the weight, copied nothing)."""
    readers = {id(n) for n in tensor.outputs}
    return bool(readers) and readers <= others
