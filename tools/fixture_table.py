"""The block × variant table of docs/fixtures.md: nodes of train, after onnxrep, of the deploy twin.

    python tools/fixture_table.py            # markdown, from tests/fixtures/torch/manifest.json

Also the largest error of onnxrep's own verification (outputs and rewritten
tensors) and the optimize time, so the table says what was measured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import onnx

import onnxrep

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch"


def main() -> None:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    print("| block | variant | input | nodes train | after onnxrep | deploy twin | max abs error | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    total = time.perf_counter()
    for block, entry in manifest["blocks"].items():
        for variant, files in entry["files"].items():
            train, deploy = (onnx.load(FIXTURES / files[k]) for k in ("train", "deploy"))
            start = time.perf_counter()
            optimized, report = onnxrep.optimize(train)
            seconds = time.perf_counter() - start
            v = report.verification
            error = max(v.max_abs_error, v.local_max_abs_error or 0.0)
            shape = "x".join(str(d) for d in entry["input_shape"][variant])
            print(f"| {block} | {variant} | {shape} | {len(train.graph.node)} | {len(optimized.graph.node)} | "
                  f"{len(deploy.graph.node)} | {error:.1e} | {seconds:.2f} |")
    print(f"\n{time.perf_counter() - total:.1f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
