"""Export a small YOLO-like detector with dynamic height and width, train and deploy, both exporters.

    python tools/export_detector.py        # writes tests/fixtures/detector/*.onnx and manifest.json

What a user's Ultralytics export has that the block fixtures (tools/export_fixtures.py) do not:

- a stride-32 level reached by five stride-2 Conv-BN-SiLU (Ultralytics' Conv), and a
  feature-pyramid Concat of the upsampled stride-32 level with the stride-16 one: only
  multiples of 32 run (2x3x37x53 fails in the Concat, as on YOLOv8);
- at the stride-32 level, YOLOv10's RepVGGDW: SiLU(dw7x7 conv-BN + dw3x3 conv-BN), which
  deploys as one 7x7 depthwise conv, on one half of a C2f-style ``chunk`` (TorchScript's Slices
  of a computed length: ONNX shape inference cannot size what follows). At 32x32 that level is
  1x1 and only the merged kernel's centre tap ever meets data;
- a Detect head as Ultralytics writes it: per level, box and class convs concatenated,
  an anchor grid from the level's ``shape[2:]`` (Shape nodes, start=2/end=3 and start=3/end=4),
  dist2bbox (``torch.cat((c_xy, wh), 1)``, the Concat that TorchScript leaves without shapes),
  then boxes × strides and sigmoid scores: output [batch, 4 + classes, anchors].

Exported with TorchScript (opset 17, ``dynamic_axes`` batch/height/width) and dynamo (opset 20,
height and width multiples of 32), each with its deploy twin (Ultralytics' ``fuse()``, computed in
torch by tools/torch_blocks.py). Checks before writing: torch train == torch deploy; each file runs
in onnxruntime (its optimizations off) and gives torch's output at 2x3x64x96 and 1x3x160x128.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_blocks as tb  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "detector"
SEED = 2210
CLASSES = 3
CHECK_SIZES = ((2, 3, 64, 96), (1, 3, 160, 128))
EXAMPLE = (2, 3, 128, 160)


class TinyDetector(nn.Module):
    """Backbone to stride 32 with a RepVGGDW there, an FPN Concat, a two-level Detect head."""

    strides = (16, 32)

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        c = tb.ConvBNAct
        self.p4 = nn.Sequential(c(3, 4, 3, 2), c(4, 8, 3, 2), c(8, 8, 3, 2), c(8, 16, 3, 2))  # stride 16
        self.p5 = nn.Sequential(c(16, 16, 3, 2), C2fRepVGGDW(16), c(24, 16, 1))                 # stride 32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse4 = c(16 + 16, 16, 1)
        self.no = 4 + classes
        self.box = nn.ModuleList(nn.Sequential(c(16, 8, 3), nn.Conv2d(8, 4, 1)) for _ in self.strides)
        self.cls = nn.ModuleList(nn.Sequential(c(16, 8, 3), nn.Conv2d(8, classes, 1)) for _ in self.strides)

    def forward(self, x):
        p4 = self.p4(x)
        p5 = self.p5(p4)
        levels = [self.fuse4(torch.cat((self.up(p5), p4), 1)), p5]
        feats = [torch.cat((self.box[i](f), self.cls[i](f)), 1) for i, f in enumerate(levels)]
        anchors, strides = make_anchors(levels, self.strides)  # the same h, w as feats
        flat = torch.cat([f.view(f.shape[0], self.no, -1) for f in feats], 2)
        box, cls = flat.split((4, self.no - 4), 1)
        return torch.cat((dist2bbox(box, anchors.unsqueeze(0)) * strides, cls.sigmoid()), 1)


class C2fRepVGGDW(nn.Module):
    """YOLOv10's C2fCIB in brief: the channels split in two halves (``chunk``, which TorchScript
    exports as Slices of a computed length: shape inference loses the spatial dims there), a RepVGGDW
    on the second, all three concatenated."""

    def __init__(self, channels: int):
        super().__init__()
        self.m = tb.YoloRepVGGDW(channels // 2)

    def forward(self, x):
        y = list(x.chunk(2, 1))
        return torch.cat((*y, self.m(y[-1])), 1)


def make_anchors(feats, strides, offset: float = 0.5):
    """Ultralytics' make_anchors: the cell centres of every level, from its ``shape[2:]``."""
    points, stride_tensor = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2:]
        sx = torch.arange(end=w, dtype=feat.dtype) + offset
        sy = torch.arange(end=h, dtype=feat.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=feat.dtype))
    return torch.cat(points).transpose(0, 1), torch.cat(stride_tensor).transpose(0, 1)


def dist2bbox(distance, anchor_points, dim: int = 1):
    """Ultralytics' dist2bbox (xywh): left-top and right-bottom distances to centre and size."""
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)


def export(net: nn.Module, path: Path, exporter: str) -> None:
    x = torch.randn(*EXAMPLE, generator=torch.Generator().manual_seed(SEED))
    common = dict(input_names=["images"], output_names=["output0"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "ts":
            axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **common)
        else:
            h, w = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
            shapes = ({0: torch.export.Dim("batch", max=64), 2: 32 * h, 3: 32 * w},)
            program = torch.onnx.export(net, (x,), dynamo=True, opset_version=20, dynamic_shapes=shapes, **common)
            program.save(str(path), external_data=False)
    model = onnx.load(path)
    for node in model.graph.node:  # dynamo's stack traces name this machine's paths: drop them
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    # what Ultralytics writes into its exports' metadata (onnxrep reads stride and imgsz from it)
    onnx.helper.set_model_props(model, {"stride": "32", "imgsz": "[640, 640]", "task": "detect"})
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def close(got: np.ndarray, want: np.ndarray) -> float:
    err = float(np.abs(got.astype(np.float64) - want).max())
    if err > 1e-5 * float(np.abs(want).max()):
        raise SystemExit(f"outputs differ by {err:.3g} (scale {np.abs(want).max():.3g})")
    return err


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(SEED)
    train = tb.randomize_(TinyDetector(), SEED)
    nets = {"train": train, "deploy": tb.deploy_twin(train)}
    g = torch.Generator().manual_seed(SEED + 1)
    checks = [torch.randn(*shape, generator=g) for shape in CHECK_SIZES]
    with torch.no_grad():
        wants = [train(x).numpy() for x in checks]
        print(f"torch train vs deploy {max(close(nets['deploy'](x).numpy(), w) for x, w in zip(checks, wants)):.2e}")
    files = {}
    for exporter in ("ts", "dynamo"):
        for kind, net in nets.items():
            path = OUT / f"detector.{exporter}_hw.{kind}.onnx"
            export(net, path, exporter)
            err = max(close(run(path, x.numpy()), w) for x, w in zip(checks, wants))
            ops = Counter(n.op_type for n in onnx.load(path).graph.node)
            files.setdefault(f"{exporter}_hw", {})[kind] = path.name
            print(f"{path.name:36s} {path.stat().st_size / 1024:6.1f} KB  ort vs torch {err:.2e}  "
                  + " ".join(f"{op}:{n}" for op, n in sorted(ops.items())))
    manifest = {"torch": torch.__version__, "onnx": onnx.__version__, "seed": SEED, "classes": CLASSES,
                "check_sizes": [list(s) for s in CHECK_SIZES], "input": "images", "output": "output0",
                "description": TinyDetector.__doc__, "files": files}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
