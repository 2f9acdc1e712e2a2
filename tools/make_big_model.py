"""A synthetic training-time RepVGG-B3 (about 123M parameters, 490 MB) for throughput benchmarks.

RepVGG-B3's layout (Ding et al. 2021, table 2: blocks 1-4-6-16-1, widths
64-192-384-768-2560), each block a 3x3 conv-BN + 1x1 conv-BN (+ a BN identity
when the shape allows), joined by Add, then Relu; random weights and random
BatchNorm statistics. Written with numpy and onnx only, no PyTorch.

    python tools/make_big_model.py /tmp/repvgg_b3.train.onnx
    python tools/make_big_model.py /tmp/huge.onnx --width-scale 4.5   # over 2 GB: external data

``--width-scale`` multiplies every width (parameters grow with its square).
A model over 2 GB is written with its weights in ``NAME.data`` beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCKS = (1, 4, 6, 16, 1)
WIDTHS = (64, 192, 384, 768, 2560)


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.params = 0

    def weight(self, value: np.ndarray, name: str) -> str:
        value = value.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(value, name))
        self.params += value.size
        return name

    def bn(self, x: str, channels: int, name: str) -> str:
        rng = self.rng
        params = [self.weight(rng.uniform(0.5, 1.5, channels), f"{name}.gamma"),
                  self.weight(rng.normal(0, 0.1, channels), f"{name}.beta"),
                  self.weight(rng.normal(0, 0.1, channels), f"{name}.mean"),
                  self.weight(rng.uniform(0.5, 2.0, channels), f"{name}.var")]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [f"{name}.out"], name=name))
        return f"{name}.out"

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, name: str) -> str:
        fan_in = cin * k * k
        w = self.weight(self.rng.standard_normal((cout, cin, k, k)) / np.sqrt(fan_in), f"{name}.weight")
        self.nodes.append(helper.make_node("Conv", [x, w], [f"{name}.conv"], name=f"{name}.conv",
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        return self.bn(f"{name}.conv", cout, f"{name}.bn")

    def block(self, x: str, cin: int, cout: int, stride: int, name: str) -> str:
        terms = [self.conv_bn(x, cin, cout, 3, stride, f"{name}.dense"),
                 self.conv_bn(x, cin, cout, 1, stride, f"{name}.1x1")]
        if stride == 1 and cin == cout:
            terms.append(self.bn(x, cin, f"{name}.identity"))
        total = terms[0]
        for i, term in enumerate(terms[1:]):
            total, previous = f"{name}.sum{i}", total
            self.nodes.append(helper.make_node("Add", [previous, term], [total], name=total))
        self.nodes.append(helper.make_node("Relu", [total], [f"{name}.out"], name=f"{name}.relu"))
        return f"{name}.out"


def build(width_scale: float = 1.0, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    b = Builder(seed)
    x, cin = "input", 3
    for stage, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS)):
        width = max(1, round(width * width_scale))
        for i in range(blocks):
            x = b.block(x, cin, width, 2 if i == 0 else 1, f"stage{stage}.{i}")
            cin = width
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"))
    fc_w = b.weight(b.rng.standard_normal((1000, cin)) / np.sqrt(cin), "fc.weight")
    fc_b = b.weight(np.zeros(1000), "fc.bias")
    b.nodes.append(helper.make_node("Gemm", ["features", fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(b.nodes, "repvgg_b3_train",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
                              b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxrep-tools")
    model.ir_version = 8
    return model, b.params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--width-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, params = build(args.width_scale, args.seed)
    external = params * 4 > 2**31 - 2**26
    onnx.save(model, args.output, save_as_external_data=external, location=f"{args.output.name}.data")
    size = sum(p.stat().st_size for p in args.output.parent.glob(f"{args.output.name}*"))
    print(f"{args.output}: {params / 1e6:.1f}M parameters, {size / 1e6:.0f} MB"
          f"{' (external data)' if external else ''}, {len(model.graph.node)} nodes")


if __name__ == "__main__":
    main()
