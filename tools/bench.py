"""Latency of onnxrep's output against the original, the deploy twin and the peers' outputs, in one run.

    python tools/bench.py models/repvgg.train.onnx models/acnet.train.onnx --runs 50
    python tools/bench.py net.onnx --deploy net.onnx=net_deploy.onnx --shape 1x3x224x224 --json out.json

Variants of each model: the original; onnxrep's output (``onnxrep.optimize``,
its verification included in its time); onnx-simplifier's (``onnxsim.simplify``),
onnxslim's (``onnxslim.slim``) and onnxoptimizer's (``onnxoptimizer.optimize``:
default fuse and elimination passes, fuse_bn_into_conv among them) where
installed, a tool that is missing or fails getting a row that says so; and the
deploy twin (``--deploy TRAIN=DEPLOY``, or ``X.deploy.onnx`` beside ``X.train.onnx``).
Each tool gets its own copy of the loaded model; its time excludes loading.
All tools are imported before any runs, so all run in the same process state
(onnxsim imports torch, which makes every full ``gc.collect()`` slower).

Method: one onnxruntime CPU session per variant, intra- and inter-op threads
fixed (``--threads``, default 1), onnxruntime's default graph optimizations
(what users run). All sessions get the same seeded random input (dynamic dims
1 unless ``--shape`` says otherwise). After a warm-up, a run times ``number``
back-to-back inferences (chosen so that a run lasts about ``--run-ms``) and
divides; runs are interleaved round-robin with the variant order rotated each
round, so machine noise hits all variants alike. The table shows the median
and p10-p90 of ``--runs`` runs; ratios are medians of per-round ratios (a
paired comparison: slow phases of the machine cancel out). MACs: multiply-adds
of Conv, Gemm and MatMul from shapes (onnx shape inference, input shapes
fixed). Max err: largest absolute difference from the original's outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from onnxrep.report.macs import multiply_adds  # noqa: E402


def _onnxrep(onnxrep, model, shapes):
    optimized, report = onnxrep.optimize(model, input_shapes=shapes)
    return optimized, {"rules_fired": dict(report.fired), "seconds": report.seconds}


def _onnxsim(onnxsim, model, shapes):
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified, {}


# module name -> call(module, copy of the model, input shapes) -> (optimized model, details)
TOOLS = {"onnxrep": _onnxrep, "onnxsim": _onnxsim,
         "onnxslim": lambda onnxslim, model, shapes: (onnxslim.slim(model), {}),
         # passes=None: onnxoptimizer.get_fuse_and_elimination_passes(), fuse_bn_into_conv among them
         "onnxoptimizer": lambda onnxoptimizer, model, shapes: (onnxoptimizer.optimize(model), {})}


def run_tool(name: str, model: onnx.ModelProto, shapes) -> dict:
    if importlib.util.find_spec(name) is None:
        return {"tool": name, "status": "not installed"}
    row = {"tool": name, "version": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        row["version"] = importlib.metadata.version(name)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        module = importlib.import_module(name)  # imported before the clock starts
        with contextlib.redirect_stdout(sys.stderr):  # the tools' chatter stays off the table
            start = time.perf_counter()
            optimized, details = TOOLS[name](module, copy, shapes)
            seconds = time.perf_counter() - start
    except Exception as error:  # a tool's failure is a result, not a crash
        return {**row, "status": f"failed: {type(error).__name__}: {error}"[:200]}
    return {**row, "status": "ok", "opt_seconds": seconds, "details": details, "model": optimized}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def make_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """One array per graph input, in order (matched by position: a deploy twin may name them differently)."""
    rng, feeds = np.random.default_rng(seed), []
    for value in graph_inputs(model):
        tensor = value.type.tensor_type
        shape = shapes.get(value.name) or [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        data = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) else rng.integers(0, 2, shape)
        feeds.append(data.astype(dtype))
    return feeds


def count_macs(model: onnx.ModelProto, feeds: list[np.ndarray]) -> int | None:
    """Multiply-adds of Conv, Gemm and MatMul (onnxrep.report.macs); None when a shape stays unknown."""
    return multiply_adds(model, {value.name: array.shape for value, array in zip(graph_inputs(model), feeds)})


def prepare(v: dict, feeds: list[np.ndarray], reference, threads: int):
    """Session, named feeds and outputs of one variant; its static numbers go into ``v``."""
    model = v.pop("model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    named = {i.name: a for i, a in zip(s.get_inputs(), feeds)}
    outputs = s.run(None, named)
    reference = outputs if reference is None else reference
    errors = [float(np.max(np.abs(o.astype(np.float64) - r), initial=0)) for o, r in zip(outputs, reference)]
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node if n.op_type == "Constant"
                                           for a in n.attribute if a.HasField("t"))]
    v.update(nodes=len(model.graph.node), params=sum(math.prod(t.dims) for t in tensors),
             macs=count_macs(model, feeds), max_abs_error=max(errors) if len(outputs) == len(reference) else None)
    return s, named, outputs


def time_sessions(sessions, feeds, runs: int, run_ms: float) -> tuple[list[list[float]], int]:
    """Seconds per inference, ``runs`` per session, interleaved round-robin with rotating order."""
    for s, f in [*zip(sessions, feeds)] * 5:  # warm-up
        s.run(None, f)
    start = time.perf_counter()
    for s, f in zip(sessions, feeds):
        s.run(None, f)
    number = max(1, round(run_ms / 1e3 / ((time.perf_counter() - start) / len(sessions))))
    times: list[list[float]] = [[] for _ in sessions]
    for round_ in range(runs):
        for i in np.roll(np.arange(len(sessions)), -round_):
            start = time.perf_counter()
            for _ in range(number):
                sessions[i].run(None, feeds[i])
            times[i].append((time.perf_counter() - start) / number)
    return times, number


def bench_model(path: Path, twin: Path | None, args) -> dict:
    model = onnx.load(path)
    first = graph_inputs(model)[0].name if graph_inputs(model) else ""
    feeds = make_feeds(model, {(name or first): dims for name, dims in args.shape.items()}, args.seed)
    shapes = {v.name: a.shape for v, a in zip(graph_inputs(model), feeds)}
    variants = [{"tool": "original", "status": "ok", "model": model}]
    variants += [run_tool(name, model, shapes) for name in TOOLS]
    if twin is not None:
        variants.append({"tool": "deploy twin", "file": str(twin), "status": "ok", "model": onnx.load(twin)})
    live, reference = [], None  # (variant, session, named feeds)
    for v in (v for v in variants if v["status"] == "ok"):
        try:
            s, named, outputs = prepare(v, feeds, reference, args.threads)
        except Exception as error:  # e.g. a tool's output that onnxruntime cannot load
            if v is variants[0]:
                raise
            v["status"] = f"failed in onnxruntime: {type(error).__name__}: {error}"[:200]
            continue
        reference = outputs if reference is None else reference
        live.append((v, s, named))
    times, number = time_sessions([s for _, s, _ in live], [f for _, _, f in live], args.runs, args.run_ms)
    for (v, _, _), t in zip(live, times):
        v["seconds_per_inference"] = t
        v["latency_ms"] = dict(zip(("p10", "median", "p90"), np.percentile(t, [10, 50, 90]) * 1e3))
    for v in variants:
        v.pop("model", None)
    return {"model": str(path), "input_shapes": shapes, "runs": args.runs, "inferences_per_run": number,
            "variants": variants}


def paired(v: dict | None, other: dict | None) -> float | None:
    """Median of per-round latency ratios (rounds are interleaved, so the comparison is paired)."""
    if not (v and other and "seconds_per_inference" in v and "seconds_per_inference" in other):
        return None
    return float(np.median(np.divide(v["seconds_per_inference"], other["seconds_per_inference"])))


def fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    rows = {v["tool"]: v for v in result["variants"]}
    shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in result["input_shapes"].items())
    lines = [f"### {result['model']}", "",
             f"input {shapes}; {result['runs']} runs of {result['inferences_per_run']} inferences each", "",
             "| tool | opt time s | nodes | params | MMACs | latency ms (median) | p10–p90 ms "
             "| × original | × deploy | max err |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        name = " ".join(filter(None, (v["tool"], v.get("version"))))
        if v["status"] != "ok":
            lines.append(f"| {name} | {v['status']} |" + " – |" * 8)
            continue
        lat, macs = v["latency_ms"], v["macs"] and v["macs"] / 1e6
        cells = [name, fmt(v.get("opt_seconds"), ".3f"), str(v["nodes"]), f"{v['params']:,}", fmt(macs, ".2f"),
                 f"{lat['median']:.4f}", f"{lat['p10']:.4f}–{lat['p90']:.4f}", fmt(paired(v, rows["original"]), ".3f"),
                 fmt(paired(v, rows.get("deploy twin")), ".3f"), fmt(v["max_abs_error"], ".2g")]
        lines.append("| " + " | ".join(cells) + " |")
    peers = [v for name, v in rows.items() if name in TOOLS and name != "onnxrep" and "latency_ms" in v]
    fastest = min(peers, key=lambda v: v["latency_ms"]["median"], default=None)
    if paired(rows["onnxrep"], fastest):  # issue 5 §3: within 2% of the deploy twin, faster than every peer
        deploy = paired(rows["onnxrep"], rows.get("deploy twin"))
        lines += ["", f"onnxrep's output: ×{paired(rows['onnxrep'], fastest):.3f} the latency of the fastest peer's "
                  f"({fastest['tool']})" + ("" if deploy is None else f", ×{deploy:.3f} the deploy twin's")]
    return "\n".join(lines) + "\n"


def machine(threads: int) -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL.onnx")
    parser.add_argument("--deploy", action="append", default=[], metavar="TRAIN=DEPLOY",
                        help="deploy twin of a model (default: X.deploy.onnx beside X.train.onnx)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra- and inter-op threads (default 1)")
    parser.add_argument("--shape", action="append", default=[], metavar="[NAME:]1x3x224x224",
                        help="input shape (default: the model's, dynamic dims 1); without NAME: the first input")
    parser.add_argument("--run-ms", type=float, default=10.0, help="approximate length of one timed run (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write results (every timing) and machine info as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as markdown")
    args = parser.parse_args()
    try:
        args.shape = {name: tuple(int(d) for d in dims.lower().split("x"))
                      for name, _, dims in (item.rpartition(":") for item in args.shape)}
    except ValueError:
        parser.error("--shape takes [NAME:]DIMxDIM..., e.g. input:1x3x224x224")
    if args.runs < 1 or args.threads < 1 or not all("=" in d for d in args.deploy):
        parser.error("--runs and --threads take at least 1, --deploy takes TRAIN=DEPLOY")
    explicit = {Path(k).resolve(): Path(v) for k, _, v in (d.partition("=") for d in args.deploy)}
    missing = [p for p in (*args.models, *explicit.values()) if not p.is_file()]
    if missing:
        parser.error(f"no such file: {missing[0]}")
    for name in (n for n in TOOLS if importlib.util.find_spec(n)):
        with contextlib.suppress(Exception), contextlib.redirect_stdout(sys.stderr):
            importlib.import_module(name)  # a failure shows in the tool's row
    info = machine(args.threads)
    texts = [f"{info['date']} · {info['cpu']} ({info['cpu_count']} cores) · {info['platform']} · "
             f"onnxruntime {info['onnxruntime']} · {args.threads} thread(s)\n"]
    print(texts[0])
    results = []
    for path in args.models:
        sibling = path.with_name(path.name.removesuffix(".train.onnx") + ".deploy.onnx")
        default = sibling if path.name.endswith(".train.onnx") and sibling.is_file() else None
        results.append(bench_model(path, explicit.get(path.resolve(), default), args))
        texts.append(markdown(results[-1]))
        print(texts[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "models": results}, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text("\n".join(texts))


if __name__ == "__main__":
    main()
