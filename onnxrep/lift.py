"""Lift graph nodes into the algebra: a Conv into a ConvSpec, a BatchNormalization
into a per-channel affine. Each returns a :class:`Refusal` with the reason when
the node is not provably the linear op it looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import kernels
from onnxrep.graph import Context, constant_value, is_op, producer, sharing
from onnxrep.spec import ConvSpec, Refusal

FLOAT_TYPES = (np.float16, np.float32, np.float64)
#: Ops lifted as a ConvSpec with weights: a Gemm is a conv with no spatial axes.
LINEAR_OPS = ("Conv", "Gemm")


@dataclass(frozen=True, eq=False)
class LiftedConv:
    spec: ConvSpec
    dtype: np.dtype
    has_bias: bool


@dataclass(frozen=True, eq=False)
class Affine:
    """``y = scale * x + shift`` per channel (axis 1); both ``(C,)`` float64 (or scalars)."""

    source: gs.Tensor
    scale: np.ndarray
    shift: np.ndarray
    dtype: np.dtype

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.broadcast_to(self.scale, (channels,)).astype(np.float64),
                np.broadcast_to(self.shift, (channels,)).astype(np.float64))


ELEMENTWISE = ("Mul", "Div", "Add", "Sub", "Neg")


def affine(node: gs.Node, ctx: Context, rank: int | None) -> Affine | Refusal | None:
    """A BatchNormalization, or Mul/Div/Add/Sub/Neg by a per-channel constant, as an affine.

    ``rank`` is the rank of the non-constant input when known: a constant of
    shape (C, 1, 1) is per-channel only for a rank-4 input. None when the node
    is no such op at all (e.g. an Add of two computed tensors).
    """
    if is_op(node, "BatchNormalization"):
        return batchnorm(node, ctx)
    if not is_op(node, *ELEMENTWISE) or len(node.outputs) != 1:
        return None
    if _closes_gelu(node):
        return Refusal(f"{node.name} closes a GELU (x·(1+erf(x/√2))·0.5), which runtimes fuse into one op: "
                       f"folding it elsewhere would break that fusion")
    if node.op == "Neg":
        return Affine(node.inputs[0], np.array(-1.0), np.array(0.0), node.inputs[0].dtype)
    a, b = node.inputs
    a_value, b_value = (ctx.constant(t, "operand") for t in (a, b))
    if isinstance(a_value, Refusal) == isinstance(b_value, Refusal):
        return None  # both computed (a join, not an affine) or both constant
    const_first = not isinstance(a_value, Refusal)
    source, value = (b, a_value) if const_first else (a, b_value)
    if node.op == "Div" and const_first:
        return None  # c / x is not linear in x
    if value.dtype.type not in FLOAT_TYPES:
        return Refusal(f"{node.name}: constant of dtype {value.dtype}")
    per_channel = _per_channel(value, rank)
    if isinstance(per_channel, Refusal):
        return Refusal(f"{node.name}: {per_channel.reason}")
    one, zero = np.array(1.0), np.array(0.0)
    if node.op == "Div":
        if not np.all(per_channel):
            return Refusal(f"{node.name} divides by zero")
        scale, shift = 1.0 / per_channel, zero
    else:
        scale, shift = {
            "Mul": (per_channel, zero),
            "Add": (one, per_channel),
            "Sub": ((-one, per_channel) if const_first else (one, -per_channel)),
        }[node.op]
    return Affine(source, scale, shift, source.dtype if source.dtype is not None else value.dtype)


def _closes_gelu(node: gs.Node) -> bool:
    """The final ``Mul(·, 0.5)`` of an exported GELU: its other input is ``Mul(x, Add(Erf|Tanh(…), 1))``."""
    if node.op != "Mul":
        return False
    for tensor in node.inputs:
        inner = producer(tensor)
        if is_op(inner, "Mul") and any(
                is_op(add := producer(t), "Add") and any(is_op(producer(u), "Erf", "Tanh") for u in add.inputs)
                for t in inner.inputs):
            return True
    return False


def _per_channel(value: np.ndarray, rank: int | None) -> np.ndarray | Refusal:
    """The constant as a scalar or a (C,) vector, if it broadcasts along the channel axis only."""
    value = np.asarray(value, np.float64)
    if value.size == 1 and (rank is None or value.ndim <= rank):
        return value.reshape(())
    if rank is None:
        return Refusal("the input rank is unknown")
    if value.ndim > rank:
        return Refusal(f"constant of shape {value.shape} broadcasts the output")
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]):
        return Refusal(f"constant of shape {value.shape} is not per-channel")
    return value.reshape(-1)


def _weight(tensor: gs.Tensor, node: gs.Node, ctx: Context, what: str) -> np.ndarray | Refusal:
    value = ctx.constant(tensor, f"{what} of {node.name or node.op}")
    if isinstance(value, Refusal):
        return value
    shared = sharing(tensor, node, ctx)
    if shared is not None:
        return shared
    if value.dtype.type not in FLOAT_TYPES:
        return Refusal(f"{what} '{tensor.name}' has dtype {value.dtype}, not a float type")
    return value


def _weight_shape(node: gs.Node) -> tuple | None:
    """The shape of a Conv's or Gemm's weight: exported, or its constant value's (a Constant node)."""
    weight = node.inputs[1] if is_op(node, *LINEAR_OPS) and len(node.inputs) > 1 else None
    if weight is None:
        return None
    shape = weight.shape
    if not shape or not all(isinstance(d, int) for d in shape):
        value = constant_value(weight)
        shape = value.shape if value is not None else None
    return tuple(shape) if shape else None


def layout(node: gs.Node) -> tuple[int, int] | None:
    """(spatial rank, input channels) of a Conv or Gemm, from its weight's shape."""
    shape = _weight_shape(node)
    if shape is None:
        return None
    if node.op == "Gemm":
        return 0, shape[0] if node.attrs.get("transB", 0) == 0 else shape[1]
    return len(shape) - 2, shape[1] * int(node.attrs.get("group", 1))


def conv_out_channels(node: gs.Node) -> int:
    """Output channels of a Conv or Gemm whose weight shape is known (see layout)."""
    shape = _weight_shape(node)
    if node.op == "Gemm" and not node.attrs.get("transB", 0):
        return shape[1]
    return shape[0]


def conv(node: gs.Node, ctx: Context) -> LiftedConv | Refusal:
    """A Conv, or a Gemm (a conv with no spatial axes), with constant weight (and bias) as a ConvSpec."""
    if is_op(node, "Gemm"):
        return gemm(node, ctx)
    if not is_op(node, "Conv"):
        return Refusal(f"{node.op} is not a Conv")
    if len(node.inputs) < 2:
        return Refusal(f"{node.name} has no weight input")
    weight = _weight(node.inputs[1], node, ctx, "weight")
    if isinstance(weight, Refusal):
        return weight
    if weight.ndim < 3:
        return Refusal(f"{node.name} has a weight of rank {weight.ndim}")
    has_bias = len(node.inputs) > 2 and not node.inputs[2].is_empty()
    if has_bias:
        bias = _weight(node.inputs[2], node, ctx, "bias")
        if isinstance(bias, Refusal):
            return bias
    else:
        bias = np.zeros(weight.shape[0])
    nd = weight.ndim - 2
    attrs = node.attrs
    kernel_shape = tuple(attrs.get("kernel_shape", weight.shape[2:]))
    if kernel_shape != weight.shape[2:]:
        return Refusal(f"{node.name}: kernel_shape {kernel_shape} differs from its weight")
    strides = tuple(attrs.get("strides", (1,) * nd))
    dilations = tuple(attrs.get("dilations", (1,) * nd))
    pads = _pads(attrs, kernel_shape, strides, dilations)
    if isinstance(pads, Refusal):
        return Refusal(f"{node.name}: {pads.reason}")
    spec = ConvSpec(
        weight=np.asarray(weight, np.float64),
        bias=np.asarray(bias, np.float64),
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=int(attrs.get("group", 1)),
        cost=int(weight.size),
    )
    return LiftedConv(spec, weight.dtype, has_bias)


def gemm(node: gs.Node, ctx: Context) -> LiftedConv | Refusal:
    """``Y = alpha·X·B' + beta·C`` with constant B and C as a ConvSpec with weight (out, in)."""
    name = node.name or node.op
    if node.attrs.get("transA", 0):
        return Refusal(f"{name} transposes its input (transA=1)")
    weight = _weight(node.inputs[1], node, ctx, "weight")
    if isinstance(weight, Refusal):
        return weight
    if weight.ndim != 2:
        return Refusal(f"{name} has a weight of rank {weight.ndim}")
    dtype = weight.dtype
    weight = np.asarray(weight, np.float64) * float(node.attrs.get("alpha", 1.0))
    if not node.attrs.get("transB", 0):
        weight = weight.T
    has_bias = len(node.inputs) > 2 and not node.inputs[2].is_empty()
    bias = np.zeros(weight.shape[0])
    if has_bias:
        value = _weight(node.inputs[2], node, ctx, "bias")
        if isinstance(value, Refusal):
            return value
        if value.size not in (1, weight.shape[0]) or (value.ndim == 2 and value.shape[0] != 1) or value.ndim > 2:
            return Refusal(f"{name}'s bias of shape {value.shape} is not per output feature")
        bias = bias + np.asarray(value, np.float64).reshape(-1) * float(node.attrs.get("beta", 1.0))
    return LiftedConv(ConvSpec(weight, bias, (), (), (), 1, int(weight.size)), dtype, has_bias)


def _pads(attrs, kernel_shape, strides, dilations) -> tuple[int, ...] | Refusal:
    nd = len(kernel_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        return tuple(attrs.get("pads", (0,) * (2 * nd)))
    if auto_pad == "VALID":
        return (0,) * (2 * nd)
    if any(s != 1 for s in strides):
        return Refusal(f"auto_pad {auto_pad} with stride > 1 pads by the input size")
    # Stride 1: SAME pads are static, total d·(k−1), the odd one at the end (UPPER) or front.
    totals = [d * (k - 1) for d, k in zip(dilations, kernel_shape)]
    small = [t // 2 for t in totals]
    big = [t - t // 2 for t in totals]
    return tuple(small + big) if auto_pad == "SAME_UPPER" else tuple(big + small)


def batchnorm(node: gs.Node, ctx: Context) -> Affine | Refusal:
    """An inference-mode BatchNormalization as a per-channel affine."""
    if not is_op(node, "BatchNormalization"):
        return Refusal(f"{node.op} is not a BatchNormalization")
    name = node.name or node.op
    if node.attrs.get("training_mode", 0):
        return Refusal(f"{name} runs in training mode")
    if not node.attrs.get("spatial", 1):
        return Refusal(f"{name} has spatial=0 (per-position statistics)")
    if any(id(t) in ctx.graph_outputs or t.outputs for t in node.outputs[1:]):
        return Refusal(f"{name}'s running statistics outputs are read")
    if len(node.inputs) < 5:
        return Refusal(f"{name} has {len(node.inputs)} inputs, not 5")
    values = []
    for tensor, what in zip(node.inputs[1:5], ("scale", "bias", "mean", "var")):
        value = ctx.constant(tensor, f"{what} of {name}")
        if isinstance(value, Refusal):
            return value
        values.append(value)
    if len({v.size for v in values}) > 1 or any(v.ndim != 1 for v in values):
        return Refusal(f"{name} parameters are not vectors of one length")
    dtype = node.inputs[0].dtype if node.inputs[0].dtype is not None else values[0].dtype
    scale, shift = kernels.bn_affine(*values, eps=float(node.attrs.get("epsilon", 1e-5)))
    return Affine(node.inputs[0], scale, shift, np.dtype(dtype))


def average_pool(node: gs.Node, channels: int | None) -> ConvSpec | Refusal:
    """An AveragePool as a depthwise conv of 1/(k1·k2·…), when its padding counts as zeros."""
    if not is_op(node, "AveragePool"):
        return Refusal(f"{node.op} is not an AveragePool")
    if channels is None:
        return Refusal(f"the channel count of {node.name}'s input is unknown")
    attrs = node.attrs
    kernel_shape = tuple(attrs["kernel_shape"])
    nd = len(kernel_shape)
    strides = tuple(attrs.get("strides", (1,) * nd))
    dilations = tuple(attrs.get("dilations", (1,) * nd))
    if attrs.get("ceil_mode", 0):
        return Refusal(f"{node.name} uses ceil_mode (partial windows at the end)")
    pads = _pads(attrs, kernel_shape, strides, dilations)
    if isinstance(pads, Refusal):
        return Refusal(f"{node.name}: {pads.reason}")
    if any(pads) and not attrs.get("count_include_pad", 0):
        return Refusal(f"{node.name} pads but does not count the pads (count_include_pad=0, ONNX's "
                       "default): border windows divide by fewer taps")
    weight = kernels.average_kernel(channels, kernel_shape)
    return ConvSpec(weight, np.zeros(channels), strides, pads, dilations, channels, int(weight.size))


def zero_pads(pad: gs.Node, ctx: Context, rank: int) -> tuple[int, ...] | Refusal:
    """The pad's amounts on the spatial axes, if it is a provable zero pad of those only."""
    mode = pad.attrs.get("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return Refusal(f"Pad mode is {mode}, not constant")
    if "pads" in pad.attrs:  # opset < 11
        amounts, value = np.asarray(pad.attrs["pads"]), np.asarray(pad.attrs.get("value", 0.0))
    else:
        amounts = ctx.constant(pad.inputs[1], "pads") if len(pad.inputs) > 1 else Refusal("no pads")
        if isinstance(amounts, Refusal):
            return amounts
        value = np.asarray(0.0)
        if len(pad.inputs) > 2 and not pad.inputs[2].is_empty():
            value = ctx.constant(pad.inputs[2], "pad value")
            if isinstance(value, Refusal):
                return value
        if len(pad.inputs) > 3 and not pad.inputs[3].is_empty():  # opset 18 axes
            axes = ctx.constant(pad.inputs[3], "pad axes")
            if isinstance(axes, Refusal):
                return axes
            full = np.zeros(2 * rank, np.int64)
            half = len(axes)
            for i, axis in enumerate(np.asarray(axes) % rank):
                full[axis], full[axis + rank] = amounts[i], amounts[i + half]
            amounts = full
    amounts = np.asarray(amounts, np.int64).reshape(-1)
    if np.any(np.asarray(value) != 0):
        return Refusal("Pad value is not 0")
    if amounts.size != 2 * rank:
        return Refusal(f"Pad has {amounts.size} amounts for rank {rank}")
    if np.any(amounts < 0):
        return Refusal("Pad crops (negative pads)")
    begins, ends = amounts[:rank], amounts[rank:]
    if begins[:2].any() or ends[:2].any():
        return Refusal("Pad pads the batch or channel axis")
    return tuple(int(v) for v in (*begins[2:], *ends[2:]))
