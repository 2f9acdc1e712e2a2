"""Quantize before or after re-parameterizing? Nodes, latency and error of both orders, in one run.

    python tools/bench_qdq.py                      # the RepVGG and MobileOne samples
    python tools/bench_qdq.py net.train.onnx --runs 50 --markdown out.md

For each float training export: the model itself, onnxrep's output for it, and onnxruntime's
``quantize_static`` of each (QDQ format, per-channel int8 weights, int8 activations, MinMax
calibration on CALIBRATION seeded standard-normal inputs: :func:`quantize`, the same call that
tools/export_adapters.py makes for the test fixtures).

Measured: nodes; latency in onnxruntime (CPU, default graph optimizations, which turn QDQ pairs
into QLinearConv and friends; 1 thread; batch 1), as in tools/bench.py: after a warm-up, runs of
back-to-back inferences interleaved round-robin with the order rotated each round, the median of
``--runs`` runs, ratios as medians of per-round ratios (paired); the output error against the
float training export on ERROR_INPUTS other random inputs (max abs, and the relative RMS error
‖y − y_float‖₂ / ‖y_float‖₂), which is what the two orders trade. Random weights and inputs: the
errors say how the two orders compare on these nets, not what a trained model's accuracy does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402  (its interleaved timing)

import onnxrep  # noqa: E402

SAMPLES = [ROOT / "models" / "repvgg.train.onnx", ROOT / "tests" / "fixtures" / "torch" / "mobileone.ts.train.onnx"]
CALIBRATION = 32
ERROR_INPUTS = 16


def quantize(source: Path, target: Path, calibration: int = CALIBRATION) -> None:
    """quantize_static, QDQ, per-channel int8 weights, int8 activations, MinMax on ``calibration``
    standard-normal inputs (seed 11, dynamic dims 1)."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(source)
    (value,) = model.graph.input
    shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
    rng = np.random.default_rng(11)
    batches = iter([{value.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(calibration)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    logging.getLogger().setLevel(logging.ERROR)   # its "consider pre-processing" notice
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    onnx.checker.check_model(onnx.load(target), full_check=True)


def session(model: onnx.ModelProto, optimized: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def variants(path: Path, work: Path) -> dict[str, onnx.ModelProto]:
    optimized, report = onnxrep.optimize(str(path))
    assert report.verification.passed
    float_onnxrep = work / "onnxrep.onnx"
    onnx.save_model(optimized, float_onnxrep)
    quantize(path, work / "q_train.onnx")
    quantize(float_onnxrep, work / "q_onnxrep.onnx")
    return {"float train": onnx.load(path), "float onnxrep": optimized,
            "quantize(train)": onnx.load(work / "q_train.onnx"),
            "quantize(onnxrep)": onnx.load(work / "q_onnxrep.onnx")}


def errors(models: dict[str, onnx.ModelProto], seed: int) -> dict[str, tuple[float, float]]:
    """(max abs error, relative RMS error ‖y − y_float‖₂ / ‖y_float‖₂) against the float train export,
    on ERROR_INPUTS batch-1 inputs, onnxruntime's optimizations on (how the quantized models run)."""
    reference = models["float train"]
    (value,) = reference.graph.input
    shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed + 100)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(ERROR_INPUTS)]
    sessions = {name: session(m) for name, m in models.items()}
    outs = {name: [s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float64) for x in inputs]
            for name, s in sessions.items()}
    want = np.stack(outs["float train"])
    return {name: (float(np.abs(np.stack(got) - want).max()),
                   float(np.linalg.norm(np.stack(got) - want) / np.linalg.norm(want)))
            for name, got in outs.items()}


def bench_sample(path: Path, args) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        models = variants(path, Path(tmp))
    errs = errors(models, args.seed)
    names = list(models)
    feeds = bench.make_feeds(models["float train"], {}, args.seed)
    sessions = [session(models[n]) for n in names]
    named = [{s.get_inputs()[0].name: feeds[0]} for s in sessions]
    times, number = bench.time_sessions(sessions, named, args.runs, args.run_ms)
    median = {n: float(np.median(t)) for n, t in zip(names, times)}
    ratio = {n: float(np.median(np.divide(t, times[names.index("quantize(train)")]))) for n, t in zip(names, times)}
    lines = [f"### {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  "
             f"(input {list(feeds[0].shape)}, {args.runs} runs × {number} inferences)", "",
             "| model | nodes | Conv | latency ms (median) | vs quantize(train) | max abs err vs float train "
             "| relative RMS err |", "|---|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        conv = sum(node.op_type == "Conv" for node in models[n].graph.node)
        lines.append(f"| {n} | {len(models[n].graph.node)} | {conv} | {median[n] * 1e3:.3f} | {ratio[n]:.2f} "
                     f"| {errs[n][0]:.3g} | {errs[n][1]:.2%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="*", type=Path, default=SAMPLES, metavar="MODEL.onnx")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant (default 30)")
    parser.add_argument("--run-ms", type=float, default=20.0, help="approximate length of one run (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown")
    args = parser.parse_args()
    info = bench.machine(1)
    texts = [f"{info['date']} · {info['cpu']} ({info['cpu_count']} cores) · onnxruntime {info['onnxruntime']} "
             f"· 1 thread\n"]
    print(texts[0])
    for path in args.models:
        texts.append(bench_sample(path, args))
        print(texts[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(texts))


if __name__ == "__main__":
    main()
