"""What a run did, as data (:class:`Report`) and as the table the CLI prints."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxrep.rewrite.ledger import Finding, Ledger, Rewrite, RolledBack

if TYPE_CHECKING:
    from onnxrep.verify.check import Verification


@dataclass(frozen=True)
class ModelStats:
    ops: dict[str, int]
    nodes: int
    params: int
    size_bytes: int | None  # None until written: ByteSize() of a big model costs seconds

    @classmethod
    def of(cls, model: onnx.ModelProto, size_bytes: int | None = None) -> ModelStats:
        graph = model.graph
        params = sum(int(np.prod(t.dims)) for t in graph.initializer)
        params += sum(int(np.prod(a.t.dims)) for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.HasField("t"))
        ops = Counter(n.op_type for n in graph.node)
        return cls(dict(sorted(ops.items())), len(graph.node), params, size_bytes)


@dataclass
class Report:
    before: ModelStats | None = None
    after: ModelStats | None = None
    fired: Counter = field(default_factory=Counter)
    refusals: list[Finding] = field(default_factory=list)
    verification: Verification | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    sweeps: int = 0
    applied: list[Rewrite] = field(default_factory=list)  # the engine's ledger, in order
    dropped: list[RolledBack] = field(default_factory=list)  # rewrites rolled back: verification failed
    #: Shared weights a rewrite folded into a private copy, still kept for their other readers: name -> bytes.
    shared_copies: dict[str, int] = field(default_factory=dict)
    #: Tracebacks of rules that raised (each also a refusal with code "rule-error"), shown with --debug.
    rule_errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ledger: Ledger) -> Report:
        return cls(fired=Counter(r.rule for r in ledger.applied), refusals=ledger.refusals, sweeps=ledger.sweeps,
                   applied=ledger.applied, shared_copies=ledger.shared_copies, rule_errors=ledger.errors)

    @property
    def shared_copy_bytes(self) -> int:
        """The bytes the model grew by copying shared weights."""
        return sum(self.shared_copies.values())

    def to_dict(self) -> dict:
        return {
            "before": asdict(self.before) if self.before else None,
            "after": asdict(self.after) if self.after else None,
            "rules_fired": dict(self.fired),
            "refusals": [asdict(f) for f in self.refusals],
            "verification": _verification_dict(self.verification),
            "seconds": self.seconds,
            "sweeps": self.sweeps,
            "dropped": [{"rule": d.rule, "where": d.where, "reason": d.reason, "anchor": d.rewrite.anchor,
                         "ordinal": d.rewrite.ordinal} for d in self.dropped],
            "rule_errors": len(self.rule_errors),
            "shared_copies": {"bytes": self.shared_copy_bytes, "weights": dict(self.shared_copies)},
        }

    def format(self, verbose: bool = False) -> str:
        lines = []
        if self.before and self.after:
            lines += _comparison(self.before, self.after)
        lines.append("")
        lines += self.fired_lines(verbose)
        if self.dropped:
            verified = self.verification is not None and self.verification.passed
            lines.append(f"rolled back ({len(self.dropped)})" + (", the output verifies without them:" if verified
                                                                 else ", and the output still differs:"))
            lines += [f"  {f.rule}: {f.where}: {f.reason}" for f in self.dropped]
        if self.rule_errors:
            lines.append(f"rule errors: {len(self.rule_errors)} match(es) left as they were because a rule raised "
                         "(a bug: please report it; --debug shows the tracebacks)")
        if self.refusals:
            lines.append(f"left as they were ({len(self.refusals)}){_by_reason(self.refusals, verbose)}:")
            lines += refusal_lines(self.refusals, verbose)
        if self.shared_copies:
            names = ", ".join(list(self.shared_copies)[:3]) + (", …" if len(self.shared_copies) > 3 else "")
            lines.append(f"shared weights copied: {len(self.shared_copies)} ({names}), "
                         f"+{self.shared_copy_bytes:,} bytes (their other readers keep the originals)")
        lines += self.hints()
        lines.append(_verification_line(self.verification))
        if self.seconds:
            lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


    def fired_lines(self, verbose: bool = False) -> list[str]:
        """The count per rule, housekeeping apart; with ``verbose``, every rewrite by node name."""
        main = {k: v for k, v in self.fired.items() if k not in HOUSEKEEPING}
        house = {k: v for k, v in self.fired.items() if k in HOUSEKEEPING}
        if main:
            lines = ["rules fired: " + _counts(main)]
        elif self.refusals:
            lines = [f"rules fired: none; {len(self.refusals)} candidate(s) refused, each with its reason below"]
        else:
            lines = ["rules fired: none (no training-time branches found: a deploy graph already?)"]
        if house:
            lines.append("housekeeping: " + self._housekeeping())
        if verbose:
            lines += self.rewrite_lines(verbose=True)
        return lines

    def _housekeeping(self) -> str:
        """``fold_constants ×30 (20 nodes of constant arithmetic folded, 10 Identity aliases of weights dropped)``."""
        done: dict[str, Counter] = {}
        for rewrite in self.applied:
            if rewrite.rule in HOUSEKEEPING:
                done.setdefault(rewrite.rule, Counter())[_housekeeping_kind(rewrite.rule, rewrite.op)] += 1
        def what(kinds: Counter) -> str:
            if len(kinds) == 1:
                (one, plural), n = next(iter(kinds.items()))
                return plural if n > 1 else one
            return ", ".join(f"{n:,} {plural if n > 1 else one}" for (one, plural), n in kinds.most_common())
        return ", ".join(f"{rule} ×{sum(kinds.values())} ({what(kinds)})" for rule, kinds in sorted(done.items()))

    def rewrite_lines(self, verbose: bool = False) -> list[str]:
        """``  rule: node`` per rewrite, in order, named as refusals are; housekeeping summed unless verbose."""
        lines, house = [], Counter()
        for rule, where in dict.fromkeys(self.rewrites()):  # a join merged over two sweeps is one line
            if rule in HOUSEKEEPING and not verbose:
                house[rule] += 1
            else:
                lines.append(f"  {rule}: {where}")
        if house:
            lines.append(f"  housekeeping: {_counts(house)} (-v lists each)")
        return lines

    def rewrites(self) -> list[tuple[str, str]]:
        """(rule, node name) of each applied rewrite, in order: the node computing the rewritten tensor."""
        return [(r.rule, r.node) for r in self.applied]

    def hints(self) -> list[str]:
        """What would let more rules fire, from the reasons of the refusals."""
        codes = {f.code for f in self.refusals}
        return [f"hint: {hint}" for code, hint in HINTS if code in codes]


#: Rules that tidy what exporters leave rather than re-parameterize: summarized, not listed, unless -v.
HOUSEKEEPING = ("fold_constants", "drop_noop_casts", "fold_constant_sums", "fold_whole_write")


def _housekeeping_kind(rule: str, op: str) -> tuple[str, str]:
    """What a housekeeping rewrite of a node of type ``op`` did: (singular, plural)."""
    if rule == "fold_whole_write":
        return "whole-tensor write replaced by its values", "whole-tensor writes replaced by their values"
    if rule == "drop_noop_casts":
        return "Cast to its input's own type dropped", "Casts to their inputs' own types dropped"
    if rule == "fold_constant_sums":
        return "constant sum folded (float64, rounded once)", "constant sums folded (float64, rounded once)"
    if op == "Identity":
        return "Identity alias of a weight dropped", "Identity aliases of weights dropped"
    if op == "CastLike":
        return "CastLike made a Cast", "CastLikes made Casts"
    return "node of constant arithmetic folded", "nodes of constant arithmetic folded"


#: (a refusal code, what would help).
HINTS = (
    ("graph-input", "weights listed as graph inputs can be overridden at run time, so they are not folded: "
                         "re-export with torch.onnx.export(..., keep_initializers_as_inputs=False)"),
    ("not-constant", "weights computed at run time are not folded: export with do_constant_folding=True, "
                          "or run onnxsim/onnxslim first"),
    ("training-mode", "BatchNormalization in training mode: call model.eval() before exporting"),
    ("shared-weight", "a big weight read by several nodes is not copied; exporters share equal initializers, "
                       "as in a freshly initialized model: export the trained weights"),
)


def refusal_lines(refusals: list[Finding], verbose: bool = False) -> list[str]:
    """Refusals grouped by rule and reason (names aside), most frequent first; ``verbose``: every one."""
    if verbose:
        return [f"  {f.rule}: {f.where}: {f.reason}" for f in refusals]
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in refusals:
        groups.setdefault((f.rule, _NAME.sub(_elide, f.reason)), []).append(f)
    lines = []
    for (rule, reason), members in sorted(groups.items(), key=lambda g: -len(g[1])):
        if len(members) == 1:
            lines.append(f"  {rule}: {members[0].where}: {members[0].reason}")
        else:
            lines.append(f"  {rule} ×{len(members)}: {reason}")
            lines.append(f"      at {members[0].where}, and {len(members) - 1} more")
    return lines


def _by_reason(refusals: list[Finding], verbose: bool) -> str:
    return "" if verbose or len(refusals) < 2 else ", by reason; -v lists each"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))


#: Node and tensor names in a reason ('quoted', or a word of 3+ characters with a digit or a slash, not a dtype):
#: elided so that refusals that differ only in where they are group together.
_NAME = re.compile(r"'[^']*'|(?<![\w/.])(?!(?:u?int|b?float|complex)\d+\b)"
                   r"(?=[\w/.:-]*[\d/])[A-Za-z_/][\w/.:-]+[\w/]")


def _elide(match: re.Match) -> str:
    return "…" if len(match.group()) >= 3 else match.group()


def _comparison(before: ModelStats, after: ModelStats) -> list[str]:
    rows = [(op, str(before.ops.get(op, 0)), str(after.ops.get(op, 0)))
            for op in sorted(set(before.ops) | set(after.ops))]
    rows += [("", "", ""), ("nodes", str(before.nodes), str(after.nodes)),
             ("parameters", f"{before.params:,}", f"{after.params:,}"),
             ("file size", _size(before.size_bytes), _size(after.size_bytes))]
    width = max(len(r[0]) for r in rows)
    cells = [max(len(r[i]) for r in rows + [("", "before", "after")]) for i in (1, 2)]
    lines = [f"{'':<{width}}  {'before':>{cells[0]}}  {'after':>{cells[1]}}"]
    lines += [f"{a:<{width}}  {b:>{cells[0]}}  {c:>{cells[1]}}".rstrip() for a, b, c in rows]
    return lines


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _verification_line(v: Verification | None) -> str:
    if v is None:
        return "verification: skipped (--no-verify)"
    parts = [f"verification: {'passed' if v.passed else 'FAILED'}"]
    if v.local:
        failing = v.failing_tensors
        parts.append(f"local max error {_error(v.local)} over {v.checked_tensors} rewritten tensor(s)"
                     + (f" ({len(failing)} failed: {', '.join(failing[:5])})" if failing else ""))
    elif v.local_skipped:
        parts.append(f"no local checks ({v.local_skipped})")
    bound = {"noise floor": f"noise floor {v.noise_floor or 0.0:.2g}", "rounding": "within rounding"}.get(
        v.bound_text, v.bound_text)
    parts.append(f"outputs max error {_error(v.outputs, bound)} over {len({o.name for o in v.outputs})} output(s)")
    failing_outputs = list(dict.fromkeys(o.name for o in v.outputs if not o.passed))
    if failing_outputs:
        parts.append(f"differing outputs: {', '.join(failing_outputs)}")
    if v.uninformative:
        names = ", ".join(name for name, _ in v.uninformative)
        whys = "; ".join(dict.fromkeys(why for _, why in v.uninformative))
        one = len(v.uninformative) == 1
        parts.append(f"end-to-end check uninformative for {names}: one rounding of the weights moves "
                     f"{'it' if one else 'them'} by as much as {'it is' if one else 'they are'} large "
                     f"({whys}); the local checks carry the verification")
    sizes = [_shapes(shapes) + (f" ({why})" if why not in _PLAIN_SIZES else "")
             for shapes, why in zip(v.sizes, v.size_notes or ("",) * len(v.sizes))]
    parts.append(_at_sizes(sizes, several_inputs=any(len(shapes) > 1 for shapes in v.sizes)))
    if v.other_sizes_skipped:
        parts.append(f"{'not at a second size' if not v.other_sizes else 'not at'} ({v.other_sizes_skipped})")
    if v.unexercised:
        convs = "; ".join(f"{u.node}: {_dims(u.kernel)} kernel on a {_dims(u.input) if u.input else 'unknown'} "
                          f"input, needs {_dims(u.needs)}" for u in v.unexercised[:3])
        more = f"; and {len(v.unexercised) - 3} more" if len(v.unexercised) > 3 else ""
        parts.append(f"border taps unchecked: {len(v.unexercised)} rewritten conv(s) never had every tap meet "
                     f"input data at these sizes ({convs}{more}): set --input-shape to a size where they do")
    return ", ".join(parts)


def _at_sizes(sizes: list[str], several_inputs: bool) -> str:
    """``at input=1x3x32x32 and input=2x3x37x53``; ``at x=1x8, y=1x4 and at x=2x8, y=2x4`` for several inputs."""
    if several_inputs:
        return "at " + " and at ".join(sizes)
    return "at " + (sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " and " + sizes[-1])


#: Why a size was checked, when it goes without saying.
_PLAIN_SIZES = ("", "default", "as given", "as declared", "second size", "the inputs given")


def _error(entries, bound: str | None = None) -> str:
    """The largest error relative to its tensor's largest value, with the absolute numbers:
    ``3.1e-07 relative (1.4e-06 at values up to 4.5)``; an error of exactly 0 or with no scale: as it is."""
    worst = max(entries, key=_relative, default=None)
    if worst is None or worst.max_abs_error == 0 or not worst.scale or worst.max_abs_error == float("inf"):
        error = max((e.max_abs_error for e in entries), default=0.0)
        return f"{error:.2g}" + (f" ({bound})" if bound else "")
    return (f"{_relative(worst):.2g} relative ({worst.max_abs_error:.2g} at values up to {worst.scale:.2g}"
            + (f", {bound})" if bound else ")"))


def _relative(entry) -> float:
    if entry.max_abs_error == float("inf"):
        return float("inf")
    return entry.max_abs_error / entry.scale if entry.scale else 0.0


def _dims(dims) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def _shapes(shapes: dict[str, tuple[int, ...] | str]) -> str:
    return ", ".join(f"{k}={s if isinstance(s, str) else 'x'.join(map(str, s))}"  # str: a sequence, say
                     for k, s in shapes.items())


def _verification_dict(v: Verification | None) -> dict | None:
    """The verification as JSON: one entry per output and per rewritten tensor, each with its results
    at every input size checked (``by_size``, naming the size)."""
    if v is None:
        return None
    return {"passed": v.passed, "max_abs_error": v.max_abs_error,
            "max_relative_error": max((_relative(o) for o in v.outputs), default=0.0),
            "noise_floor": v.noise_floor, "tolerance": v.bound_text, "input_shapes": v.input_shapes,
            "seconds": v.seconds, "other_input_shapes": list(v.other_sizes),
            "other_sizes_skipped": v.other_sizes_skipped,
            "sizes": [{"input_shapes": shapes, "why": why}
                      for shapes, why in zip(v.sizes, v.size_notes or ("",) * len(v.sizes))],
            "unexercised": [asdict(u) for u in v.unexercised],
            "uninformative": [{"output": name, "why": why} for name, why in v.uninformative],
            "outputs": _by_name(v.outputs, "name", v.sizes),
            "local": {"checked": v.checked_tensors, "max_abs_error": v.local_max_abs_error,
                      "max_relative_error": max((_relative(c) for c in v.local), default=0.0),
                      "failed": v.failing_tensors, "skipped": v.local_skipped,
                      "tensors": _by_name(v.local, "tensor", v.sizes)}}


def _by_name(entries, key: str, sizes) -> list[dict]:
    """One dict per name: passed everywhere, the worst error, and each size's own results."""
    grouped: dict[str, list] = {}
    for entry in entries:
        grouped.setdefault(getattr(entry, key), []).append(entry)
    result = []
    for name, group in grouped.items():
        by_size = []
        for entry in group:
            fields = {k: val for k, val in asdict(entry).items() if k not in (key, "size")}
            by_size.append({"input_shapes": sizes[entry.size] if entry.size < len(sizes) else None, **fields})
        result.append({key: name, "passed": all(e.passed for e in group),
                       "max_abs_error": max(e.max_abs_error for e in group), "by_size": by_size})
    return result
