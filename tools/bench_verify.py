"""What verification costs, against the plain onnxruntime run of the two models it compares.

    python tools/bench_verify.py                       # RepVGG-B3 (made here) and a 48-block MobileOne stack
    python tools/bench_verify.py model.onnx ... --input-shape input:1x3x224x224 --rounds 3

For each model: optimize it without verification, then time, in the same
process and alternating round by round, (a) the floor: an onnxruntime session
of the original and of the optimized model (graph optimizations off, as
verification runs them) and one run of each at every input size verification
checks, and (b)
``onnxrep.verify.verify_sizes`` of the pair, as ``optimize`` runs it (local checks, noise run,
outputs; a second, odd input size for a model with dynamic dims).
Prints medians and the ratio verify / floor (target: at most 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxrep
from onnxrep.verify.check import verify_sizes
from onnxrep.verify.sizes import second_size
from onnxrep.verify.feeds import make_inputs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))


def floor_seconds(original: onnx.ModelProto, optimized: onnx.ModelProto, shapes) -> float:
    """Session + one run of each model at each input size verification checks (the given shapes, and a
    second size for dynamic dims): verification's own minimum."""
    sizes = [shapes] + ([] if shapes else [s for s in [second_size(original)] if s])
    start = time.perf_counter()
    for model in (original, optimized):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for size in sizes:
            session.run(None, make_inputs(session, size, 0))
        del session
    return time.perf_counter() - start


def bench(name: str, model: onnx.ModelProto, shapes, rounds: int) -> None:
    optimized, report = onnxrep.optimize(model, check=False, input_shapes=shapes)
    floors, verifies, result = [], [], None
    for _ in range(rounds):
        floors.append(floor_seconds(model, optimized, shapes))
        start = time.perf_counter()
        result = verify_sizes(model, optimized, input_shapes=shapes)
        verifies.append(time.perf_counter() - start)
    f, v = statistics.median(floors), statistics.median(verifies)
    worst = max((c.worst_ratio for c in result.local), default=0.0)
    print(f"{name}: nodes {len(model.graph.node)} -> {len(optimized.graph.node)}, "
          f"{result.checked_tensors} rewritten tensors checked (worst error {worst:.3f} of the bound), "
          f"outputs error {result.max_abs_error:.2g} (noise floor {result.noise_floor:.2g}), "
          f"passed={result.passed}, sizes {1 + len(result.other_sizes)}")
    print(f"  floor (both models: a session, a run per size) {f:.2f} s, verify {v:.2f} s, ratio {v / f:.2f}")


def builtin_models(tmp: Path):
    import make_big_model
    from deep_stack import mobileone_stack

    big, _ = make_big_model.build()
    yield "RepVGG-B3 (224x224)", big, {}
    train, _ = mobileone_stack(blocks=48, channels=64, size=56)
    yield "MobileOne stack, 48 blocks, 64 ch, 56x56", train, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:DxD..")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shapes = {s.rpartition(":")[0]: tuple(int(d) for d in s.rpartition(":")[2].split("x"))
              for s in args.input_shape}
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        models = ((p.name, onnx.load(p), shapes) for p in args.models) if args.models \
            else builtin_models(Path(tmp))
        for name, model, model_shapes in models:
            bench(name, model, model_shapes, args.rounds)


if __name__ == "__main__":
    main()
