"""The README's timm table: onnxrep on tools/export_timm.py's train exports against timm's deploy exports.

    python tools/measure_timm.py /work/timm_models --out /tmp/timm [--models levit_128s ...] [--rounds 200]

For each ``<model>.<ts|dynamo>.train.onnx`` beside its ``.deploy.onnx``: node counts,
``onnxrep optimize --no-verify`` (onnxrep's verification is reported apart: its
tolerances on deep intermediates are not this table's question), and the max
error of onnxrep's output and of the deploy file against the train file,
divided by max |train output|, in onnxruntime with its optimizations off on
one seeded normal input. With ``--rounds N``: the latency ratio onnxrep /
deploy (onnxruntime's default optimizations, 1 thread, N interleaved rounds,
median of per-round ratios, as tools/bench.py). One JSON line per row, then
the markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def session(path: Path, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def ops(path: Path) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node))


def latency_ratio(a: Path, b: Path, rounds: int) -> float:
    """Median over rounds of time(a) / time(b), the order alternating each round."""
    sessions = {"a": session(a, True), "b": session(b, True)}
    x = feed(sessions["a"])
    for s in sessions.values():
        for _ in range(3):
            s.run(None, x)
    ratios = []
    for r in range(rounds):
        times = {}
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            start = time.perf_counter()
            sessions[name].run(None, x)
            times[name] = time.perf_counter() - start
        ratios.append(times["a"] / times["b"])
    return float(np.median(ratios))


def measure(train: Path, deploy: Path, out: Path, rounds: int) -> dict:
    report = out.with_suffix(".json")
    run = subprocess.run([shutil.which("onnxrep"), "optimize", str(train), str(out), "--json", str(report),
                          "-q", "--no-verify"], capture_output=True, text=True)
    row = {"train": sum(ops(train).values()), "deploy": sum(ops(deploy).values()), "rc": run.returncode}
    if run.returncode:
        return row | {"stderr": run.stderr[-300:]}
    after = json.loads(report.read_text())["after"]
    reference = session(train, False)
    x = feed(reference)
    y = reference.run(None, x)[0]
    scale = float(np.abs(y).max())
    row |= {"after": after["nodes"], "after_ops": after["ops"], "deploy_ops": ops(deploy),
            "err": float(np.abs(session(out, False).run(None, x)[0] - y).max()) / scale,
            "deploy_err": float(np.abs(session(deploy, False).run(None, x)[0] - y).max()) / scale}
    if rounds:
        row["latency"] = latency_ratio(out, deploy, rounds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.models or sorted({p.name.split(".")[0] for p in args.models_dir.glob("*.train.onnx")})
    rows = []
    for name in names:
        for exporter in ("ts", "dynamo"):
            train = args.models_dir / f"{name}.{exporter}.train.onnx"
            if train.exists():
                row = {"model": name, "exporter": exporter}
                row |= measure(train, train.with_name(f"{name}.{exporter}.deploy.onnx"),
                               args.out / f"{name}.{exporter}.onnx", args.rounds)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("| model | exporter | nodes train | onnxrep | deploy | latency onnxrep / deploy | error onnxrep "
          "| error deploy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        latency = f"{r['latency']:.3f}" if "latency" in r else "-"
        errors = f"{r['err']:.1e} | {r['deploy_err']:.1e}" if "err" in r else f"exit {r['rc']} | -"
        print(f"| {r['model']} | {r['exporter']} | {r['train']} | {r.get('after', '-')} | {r['deploy']} | "
              f"{latency} | {errors} |")


if __name__ == "__main__":
    main()
