"""Build small ONNX graphs with random weights: for the tests and the sample-model scripts.

Weights are scaled by 1/√fan_in and BatchNormalization statistics are all
random (identity BNs hide bugs), so activations stay bounded and numeric
comparisons mean something.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self, seed: int = 0, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.channels: dict[str, int] = {}
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    @property
    def elem_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    def input(self, name: str, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, self.elem_type, list(shape)))
        self.channels[name] = shape[1] if len(shape) > 1 else None
        return name

    def output(self, name: str, shape: Sequence[int | str] | None = None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, self.elem_type, shape))

    def constant(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("w")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
             name: str | None = None, **attrs) -> str | list[str]:
        name = name or self._name(op.lower())
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(outputs)] \
            if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def conv_weights(self, cin: int, cout: int, kernel: Sequence[int], group: int = 1,
                     bias: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        fan_in = cin // group * int(np.prod(kernel))
        w = self.rng.standard_normal((cout, cin // group, *kernel)) / np.sqrt(fan_in)
        b = self.rng.standard_normal(cout) * 0.1 if bias else None
        return w.astype(self.dtype), None if b is None else b.astype(self.dtype)

    def conv(self, x: str, cout: int, kernel: int | Sequence[int] = 3, *, stride=1, pads=None,
             dilation=1, group: int = 1, bias: bool = True, name: str | None = None,
             weight: np.ndarray | None = None, **attrs) -> str:
        """A Conv; ``pads`` default to 'same' (d·(k−1)/2 each side) for odd kernels."""
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        nd = len(kernel)
        stride = (stride,) * nd if isinstance(stride, int) else tuple(stride)
        dilation = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
        if pads is None:
            half = [d * (k - 1) // 2 for d, k in zip(dilation, kernel)]
            pads = half + half
        cin = self.channels[x]
        w, b = self.conv_weights(cin, cout, kernel, group, bias)
        if weight is not None:
            w = weight
        inputs = [x, self.constant(w)] + ([self.constant(b)] if b is not None else [])
        out = self.node("Conv", inputs, name=name, kernel_shape=list(kernel), strides=list(stride),
                        pads=list(pads), dilations=list(dilation), group=group, **attrs)
        self.channels[out] = cout
        return out

    def bn_params(self, channels: int) -> list[np.ndarray]:
        rng = self.rng
        gamma = rng.uniform(0.5, 1.5, channels) * rng.choice([-1.0, 1.0], channels)
        beta = rng.standard_normal(channels) * 0.2
        mean = rng.standard_normal(channels) * 0.3
        var = rng.uniform(0.5, 2.0, channels)
        return [a.astype(self.dtype) for a in (gamma, beta, mean, var)]

    def bn(self, x: str, name: str | None = None, epsilon: float = 1e-5, **attrs) -> str:
        channels = self.channels[x]
        params = [self.constant(p) for p in self.bn_params(channels)]
        out = self.node("BatchNormalization", [x, *params], name=name, epsilon=epsilon, **attrs)
        self.channels[out] = channels
        return out

    def op(self, op: str, *inputs: str, **attrs) -> str:
        out = self.node(op, inputs, **attrs)
        self.channels[out] = self.channels.get(inputs[0])
        return out

    def model(self, opset: int = 17, ir_version: int | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="onnxrep.testing")
        model.ir_version = ir_version or min(onnx.IR_VERSION, 10)
        # Outputs declared without a shape take the inferred one.
        graph = onnx.shape_inference.infer_shapes(model).graph
        inferred = {v.name: v for v in (*graph.value_info, *graph.output)}
        for out in model.graph.output:
            if not out.type.tensor_type.HasField("shape") and out.name in inferred:
                out.type.CopyFrom(inferred[out.name].type)
        return model


def elem_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


FLOAT = TensorProto.FLOAT
