"""onnxrep's own speed and memory on a big model, against the I/O floor, measured in one run.

The floor is a plain ``onnx.load`` + ``onnx.save`` of the same file: no
optimizer can do less. Each measurement is a fresh process (so peak memory is
that process's own, from ``wait4``), and the floor and onnxrep alternate
round by round so that machine noise hits both alike; the ratios are per
round, the table shows their median.

    python tools/bench_throughput.py                       # makes a RepVGG-B3-sized model first
    python tools/bench_throughput.py MODEL.onnx --rounds 5

Targets (issue 5): ``onnxrep optimize --no-verify`` within 2x the floor's
time, peak memory under 2.5x the file size. Verification is timed apart.
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

HERE = Path(__file__).resolve().parent
FLOOR = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"


def measure(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="default: a RepVGG-B3-sized model made here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-verify-run", action="store_true", help="skip the run with verification")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="onnxrep-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = tmp / "repvgg_b3.train.onnx"
            subprocess.run([sys.executable, str(HERE / "make_big_model.py"), str(model)], check=True)
        size = sum(p.stat().st_size for p in model.parent.glob(f"{model.name}*")) if args.model is None \
            else model.stat().st_size
        out = tmp / "out.onnx"
        floor_cmd = [sys.executable, "-c", FLOOR, str(model), str(tmp / "floor.onnx")]
        ours_cmd = [sys.executable, "-m", "onnxrep", "optimize", "--no-verify", "-q", "--force", str(model), str(out)]
        rows = []
        for _ in range(args.rounds):
            floor = measure(floor_cmd)
            ours = measure(ours_cmd)
            rows.append((floor, ours))
        verified = None
        if not args.no_verify_run:
            report = tmp / "report.json"
            seconds, peak = measure([*ours_cmd[:4], "-q", "--force", "--json", str(report), str(model), str(out)])
            verified = seconds, peak, json.loads(report.read_text())["seconds"]

    median = statistics.median
    time_ratio = median(o[0] / f[0] for f, o in rows)
    memory_ratio = max(o[1] for _, o in rows) / size
    print(f"model: {model.name}, {size / 1e6:.0f} MB, {args.rounds} rounds (median; peak = max)")
    print(f"{'':28}{'seconds':>10}{'peak RSS':>12}{'x file':>9}")
    print(f"{'onnx.load + onnx.save':28}{median(f[0] for f, _ in rows):10.2f}"
          f"{max(f[1] for f, _ in rows) / 1e9:10.2f} GB{max(f[1] for f, _ in rows) / size:9.2f}")
    print(f"{'onnxrep --no-verify':28}{median(o[0] for _, o in rows):10.2f}"
          f"{max(o[1] for _, o in rows) / 1e9:10.2f} GB{memory_ratio:9.2f}")
    if verified is not None:
        seconds, peak, steps = verified
        print(f"{'onnxrep (with verification)':28}{seconds:10.2f}{peak / 1e9:10.2f} GB{peak / size:9.2f}"
              f"   verification {steps.get('verify', 0):.2f} s")
    print(f"time ratio onnxrep / floor: {time_ratio:.2f} (target <= 2.0), "
          f"peak memory / file size: {memory_ratio:.2f} (target < 2.5)")


if __name__ == "__main__":
    main()
