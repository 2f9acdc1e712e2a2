"""Export PyTorch re-parameterization nets to ONNX fixtures, train and deploy, as users export them.

    python tools/export_fixtures.py              # everything, and the manifest (about 3 minutes)
    python tools/export_fixtures.py dbb repvit   # re-export those blocks only (manifest unchanged)

For every block family in tools/torch_blocks.py this builds a small net (fixed
seed, random BatchNorm statistics), its deploy twin (the authors'
switch_to_deploy, computed in torch), and writes

    tests/fixtures/torch/<block>.<variant>.<train|deploy>.onnx
    tests/fixtures/torch/manifest.json

for each variant of VARIANTS below: "ts" is the TorchScript exporter
(dynamo=False), "dynamo" the torch.export one, each with its own typical
settings (default opsets and optimizations) so the files look like what users
bring; "dynamo_raw" is dynamo with optimize=False (no constant folding:
BN-and-pad values, zero biases and index arithmetic are computed in the
graph). The others vary one thing: float16 (model.half()), dynamic height and
width besides the batch, the opset, static dims, torch's initialization
(untrained: TorchScript deduplicates its equal BatchNorm parameters). A full
run deletes the old files first, so it writes exactly the set the manifest
lists, byte for byte on one machine. Before writing the manifest it checks
that torch train == torch deploy, and that for each variant the train and
deploy files give the torch output in onnxruntime (its graph optimizations
off, so its own Conv+BN fusion cannot hide anything), at the example size
and, for dynamic height and width, at ODD_HW too; float16 to 1e-2 of the
output's scale.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_blocks as tb  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch"


@dataclass(frozen=True)
class Variant:
    """One way users export: the exporter, its opset, the dtype, which dims are dynamic."""

    exporter: str                 # "ts" (TorchScript, dynamo=False) or "dynamo"
    opset: int
    optimize: bool = True         # dynamo's optimize= (constant folding); TorchScript always folds
    half: bool = False            # model.half() and a float16 input
    dynamic: str = "batch"        # "batch"; "hw": batch, height and width; "none": all static (batch 2)
    trained: bool = True          # False: torch's initialization (equal BN parameters, deduplicated)
    blocks: tuple[str, ...] | None = None   # None: every block

    def describe(self) -> str:
        what = ("torch.onnx.export(dynamo=False)" if self.exporter == "ts" else
                f"torch.onnx.export(dynamo=True, optimize={self.optimize})")
        extra = [f"opset {self.opset}", "model.half()" if self.half else "float32",
                 {"hw": "dynamic batch, height, width", "batch": "dynamic batch", "none": "static"}[self.dynamic]]
        if not self.trained:
            extra.append("untrained (torch's initialization)")
        return f"{what}, " + ", ".join(extra)


#: Variant name → how it is exported: TorchScript's long-time default opset 17 and dynamo's current default
#: 20 first, then the forms users bring; the less common ones on a subset of blocks (fixtures stay small).
FEW = ("repvgg", "acnet", "dbb", "mobileone", "repvit")
STATIC = ("repvgg", "acnet", "mobileone", "repvit")
VARIANTS = {
    "ts": Variant("ts", 17),
    "dynamo": Variant("dynamo", 20),
    "dynamo_raw": Variant("dynamo", 20, optimize=False),
    "ts_hw": Variant("ts", 17, dynamic="hw"),
    "dynamo_hw": Variant("dynamo", 20, dynamic="hw"),
    "ts_fp16": Variant("ts", 17, half=True),
    "dynamo_fp16": Variant("dynamo", 20, half=True),
    "ts_op11": Variant("ts", 11),
    "ts_op13": Variant("ts", 13),
    "dynamo_op18": Variant("dynamo", 18, blocks=STATIC),    # DBB at 20 and 23 (its files are the big ones)
    "dynamo_op23": Variant("dynamo", 23, blocks=FEW),          # the newest torch 2.13 exports
    "ts_fp16_hw": Variant("ts", 17, half=True, dynamic="hw", blocks=FEW),
    "dynamo_fp16_hw": Variant("dynamo", 20, half=True, dynamic="hw", blocks=FEW),
    "ts_static": Variant("ts", 17, dynamic="none", blocks=STATIC),       # dbb.ts is static already
    "dynamo_static": Variant("dynamo", 20, dynamic="none", blocks=STATIC),
    "ts_untrained": Variant("ts", 17, trained=False, blocks=FEW),
}
BATCH = 2                             # example batch (1 would be specialized by torch.export)
RTOL, ATOL = 1e-4, 1e-5               # atol is relative to the output's largest magnitude


class Pooled(nn.Module):
    """Blocks → global average pool → flatten → head (RepViT's forward)."""

    def __init__(self, blocks: nn.Module, head: nn.Module):
        super().__init__()
        self.blocks, self.head = blocks, head

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1))


def seq(*blocks):
    return nn.Sequential(*blocks)


# name → (builder, input channels, description). Spatial size 16x16 everywhere.
NETS = {
    "repvgg": (lambda: seq(tb.RepVGGBlock(3, 8), tb.RepVGGBlock(8, 16, stride=2), tb.RepVGGBlock(16, 16),
                           tb.RepVGGBlock(16, 16, groups=4)), 3,
               "RepVGG: 3->8, 8->16 stride 2 (no identity), 16->16 with identity, 16->16 groups 4 with identity; ReLU"),
    "yolov6_repvgg": (lambda: seq(*(tb.RepVGGBlock(c, 16, stride=s, variant="yolov6")
                                    for c, s in ((8, 2), (16, 1), (16, 1)))), 8,
                      "YOLOv6 RepVGGBlock (BN eps 1e-3): 8->16 stride 2, then two 16->16 with identity; ReLU"),
    "yolov7_repconv": (lambda: seq(tb.RepVGGBlock(8, 16, variant="yolov7"), tb.RepVGGBlock(16, 16, variant="yolov7"),
                                   tb.RepVGGBlock(16, 16, variant="yolov7", identity=False),
                                   tb.RepVGGBlock(16, 16, stride=2, variant="yolov7")), 8,
                       "YOLOv7 RepConv (BN eps 1e-3, SiLU): 8->16, 16->16 with identity BN, 16->16 without, "
                       "16->16 stride 2"),
    "ppyoloe_repvgg": (lambda: seq(tb.RepVGGBlock(8, 16, variant="ppyoloe", alpha=True),
                                   tb.RepVGGBlock(16, 16, variant="ppyoloe", alpha=True),
                                   tb.RepVGGBlock(16, 16, variant="ppyoloe")), 8,
                       "PP-YOLOE RepVggBlock (no identity, swish): two with alpha (shape [1]) on the 1x1 branch, "
                       "one without"),
    "acnet": (lambda: seq(tb.ACBlock(3, 8), tb.ACBlock(8, 16, stride=2), tb.ACBlock(16, 16, groups=4)), 3,
              "ACNet: 3x3 + 1x3 + 3x1 conv-BN: 3->8, 8->16 stride 2, 16->16 groups 4; ReLU"),
    "dbb": (lambda: seq(tb.DiverseBranchBlock(3, 8), tb.DiverseBranchBlock(8, 16, stride=2),
                        tb.DiverseBranchBlock(16, 16, groups=16)), 3,
            "Diverse Branch Block, 3x3: 3->8, 8->16 stride 2 (four branches, BNAndPad, IdentityBasedConv1x1), "
            "16 depthwise (origin + 1x1(x2 width)->3x3 + AvgPool(pad 1)-BN); ReLU"),
    "mobileone": (lambda: seq(tb.MobileOneBlock(8, 8, 3, groups=8, num_conv_branches=3),
                              tb.MobileOneBlock(8, 16, 1, num_conv_branches=3),
                              tb.MobileOneBlock(16, 16, 3, stride=2, groups=16, num_conv_branches=3),
                              tb.MobileOneBlock(16, 16, 1, num_conv_branches=3)), 8,
                  "MobileOne, 3 conv branches: dw 3x3 (+scale +skip), pw 8->16 (no skip), dw 3x3 stride 2 "
                  "(+scale, no skip), pw 16->16 (+skip); ReLU"),
    "replknet": (lambda: seq(tb.RepLKBlock(8, 16, 13, 5), tb.RepLKBlock(8, 16, 7, 3)), 8,
                 "RepLKNet block x + pw2(ReLU(LK(pw1(BN(x))))): dw 13x13 + 5x5, then dw 7x7 + 3x3 "
                 "(deploy merges only the LK convs, as the authors do)"),
    "fastvit_repmixer": (lambda: seq(tb.RepMixer(16), tb.RepMixer(16)), 16,
                         "FastViT RepMixer x + ls*(mixer(x) - norm(x)), twice, dim 16, layer scale (16,1,1)"),
    "repghost": (lambda: seq(tb.RepGhostModule(8, 16), tb.RepGhostModule(16, 16, reparam_identity=True)), 8,
                 "RepGhost module: 1x1 conv-BN-ReLU then dw 3x3 conv-BN + BN branch (+ identity in the 2nd); "
                 "only the cheap op is re-parameterized"),
    "repvit": (lambda: Pooled(seq(tb.RepViTBlock(16, 32), tb.RepViTBlock(16, 32)), tb.RepViTClassifier(16, 10)), 16,
               "RepViT: two blocks (RepVGGDW, residual 1x1-GELU-1x1 conv-BN), pool, flatten, "
               "BN1d-Linear + distillation BN1d-Linear averaged (all fused in deploy)"),
}


def export(net: nn.Module, x: torch.Tensor, path: Path, variant: Variant, dynamic: bool = True) -> None:
    common = dict(input_names=["input"], output_names=["output"], opset_version=variant.opset)
    axes = (0, 2, 3) if variant.dynamic == "hw" else (0,)
    names = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if variant.exporter == "ts":
            dims = {a: names[a] for a in axes}
            torch.onnx.export(net, (x,), str(path), dynamo=False, **common,
                              dynamic_axes={"input": dims, "output": {0: "batch"}} if dynamic else None)
        else:
            shapes = ({a: torch.export.Dim(names[a]) if a == 0 else torch.export.Dim(names[a], min=8)
                        for a in axes},) if dynamic else None
            program = torch.onnx.export(net, (x,), dynamo=True, **common, dynamic_shapes=shapes,
                                        optimize=variant.optimize)
            program.save(str(path), external_data=False)
    model = onnx.load(path)
    # dynamo records each node's Python stack trace, with absolute paths and line numbers: drop it so
    # the files do not depend on where this runs (the other node metadata_props stay, as users have them).
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4          # a failing run raises; no extra red log line
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def check(name: str, got: np.ndarray, want: np.ndarray, half: bool = False) -> float:
    """Outputs equal to float32 tolerances, or float16's (1e-2 of the output's scale: ~10 roundings)."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    err = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    rtol, atol = (1e-2, 1e-2) if half else (RTOL, ATOL)
    if not np.allclose(got, want, rtol=rtol, atol=atol * scale):
        raise SystemExit(f"{name}: outputs differ, max abs error {err:.3g} (output scale {scale:.3g})")
    return err


def histogram(path: Path) -> str:
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    return " ".join(f"{op}:{n}" for op, n in sorted(ops.items()))


def export_pair(name, variant_name, nets, x, checks, dynamic) -> list[dict[str, np.ndarray]]:
    """Export train and deploy, run both in onnxruntime on each check input; raises if a file does not run."""
    outputs = [{} for _ in checks]
    for kind, net in nets.items():
        path = OUT / f"{name}.{variant_name}.{kind}.onnx"
        export(net, x, path, VARIANTS[variant_name], dynamic)
        for out, x_check in zip(outputs, checks):
            out[kind] = run(path, x_check.numpy())
    return outputs


#: Dynamic height and width are checked at the example size and at this odd one as well.
ODD_HW = (17, 23)


def build(name: str, seed: int) -> dict:
    make, channels, description = NETS[name]
    torch.manual_seed(seed)
    trained = tb.randomize_(make(), seed)
    torch.manual_seed(seed)
    untrained = make().eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, channels, 16, 16, generator=g)               # export example
    x_check = torch.randn(BATCH + 1, channels, 16, 16, generator=g)     # other values, other batch size
    x_odd = torch.randn(BATCH + 1, channels, *ODD_HW, generator=g)
    with torch.no_grad():
        twin_err = check(f"{name} torch deploy", tb.deploy_twin(trained)(x_check).numpy(), trained(x_check).numpy())
    print(f"{name}: torch train vs deploy {twin_err:.2e}")
    files, shapes = {}, {}
    for variant_name, variant in VARIANTS.items():
        if variant.blocks is not None and name not in variant.blocks:
            continue
        train = trained if variant.trained else untrained
        nets = {"train": train, "deploy": tb.deploy_twin(train)}
        checks = ([x_check] + [x_odd] if variant.dynamic == "hw" else
                  [x_check[:BATCH]] if variant.dynamic == "none" else [x_check])
        with torch.no_grad():
            wants = [train(c).numpy() for c in checks]
        if variant.half:
            nets = {k: copy.deepcopy(n).half() for k, n in nets.items()}
        cast = (lambda t: t.half()) if variant.half else (lambda t: t)
        exported = export_variant(name, variant_name, nets, cast(x), [cast(c) for c in checks])
        if exported is None:
            continue
        shapes[variant_name], outputs = exported
        if shapes[variant_name][0] == 1:
            wants = [w[:1] for w in wants[:1]]
        for kind in nets:
            path = OUT / f"{name}.{variant_name}.{kind}.onnx"
            errs = [check(path.name, out[kind], w, variant.half) for out, w in zip(outputs, wants)]
            files.setdefault(variant_name, {})[kind] = path.name
            print(f"  {path.name:44s} {path.stat().st_size / 1024:6.1f} KB  ort vs torch {max(errs):.2e}  "
                  f"{histogram(path)}")
        err = max(check(f"{name}.{variant_name} train vs deploy", out["deploy"], out["train"], variant.half)
                  for out in outputs)
        print(f"  {name}.{variant_name}: ort train vs ort deploy, max abs error {err:.2e}")
    return {"description": description, "input_shape": shapes, "seed": seed, "files": files}


def export_variant(name, variant_name, nets, x, checks) -> tuple[list, list] | None:
    """(the input shape as declared, the outputs per check input). Dynamic when the export runs at
    every check size; else static at batch 1 and the example size, or None (no files) for a
    dynamic-height-and-width variant, which would then be its static twin again."""
    channels = x.shape[1]
    if VARIANTS[variant_name].dynamic == "none":
        return list(x.shape), export_pair(name, variant_name, nets, x, checks, dynamic=False)
    try:
        outputs = export_pair(name, variant_name, nets, x, checks, dynamic=True)
        hw = ["height", "width"] if VARIANTS[variant_name].dynamic == "hw" else [16, 16]
        return ["batch", channels, *hw], outputs
    except Exception as error:  # onnxruntime's own exception types are not importable by name
        # TorchScript bakes the example batch size into the Expand shapes of DBB's slice
        # assignment while declaring the batch dynamic: such a net is exported with batch 1.
        print(f"  {name}.{variant_name}: the dynamic export fails at another size "
              f"({str(error).splitlines()[0][-60:]}): static batch 1 instead")
        if VARIANTS[variant_name].dynamic == "hw":
            for kind in nets:
                (OUT / f"{name}.{variant_name}.{kind}.onnx").unlink(missing_ok=True)
            print(f"  {name}.{variant_name}: skipped, a static export is no dynamic height and width")
            return None
        first = checks[0][:1]
        outputs = export_pair(name, variant_name, nets, first, [first], dynamic=False)
        return [1, channels, 16, 16], outputs


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # "torchvision is not installed" notices
    only = sys.argv[1:]   # block names: re-export those only (the manifest is written by a full run)
    if not only:
        for stale in OUT.glob("*.onnx"):
            stale.unlink()
    blocks = {name: build(name, seed) for seed, name in enumerate(NETS, start=2021) if not only or name in only}
    manifest = {"torch": torch.__version__, "onnx": onnx.__version__,
                "opset": {k: v.opset for k, v in VARIANTS.items()},
                "exporters": {k: v.describe() for k, v in VARIANTS.items()},
                "variants": {k: {"exporter": v.exporter, "opset": v.opset, "optimize": v.optimize, "half": v.half,
                                 "dynamic": v.dynamic, "trained": v.trained} for k, v in VARIANTS.items()},
                "odd_input_hw": list(ODD_HW),
                "input": "input", "output": "output", "blocks": blocks}
    if not only:
        (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.glob("*.onnx"))
    print(f"{len(list(OUT.glob('*.onnx')))} files, {total / 1024:.0f} KB in {OUT}")


if __name__ == "__main__":
    main()
