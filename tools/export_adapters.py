"""Export the issue-21 fixtures: PEFT adapters (LoRA, DoRA), BatchNorm after Concat, quantized (Q/DQ) graphs.

    python tools/export_adapters.py        # about a minute; needs torch, peft, transformers, onnxscript

Writes tests/fixtures/adapters/ (deleting its old .onnx files first) and its manifest.json:

- ``<case>.<ts|dynamo>.<train|twin>.onnx`` for every case of CASES: the net as a user exports it
  (TorchScript, opset 17; dynamo, opset 20; dynamic batch) and its reference twin exported the same
  way (each node's metadata_props dropped: dynamo's module paths were two thirds of the bytes).
  LoRA and DoRA twins are PEFT's own ``merge_and_unload()``; the BatchNorm-after-Concat twins are
  a hand fusion in torch (float64): each channel segment of the BatchNorm folded into the conv that
  produced it, and every conv-BN pair fused as the models' own ``fuse()`` does.
- ``qdq_<name>.<train|onnxrep>.onnx``: onnxruntime's ``quantize_static`` (QDQ format, per-channel int8
  weights, int8 activations, MinMax calibration on CALIBRATION fixed random inputs) of a float training
  export (models/repvgg.train.onnx, tests/fixtures/torch/mobileone.ts.train.onnx), and the same
  quantization of onnxrep's output for that float model.

Models are built from configs and small hand-written modules with random weights (nothing is
downloaded): transformers' ViT at hidden size 16 with one layer; LoRA rank 2 with random, non-zero
A and B; DoRA magnitudes scaled away from the weight norms (as after training); BatchNorm with random
statistics; eval mode. Before writing the manifest this checks torch train == torch twin and, for
every file, onnxruntime (its optimizations off) == torch. The files are the same byte for byte
from run to run on one machine.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import peft
import torch
import transformers
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import export_fixtures as ef  # noqa: E402  (its export(): TorchScript / dynamo, stack traces dropped)
import torch_blocks as tb  # noqa: E402
from bench_qdq import CALIBRATION, quantize  # noqa: E402  (the quantization that tools/bench_qdq.py measures)

OUT = ROOT / "tests" / "fixtures" / "adapters"
EXPORTERS = {"ts": ef.VARIANTS["ts"], "dynamo": ef.VARIANTS["dynamo"]}
BATCH = 2
RTOL, ATOL = 1e-4, 1e-5       # atol relative to the output's largest magnitude
QDQ_SOURCES = {"repvgg": ROOT / "models" / "repvgg.train.onnx",
               "mobileone": ROOT / "tests" / "fixtures" / "torch" / "mobileone.ts.train.onnx"}


# --- the nets ------------------------------------------------------------------------------------------

class Exported(nn.Module):
    """``forward(x)`` around any module (PeftModel's forward takes ``*args, **kwargs``, which
    torch.export's dynamic shapes cannot be matched against)."""

    def __init__(self, net: nn.Module, vit: bool = False):
        super().__init__()
        self.net, self.vit = net, vit

    def forward(self, x):
        return self.net(pixel_values=x).last_hidden_state if self.vit else self.net(x)


def tiny_vit(seed: int) -> nn.Module:
    """Random trained-looking weights: transformers' initialization (zero biases, LayerNorm 1 and 0) would
    let TorchScript deduplicate the equal tensors into one initializer that every layer shares."""
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=8, patch_size=4, num_channels=3)
    vit = tb.randomize_(transformers.ViTModel(config, add_pooling_layer=False), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(vit.named_parameters()):
            if "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif "cls_token" in name or "position_embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return vit


VIT_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def small_convnet() -> nn.Module:
    """Conv-BN-ReLU, Conv-BN-ReLU, Conv(1x1, bias)-BN: the convs LoRA adapts, each followed by its BN."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))


CONV_TARGETS = ["0", "3", "6"]


def randomize_adapters_(model: nn.Module, seed: int) -> None:
    """Random non-zero LoRA A and B (a trained adapter, not PEFT's B = 0 start); DoRA magnitudes
    scaled by [0.5, 1.5] per channel, so that magnitude / ‖W + s·BA‖ is not 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                fan_in = p[0].numel()
                p.copy_(0.5 * torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif "lora_magnitude_vector" in name:
                p.mul_(0.5 + torch.rand(p.shape, generator=g))


def lora_pair(base: nn.Module, targets, seed: int, adapters: int = 1, dora: bool = False, vit: bool = False):
    """(PEFT model with ``adapters`` active adapters, its merge_and_unload() twin), both eval."""
    configs = [peft.LoraConfig(r=2, lora_alpha=4 + 2 * i, target_modules=targets, use_dora=dora,
                               init_lora_weights=False) for i in range(adapters)]
    model = peft.get_peft_model(base, configs[0])
    names = ["default"]
    for i, config in enumerate(configs[1:], start=2):
        model.add_adapter(f"adapter{i}", config)
        names.append(f"adapter{i}")
    model.base_model.set_adapter(names)
    randomize_adapters_(model, seed)
    model.eval()
    twin = copy.deepcopy(model).merge_and_unload().eval()
    return Exported(model, vit).eval(), Exported(twin, vit).eval()


def vit_lora(seed: int, adapters: int = 1, dora: bool = False):
    torch.manual_seed(seed)
    return lora_pair(tiny_vit(seed).eval(), VIT_LINEARS, seed, adapters, dora, vit=True)


def conv_lora(seed: int, adapters: int = 1, dora: bool = False):
    torch.manual_seed(seed)
    return lora_pair(tb.randomize_(small_convnet(), seed).eval(), CONV_TARGETS, seed, adapters, dora)


class ConvBnAct(nn.Module):
    """YOLOv5's Conv: conv (no bias) → BN (eps 1e-3) → SiLU."""

    def __init__(self, c1, c2, k=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = ConvBnAct(c, c, 1), ConvBnAct(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class BottleneckCSP(nn.Module):
    """YOLOv5's BottleneckCSP (models/common.py): cv4(act(bn(cat(cv3(m(cv1(x))), cv2(x))))),
    cv2 and cv3 plain bias-free convs, bn over their concatenation."""

    def __init__(self, c1, c2, n=1):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = ConvBnAct(c1, c_, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = ConvBnAct(2 * c_, c2, 1)
        self.bn = nn.BatchNorm2d(2 * c_, eps=1e-3)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_) for _ in range(n)))

    def forward(self, x):
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))

    def concat_parts(self):
        return [self.cv3, self.cv2]


class DenseAggregation(nn.Module):
    """DenseNet-style aggregation: growth convs on the block input concatenated, then the transition
    BN → ReLU → 1x1 conv. Each concatenated part is a conv read only by the Concat: a 3x3, a 3x3
    after 1x1-BN-ReLU, a 1x1 with bias on ReLU(x)."""

    def __init__(self, c=8, growth=4):
        super().__init__()
        self.a = nn.Conv2d(c, growth, 3, padding=1, bias=False)
        self.b1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.b = nn.Conv2d(c, growth, 3, padding=1, bias=False)
        self.c = nn.Conv2d(c, growth, 1, bias=True)
        self.bn = nn.BatchNorm2d(3 * growth)
        self.transition = nn.Sequential(nn.ReLU(), nn.Conv2d(3 * growth, c, 1, bias=False))

    def forward(self, x):
        parts = (self.a(x), self.b(self.b1(x)), self.c(torch.relu(x)))
        return self.transition(self.bn(torch.cat(parts, 1)))

    def concat_parts(self):
        return [self.a, self.b, self.c]


@torch.no_grad()
def fold_bn_into_conv_(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """conv → y·scale + shift per output channel, in place (float64 math, cast back)."""
    bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    conv.weight.copy_(conv.weight.double() * scale.reshape(-1, 1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
    conv.bias.copy_(bias * scale + shift)


@torch.no_grad()
def hand_fused(net: nn.Module) -> nn.Module:
    """The deploy twin of a BN-after-Concat block: every conv → BN pair fused, and the BN after the
    Concat split per channel segment, each segment folded into the conv that produced it."""
    twin = copy.deepcopy(net)
    for block in [m for m in twin.modules() if hasattr(m, "concat_parts")]:
        scale, shift = tb.bn_affine(block.bn)
        start = 0
        for conv in block.concat_parts():
            stop = start + conv.out_channels
            fold_bn_into_conv_(conv, scale[start:stop], shift[start:stop])
            start = stop
        assert start == block.bn.num_features
        block.bn = nn.Identity()
    for module in list(twin.modules()):
        if isinstance(module, ConvBnAct):
            fold_bn_into_conv_(module.conv, *tb.bn_affine(module.bn))
            module.bn = nn.Identity()
        elif isinstance(module, nn.Sequential) and len(module) >= 2 and isinstance(module[1], nn.BatchNorm2d):
            fold_bn_into_conv_(module[0], *tb.bn_affine(module[1]))
            module[1] = nn.Identity()
    return twin.eval()


def concat_pair(make, seed: int):
    torch.manual_seed(seed)
    net = tb.randomize_(make(), seed).eval()
    return net, hand_fused(net)


#: name → (builder of (train, twin), input channels, height/width, description)
CASES = {
    "vit_lora": (lambda: vit_lora(2101), 3, 8,
                 "transformers ViT (hidden 16, 1 layer, 2 heads, MLP 32, 8x8 image, patch 4), LoRA r=2 on "
                 "q/k/v/o and fc1/fc2"),
    "vit_lora2": (lambda: vit_lora(2102, adapters=2), 3, 8, "the same ViT, two active LoRA adapters (r=2)"),
    "conv_lora": (lambda: conv_lora(2103), 3, 8,
                  "conv net Conv3x3-BN-ReLU, Conv3x3-BN-ReLU, Conv1x1(bias)-BN; LoRA r=2 on the three convs"),
    "conv_lora2": (lambda: conv_lora(2104, adapters=2), 3, 8, "the same conv net, two active LoRA adapters"),
    "vit_dora": (lambda: vit_lora(2105, dora=True), 3, 8, "the same ViT, DoRA (use_dora=True) r=2 on its linears"),
    "conv_dora": (lambda: conv_lora(2106, dora=True), 3, 8, "the same conv net, DoRA r=2 on its convs"),
    "csp": (lambda: concat_pair(lambda: nn.Sequential(BottleneckCSP(8, 8), BottleneckCSP(8, 8)), 2107), 8, 8,
            "two YOLOv5 BottleneckCSP(8, 8, n=1): bn(cat(cv3(m(cv1(x))), cv2(x))), SiLU"),
    "dense": (lambda: concat_pair(DenseAggregation, 2108), 8, 8,
              "DenseNet-style aggregation: cat(3x3(x), 3x3(1x1-BN-ReLU(x)), 1x1+bias(ReLU(x))) → BN → ReLU → 1x1"),
}


# --- export and checks ---------------------------------------------------------------------------------

def histogram(path: Path) -> str:
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    return " ".join(f"{op}:{n}" for op, n in sorted(ops.items()))


def drop_node_metadata(path: Path) -> None:
    """dynamo records each node's torch module path, class and FX name (two thirds of a file's bytes
    here): dropped, so the fixtures stay small. No rewrite reads them."""
    model = onnx.load(path)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save_model(model, path)


def export_case(name: str) -> dict:
    build, channels, hw, description = CASES[name]
    train, twin = build()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BATCH, channels, hw, hw, generator=g)
    x_check = torch.randn(BATCH + 1, channels, hw, hw, generator=g)
    with torch.no_grad():
        want = train(x_check).numpy()
        ef.check(f"{name}: torch twin", twin(x_check).numpy(), want)
        # The adapter must matter: a zero B (PEFT's initialization) would make every fixture trivial.
        if isinstance(getattr(train, "net", None), peft.PeftModel):
            with train.net.disable_adapter():
                base = train(x_check).numpy()
            assert np.abs(base - want).max() > 1e-3 * np.abs(want).max(), f"{name}: the adapter changes nothing"
    files = {}
    for exporter, variant in EXPORTERS.items():
        for kind, net in (("train", train), ("twin", twin)):
            path = OUT / f"{name}.{exporter}.{kind}.onnx"
            ef.export(net, x, path, variant)
            drop_node_metadata(path)
            err = ef.check(path.name, ef.run(path, x_check.numpy()), want)
            files.setdefault(exporter, {})[kind] = path.name
            print(f"  {path.name:36s} {path.stat().st_size / 1024:6.1f} KB  ort vs torch {err:.1e}  {histogram(path)}")
    return {"description": description, "input_shape": ["batch", channels, hw, hw], "files": files}


def export_qdq(name: str, source: Path) -> dict:
    import onnxrep

    optimized, report = onnxrep.optimize(str(source))
    assert report.verification.passed
    float_onnxrep = OUT / f"qdq_{name}.float_onnxrep.tmp.onnx"
    onnx.save_model(optimized, float_onnxrep)
    files = {}
    try:
        for kind, src in (("train", source), ("onnxrep", float_onnxrep)):
            path = OUT / f"qdq_{name}.{kind}.onnx"
            quantize(src, path)
            files[kind] = path.name
            print(f"  {path.name:36s} {path.stat().st_size / 1024:6.1f} KB  {histogram(path)}")
    finally:
        float_onnxrep.unlink()
    return {"float": str(source.relative_to(ROOT)), "files": files,
            "quantization": f"onnxruntime quantize_static: QDQ, per_channel, int8 weights and activations, "
                            f"MinMax on {CALIBRATION} standard-normal inputs (seed 11)"}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)   # quantize_static's "consider pre-processing" notice
    warnings.simplefilter("ignore")
    for stale in OUT.glob("*.onnx"):
        stale.unlink()
    cases = {}
    for name in CASES:
        print(name)
        cases[name] = export_case(name)
    qdq = {}
    for name, source in QDQ_SOURCES.items():
        print(f"qdq_{name}")
        qdq[name] = export_qdq(name, source)
    import onnxruntime
    manifest = {"torch": torch.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "exporters": {k: v.describe() for k, v in EXPORTERS.items()},
                "input": "input", "output": "output", "cases": cases, "qdq": qdq}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.glob("*.onnx"))
    print(f"{len(list(OUT.glob('*.onnx')))} files, {total / 1024:.0f} KB in {OUT}")


if __name__ == "__main__":
    main()
