"""What a run did, as data (:class:`Report`) and as the table the CLI prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxrep.rules import Finding
from onnxrep.verify import Verification


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
    applied: list[tuple[str, str]] = field(default_factory=list)  # (rule, tensor[#N]) keys, in order
    dropped: list[Finding] = field(default_factory=list)  # rewrites rolled back: verification failed

    def to_dict(self) -> dict:
        return {
            "before": asdict(self.before) if self.before else None,
            "after": asdict(self.after) if self.after else None,
            "rules_fired": dict(self.fired),
            "refusals": [asdict(f) for f in self.refusals],
            "verification": _verification_dict(self.verification),
            "seconds": self.seconds,
            "sweeps": self.sweeps,
            "dropped": [asdict(f) for f in self.dropped],
        }

    def format(self, verbose: bool = False) -> str:
        lines = []
        if self.before and self.after:
            lines += _comparison(self.before, self.after)
        lines.append("")
        if self.fired:
            lines.append("rules fired: " + ", ".join(f"{k} ×{v}" for k, v in sorted(self.fired.items())))
        else:
            lines.append("rules fired: none (nothing re-parameterizable found)")
        if self.dropped:
            lines.append(f"rolled back ({len(self.dropped)}), the output verifies without them:")
            lines += [f"  {f.rule}: {f.where}: {f.reason}" for f in self.dropped]
        if self.refusals:
            lines.append(f"left as they were ({len(self.refusals)}):")
            shown = self.refusals if verbose else self.refusals[:20]
            lines += [f"  {f.rule}: {f.where}: {f.reason}" for f in shown]
            if len(shown) < len(self.refusals):
                lines.append(f"  … {len(self.refusals) - len(shown)} more (-v shows all)")
        lines.append(_verification_line(self.verification))
        if self.seconds:
            lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


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
    shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in v.input_shapes.items())
    status = "passed" if v.passed else "FAILED"
    failing = [o.name for o in v.outputs if not o.passed]
    detail = f"; differing outputs: {', '.join(failing)}" if failing else ""
    checked = f"{len(v.outputs) - v.intermediates} output(s)"
    if v.intermediates:
        checked += f" and {v.intermediates} intermediate tensor(s)"
    return (f"verification: {status}, max abs error {v.max_abs_error:.3g} over {checked}, "
            f"inputs {shapes}{detail}")


def _verification_dict(v: Verification | None) -> dict | None:
    if v is None:
        return None
    return {"passed": v.passed, "max_abs_error": v.max_abs_error, "input_shapes": v.input_shapes,
            "intermediates": v.intermediates,
            "seconds": v.seconds, "outputs": [asdict(o) for o in v.outputs]}
