"""What verification costs: against the plain onnxruntime run of the two models, and against another revision.

    python tools/bench_verify.py models/*.train.onnx big.onnx --rounds 5
    python tools/bench_verify.py models/*.train.onnx --baseline 017ef49     # before and after, in one run
    python tools/bench_verify.py                                            # RepVGG-B3 (made here), MobileOne stack

Each model is optimized once without verification (by this checkout) and both
files are handed to a worker process per revision (this checkout, and with
``--baseline REV`` that revision's ``onnxrep`` package from ``git archive``).
Round by round, alternating between the workers, each times
``onnxrep.verify.check.verify`` of the pair as ``optimize`` runs it (local
checks, noise run, outputs, every input size it picks), then the floor: an
onnxruntime session of the original and of the optimized model (graph
optimizations off, as verification runs them) and one run of each at every input
size that verification checked. Prints medians: verify, floor, their ratio, and
with a baseline the ratio new / baseline of the verification times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def floor_seconds(original, optimized, sizes) -> float:
    """Session + one run of each model at each input size verification checked: its own minimum."""
    import onnxruntime as ort

    from onnxrep.verify.feeds import make_inputs

    start = time.perf_counter()
    for model in (original, optimized):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for size in sizes:
            session.run(None, make_inputs(session, size, 0))
        del session
    return time.perf_counter() - start


def worker(pairs: list[tuple[str, str]], shapes: dict) -> None:
    """Load the pairs, then on each line ``i`` of stdin verify pair i and print one JSON line."""
    import onnx
    import onnxruntime  # noqa: F401 (imported before the first round is timed)

    from onnxrep.verify.check import verify

    models = [(onnx.load(a), onnx.load(b)) for a, b in pairs]
    print("ready", flush=True)
    for line in sys.stdin:
        original, optimized = models[int(line)]
        start = time.perf_counter()
        result = verify(original, optimized, input_shapes=shapes or None)
        seconds = time.perf_counter() - start
        sizes = [result.input_shapes, *result.other_sizes]
        floor = floor_seconds(original, optimized, sizes)
        worst = max((c.worst_ratio for c in result.local), default=0.0)
        print(json.dumps({"verify": seconds, "floor": floor, "passed": result.passed, "worst": worst,
                          "sizes": ["x".join(map(str, next(iter(s.values())))) for s in sizes],
                          "checked": result.checked_tensors, "error": result.max_abs_error,
                          "noise": result.noise_floor or 0.0}), flush=True)


class Worker:
    """A process importing ``onnxrep`` from ``root``."""

    def __init__(self, root: Path, pairs: list[tuple[str, str]], shapes: dict):
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps({"pairs": pairs, "shapes": shapes})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        assert self.process.stdout.readline().strip() == "ready"

    def time(self, index: int) -> dict:
        self.process.stdin.write(f"{index}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def builtin_models(tmp: Path):
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools")]
    import make_big_model
    import onnx
    from deep_stack import mobileone_stack

    big, _ = make_big_model.build()
    onnx.save(big, tmp / "repvgg_b3.onnx")
    yield "RepVGG-B3 (224x224)", tmp / "repvgg_b3.onnx"
    train, _ = mobileone_stack(blocks=48, channels=64, size=56)
    onnx.save(train, tmp / "mobileone48.onnx")
    yield "MobileOne stack, 48 blocks, 64 ch, 56x56", tmp / "mobileone48.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:DxD..")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also time this git revision's verification")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        worker([tuple(p) for p in spec["pairs"]], {k: tuple(v) for k, v in spec["shapes"].items()})
        return
    shapes = {s.rpartition(":")[0]: [int(d) for d in s.rpartition(":")[2].split("x")] for s in args.input_shape}
    sys.path.insert(0, str(ROOT))
    import onnx

    import onnxrep

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        tmp = Path(tmp)
        named = [(p.name, p) for p in args.models] if args.models else list(builtin_models(tmp))
        pairs = []
        for k, (_, path) in enumerate(named):
            given = {"input_shapes": shapes} if shapes else {}
            optimized, _ = onnxrep.optimize(onnx.load(path), verify=False, **given)
            onnx.save(optimized, tmp / f"optimized{k}.onnx")
            del optimized
            pairs.append((str(path.resolve()), str(tmp / f"optimized{k}.onnx")))
        roots = {"new": ROOT}
        if args.baseline:
            base = tmp / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "onnxrep"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            roots = {"baseline": base, **roots}
        workers = {name: Worker(root, pairs, shapes) for name, root in roots.items()}
        try:
            for k, (name, _) in enumerate(named):
                times = {w: [] for w in workers}
                for _ in range(args.rounds):  # alternate, so that a busy moment hits both
                    for w in workers:
                        times[w].append(workers[w].time(k))
                report(name, times)
        finally:
            for w in workers.values():
                w.close()


def report(name: str, times: dict[str, list[dict]]) -> None:
    print(name)
    medians = {}
    for who, rounds in times.items():
        last = rounds[-1]
        verify = statistics.median(r["verify"] for r in rounds)
        floor = statistics.median(r["floor"] for r in rounds)
        medians[who] = verify
        print(f"  {who:8s} verify {verify:6.2f} s, floor {floor:6.2f} s, ratio {verify / floor:4.2f}; "
              f"sizes {' + '.join(last['sizes'])}; {last['checked']} rewritten tensors (worst {last['worst']:.3f} "
              f"of the bound), outputs error {last['error']:.2g}, noise floor {last['noise']:.2g}, "
              f"passed={last['passed']}")
    if "baseline" in medians:
        print(f"  new / baseline: {medians['new'] / medians['baseline']:.2f}")


if __name__ == "__main__":
    main()
