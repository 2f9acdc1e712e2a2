"""The docs table of issue 21's fixtures: nodes train / twin / onnxrep, error vs the twin, latency ratios.

    python tools/adapters_table.py [--runs 30] [--markdown out.md]

For every pair in tests/fixtures/adapters/ (tools/export_adapters.py): the train export, its twin
(PEFT's merge_and_unload(), or the hand-fused BatchNorm after Concat) and onnxrep's output for the
train export (``onnxrep.optimize``, verification on). Nodes of each; the max abs error of onnxrep's
output against the twin's, over the twin output's largest magnitude, on a batch-2 random input
(onnxruntime's optimizations off, so that its own fusions hide nothing); latency in onnxruntime
(CPU, default optimizations, 1 thread, batch 1) of the three, interleaved as in tools/bench.py,
as medians of per-round ratios (paired): onnxrep / train and onnxrep / twin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402
from bench_qdq import session  # noqa: E402

import onnxrep  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "adapters"


def row(case: str, exporter: str, files: dict, args) -> str:
    train, twin = (onnx.load(FIXTURES / files[k]) for k in ("train", "twin"))
    optimized, report = onnxrep.optimize(train)
    assert report.verification.passed
    (value,) = train.graph.input
    shape = [2] + [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]   # batch is dynamic, the rest static
    x = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    name = value.name
    want = session(twin, optimized=False).run(None, {name: x})[0]
    got = session(optimized, optimized=False).run(None, {name: x})[0]
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    sessions = [session(m) for m in (train, twin, optimized)]
    feed = {name: x[:1]}
    times, _ = bench.time_sessions(sessions, [feed] * 3, args.runs, args.run_ms)
    ratio = [float(np.median(np.divide(times[2], t))) for t in times[:2]]
    nodes = [len(m.graph.node) for m in (train, twin, optimized)]
    return (f"| {case} | {exporter} | {nodes[0]} | {nodes[1]} | {nodes[2]} | {err:.1e} "
            f"| {ratio[0]:.2f} | {ratio[1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model (default 30)")
    parser.add_argument("--run-ms", type=float, default=20.0, help="approximate length of one run (default 20)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown")
    args = parser.parse_args()
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    info = bench.machine(1)
    lines = [f"{info['date']} · {info['cpu']} ({info['cpu_count']} cores) · onnxruntime {info['onnxruntime']} "
             f"· 1 thread · {args.runs} runs", "",
             "| case | exporter | nodes train | nodes twin | nodes onnxrep | max err vs twin (rel.) "
             "| latency onnxrep / train | onnxrep / twin |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for case, entry in manifest["cases"].items():
        for exporter, files in entry["files"].items():
            lines.append(row(case, exporter, files, args))
            print(lines[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
