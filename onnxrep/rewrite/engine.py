"""The rewrite loop: rules applied in sweeps until a sweep changes nothing, each applied
rewrite under a key of its own (for rollback)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import onnx_graphsurgeon as gs

# api.py reads the model conversion through this module.
from onnxrep.ir.convert import export, load_weights, overridable_initializers, release, skeleton  # noqa: F401
from onnxrep.ir.graph import Context, is_op, nbytes, producer
from onnxrep.report.report import Report
from onnxrep.rules import Finding, Rule

MAX_SWEEPS = 50


def rewrite_graph(graph: gs.Graph, rules: Sequence[Rule], report: Report,
                  overridable: frozenset[str] = frozenset(),
                  allowed: set[tuple[str, str]] | None = None,
                  blocked: set[tuple[str, str]] | frozenset = frozenset()) -> None:
    """Apply ``rules`` to a fixed point. Refusals are those of the last sweep (the final graph).

    The engine keys each rewrite (see :func:`rewrite_key`); ``report.applied``
    lists the keys in order. ``allowed`` (when given) limits the run to those
    keys, ``blocked`` holds keys never to apply: rollback uses both.
    """
    done: Counter[tuple[str, str]] = Counter()  # rewrites applied so far, per (rule, tensor)
    copied: dict[str, gs.Constant] = {}  # shared weights a rewrite read and left to their other readers
    for sweep in range(1, MAX_SWEEPS + 1):
        report.sweeps = sweep
        findings: list[Finding] = []
        changed = False
        for rule in rules:
            ctx = Context.of(graph, overridable)
            touched: set[int] = set()
            # Each match is rewritten as soon as it is found, so that only one match's float64
            # kernels are alive at a time. Rules walk a snapshot of the nodes (ctx.nodes())
            # skipping the ones cut out meanwhile, and look at the graph as it is now.
            for item in rule.find(ctx):
                if isinstance(item, Finding):
                    findings.append(item)
                    continue
                at = (rule.name, item.output)  # read before the rewrite detaches the nodes
                key = rewrite_key(at, done)
                if key in blocked or (allowed is not None and key not in allowed):
                    continue  # rolled back (the caller reports it), or outside a bisection prefix
                ids = {id(n) for n in item.nodes}
                if ids & touched:
                    continue  # a safety net: rules match on the live graph, so this does not happen
                touched |= ids
                weights = [t for n in item.nodes for t in n.inputs if isinstance(t, gs.Constant)]
                report.applied_at.setdefault(key, _producer_name(item))
                read = _weights_read(item.nodes)
                rule.rewrite(ctx, item)
                release(weights, ctx.graph_outputs)
                copied.update({name: t for name, (t, others) in read.items() if _left_to_others(t, others)})
                report.fired[rule.name] += 1
                done[at] += 1
                report.applied.append(key)
            if touched:
                changed = True
                graph.cleanup().toposort()
        if not changed:
            report.refusals = list(dict.fromkeys(findings))
            # A shared weight costs a copy only while something still reads it: when every
            # reader was rewritten, the original went away and the copy cost nothing.
            kept = graph.tensors()
            report.shared_copies = {name: nbytes(t) or 0 for name, t in copied.items() if kept.get(name) is t}
            return


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


def _producer_name(match) -> str:
    """The name of the matched node that computes the rewritten tensor: how the report names a rewrite,
    as refusals name nodes."""
    node = next((n for n in match.nodes if any(t.name == match.output for t in n.outputs)), None)
    return (node.name or node.op) if node is not None else match.output


def rewrite_key(at: tuple[str, str], done: Counter[tuple[str, str]]) -> tuple[str, str]:
    """The key of the next rewrite of a rule at a tensor, ``at = (rule, output)``: ``at`` for the first
    applied in a run, ``(rule, "output#N")`` for the N-th (two merge_concat runs on one Concat).

    Numbered by the rewrites *applied* so far, so a key is the same from run to run as long as the
    rewrites before it are. A blocked key stays blocked for the rest of the run: the next rewrite
    at that tensor would take its number, so it is not applied either (conservative, never wrong).
    """
    rule, output = at
    count = done[at]
    return at if not count else (rule, f"{output}#{count + 1}")
