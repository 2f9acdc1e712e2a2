"""The one lifter: a graph op that is linear in one input, as a :class:`Lifted` ConvSpec.

``lift(node, ctx, hint)`` looks the node's op up in :data:`LIFTERS` and
returns a :class:`Lifted` (source tensor, spec, dtype, has_bias, layout,
nodes), or None when it is no such op at all; it raises Refused with the reason
when the node is not provably the linear op it looks like. Conv, Gemm
and MatMul (+ Add of a bias) are linear ops with weights; AveragePool and the
per-channel affines (BatchNormalization, Mul/Div/Add/Sub/Neg by a constant)
lift as depthwise specs, which need the channel count and layout of their
input when their own parameters do not say it: the ``hint``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels, spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir.affine import AFFINE_OPS, ELEMENTWISE, FLOAT_TYPES, Affine, Layout, affine
from onnxrep.ir.graph import DEFAULT_DOMAINS, Context, check_sharing, constant_value, dims, is_op, producer
from onnxrep.refusal import Refused

__all__ = ["AFFINE_OPS", "ELEMENTWISE", "LINEAR_OPS", "Affine", "Hint", "Layout", "Lifted", "lift"]

#: Ops lifted as a ConvSpec with weights: a Gemm, or a MatMul by a constant, is a conv with no spatial axes.
LINEAR_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True, eq=False)
class Lifted:
    """``nodes`` (last one writing the output) computing ``spec`` of ``source``, laid out as ``layout``.

    ``dtype``: the weights' type (None for an op without weights); ``has_bias``:
    whether lowering the spec back needs a bias input.
    """

    source: gs.Tensor
    spec: ConvSpec
    dtype: np.dtype | None
    has_bias: bool
    layout: Layout
    nodes: tuple[gs.Node, ...]

    @property
    def linear(self) -> bool:
        """A Conv, Gemm or MatMul (+ bias): an op with weights of its own, not a diagonal one."""
        return is_op(self.nodes[0], *LINEAR_OPS)


@dataclass(frozen=True)
class Hint:
    """What the graph around a node knows of its data input: layout and channels (None: unknown)."""

    layout: Layout | None = None
    channels: int | None = None


NO_HINT = Hint()


def lift(node: gs.Node | None, ctx: Context, hint: Hint = NO_HINT) -> Lifted | None:
    """``node`` as a Lifted, or None (no such op); raises Refused when it is not provably linear."""
    if node is None or node.domain not in DEFAULT_DOMAINS or node.op not in LIFTERS:
        return None
    return LIFTERS[node.op](node, ctx, hint)


def lift_linear(node: gs.Node, ctx: Context) -> tuple[Lifted | None, Refused | None]:
    """``node`` as a linear op with weights of its own (Conv, Gemm, MatMul + bias), or why a Conv, Gemm or
    MatMul is not one: the refusal is returned for a caller that reports it only once it knows the op
    after this one is foldable. An Add that is no MatMul's bias is no linear op, refused or not."""
    try:
        lifted = lift(node, ctx)
    except Refused as refusal:
        return None, None if node.op == "Add" else refusal
    return (lifted, None) if lifted is not None and lifted.linear else (None, None)


def _weight(tensor: gs.Tensor, node: gs.Node, ctx: Context, what: str) -> np.ndarray:
    """A constant weight read by ``node`` only; a bias may be shared (exporters merge equal biases,
    all zeros at init, into one tensor): it is copied, and a copy of a vector costs nothing."""
    value = ctx.constant(tensor, f"{what} of {node.name or node.op}")
    if what != "bias" or value.ndim > 2:
        check_sharing(tensor, node, ctx)
    if value.dtype.type not in FLOAT_TYPES:
        raise Refused("unsupported", f"{what} '{tensor.name}' has dtype {value.dtype}, not a float type")
    return value


def _bias(node: gs.Node, ctx: Context, channels: int) -> tuple[np.ndarray, bool]:
    """The node's third input as a bias of ``channels`` (zeros when there is none)."""
    if len(node.inputs) < 3 or node.inputs[2].is_empty():
        return np.zeros(channels), False
    return np.asarray(_weight(node.inputs[2], node, ctx, "bias"), np.float64), True


def _conv(node: gs.Node, ctx: Context, hint: Hint) -> Lifted:
    """A Conv with constant weight (and bias)."""
    if len(node.inputs) < 2:
        raise Refused("unsupported", f"{node.name} has no weight input")
    weight = _weight(node.inputs[1], node, ctx, "weight")
    if weight.ndim < 3:
        raise Refused("unsupported", f"{node.name} has a weight of rank {weight.ndim}")
    bias = _bias(node, ctx, weight.shape[0])
    nd = weight.ndim - 2
    attrs = node.attrs
    kernel_shape = tuple(attrs.get("kernel_shape", weight.shape[2:]))
    if kernel_shape != weight.shape[2:]:
        raise Refused("unsupported", f"{node.name}: kernel_shape {kernel_shape} differs from its weight")
    strides = tuple(attrs.get("strides", (1,) * nd))
    dilations = tuple(attrs.get("dilations", (1,) * nd))
    pads = _pads(attrs, kernel_shape, strides, dilations, node)
    conv = ConvSpec(np.asarray(weight, np.float64), bias[0], strides, pads, dilations,
                    int(attrs.get("group", 1)), int(weight.size))
    return Lifted(node.inputs[0], conv, weight.dtype, bias[1], Layout.conv(nd), (node,))


def _dense(weight: np.ndarray, bias: np.ndarray) -> ConvSpec:
    """A weight (out, in) as a spec with no spatial axes."""
    return ConvSpec(weight, bias, (), (), (), 1, int(weight.size))


def _gemm(node: gs.Node, ctx: Context, hint: Hint) -> Lifted:
    """``Y = alpha·X·B' + beta·C`` with constant B and C, weight (out, in)."""
    name = node.name or node.op
    if node.attrs.get("transA", 0):
        raise Refused("unsupported", f"{name} transposes its input (transA=1)")
    weight = _weight(node.inputs[1], node, ctx, "weight")
    if weight.ndim != 2:
        raise Refused("unsupported", f"{name} has a weight of rank {weight.ndim}")
    dtype = weight.dtype
    weight = np.asarray(weight, np.float64) * float(node.attrs.get("alpha", 1.0))
    weight = weight if node.attrs.get("transB", 0) else weight.T
    value, has_bias = _bias(node, ctx, weight.shape[0])
    if has_bias and (value.size not in (1, weight.shape[0]) or value.ndim > 2
                     or (value.ndim == 2 and value.shape[0] != 1)):
        raise Refused("not-per-channel", f"{name}'s bias of shape {value.shape} is not per output feature")
    value = np.zeros(weight.shape[0]) + value.reshape(-1) * float(node.attrs.get("beta", 1.0))
    return Lifted(node.inputs[0], _dense(weight, value), dtype, has_bias, Layout(2, 1), (node,))


def _matmul(node: gs.Node, ctx: Context, hint: Hint) -> Lifted | None:
    """``Y = X @ W`` with W a constant (in, out): nn.Linear on [..., C] tensors, channels last.

    None for a product of two computed tensors (attention's Q·Kᵀ) or W @ X.
    """
    x, w = node.inputs
    if constant_value(w) is None and id(w) not in ctx.graph_inputs:
        return None
    weight = _weight(w, node, ctx, "weight")
    if weight.ndim != 2:
        raise Refused("unsupported", f"{node.name}'s weight has rank {weight.ndim}, not 2")
    shape = ctx.dims(x)
    if shape is None or len(shape) < 2:
        raise Refused("shape-unknown", f"the rank of {node.name}'s input is unknown or below 2")
    if shape[-1] not in (None, weight.shape[0]):
        raise Refused("not-aligned", f"{node.name} reads {shape[-1]} features with a weight for {weight.shape[0]}")
    conv = _dense(np.asarray(weight, np.float64).T, np.zeros(weight.shape[1]))
    return Lifted(x, conv, weight.dtype, False, Layout.last(len(shape)), (node,))


def _add(node: gs.Node, ctx: Context, hint: Hint) -> Lifted | None:
    """A MatMul's bias (Add of a constant along the last axis to a private MatMul output), else
    an affine."""
    matmul = next((producer(t) for t in node.inputs if is_op(producer(t), "MatMul")), None)
    linear = plus = None
    if matmul is not None and ctx.private(matmul.outputs[0], node):
        try:
            linear = _matmul(matmul, ctx, hint)
            plus = affine(node, ctx, linear.layout.rank) if linear is not None else None
        except Refused:
            linear = None  # not a MatMul's bias: an affine, or a join of two computed tensors
    if linear is not None and plus is not None and plus.source is matmul.outputs[0] and plus.scale.ndim == 0 \
            and plus.axis in (None, linear.layout.axis) and plus.shift.size in (1, linear.spec.out_channels):
        _, shift = plus.per_channel(linear.spec.out_channels)
        conv = _dense(linear.spec.weight, shift)
        return Lifted(linear.source, conv, linear.dtype, True, linear.layout, (matmul, node))
    return _affine(node, ctx, hint)


def _affine(node: gs.Node, ctx: Context, hint: Hint) -> Lifted | None:
    """A per-channel affine as a depthwise 1x1 spec. Its axis and channels are its parameters'
    (a BatchNormalization's axis is 1); what they leave open (a scalar's) is the hint's."""
    found = affine(node, ctx, hint.layout.rank if hint.layout is not None else None)
    if found is None:
        return None
    guess = hint.layout
    rank = found.rank if found.rank is not None else (guess.rank if guess is not None else None)
    axis = found.axis if found.axis is not None else (guess.axis if guess is not None else None)
    channels = found.channels or hint.channels
    if rank is None or axis is None or channels is None:
        raise Refused("shape-unknown", f"the layout or channel count of {node.name}'s input is unknown")
    if {found.scale.size, found.shift.size} - {1, channels}:
        raise Refused("not-aligned", f"{node.name} has {found.channels} channels, its input {channels}")
    scale, shift = found.per_channel(channels)
    layout = Layout(rank, axis)
    diagonal = spec.diagonal(scale, shift, layout.spatial_dims, cost=channels)
    return Lifted(found.source, diagonal, found.dtype, bool(shift.any()), layout, (node,))


def _average_pool(node: gs.Node, ctx: Context, hint: Hint) -> Lifted:
    """An AveragePool as a depthwise conv of 1/(k1·k2·…), when its padding counts as zeros."""
    channels = hint.channels
    if channels is None:
        raise Refused("shape-unknown", f"the channel count of {node.name}'s input is unknown")
    attrs = node.attrs
    kernel_shape = tuple(attrs["kernel_shape"])
    nd = len(kernel_shape)
    strides = tuple(attrs.get("strides", (1,) * nd))
    dilations = tuple(attrs.get("dilations", (1,) * nd))
    if attrs.get("ceil_mode", 0):
        raise Refused("unsupported", f"{node.name} uses ceil_mode (partial windows at the end)")
    pads = _pads(attrs, kernel_shape, strides, dilations, node)
    if any(pads) and not attrs.get("count_include_pad", 0):
        raise Refused("not-exact", f"{node.name} pads but does not count the pads (count_include_pad=0, ONNX's "
                       "default): border windows divide by fewer taps")
    weight = kernels.average_kernel(channels, kernel_shape)
    pool = ConvSpec(weight, np.zeros(channels), strides, pads, dilations, channels, int(weight.size))
    return Lifted(node.inputs[0], pool, None, False, Layout.conv(nd), (node,))


#: The lifter of each op type.
LIFTERS: dict[str, Callable[[gs.Node, Context, Hint], Lifted | None]] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "AveragePool": _average_pool,
    "Add": _add,
    **{op: _affine for op in ("BatchNormalization", "Mul", "Div", "Sub", "Neg")},
}


def _pads(attrs, kernel_shape, strides, dilations, node: gs.Node) -> tuple[int, ...]:
    nd = len(kernel_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        return tuple(attrs.get("pads", (0,) * (2 * nd)))
    if auto_pad == "VALID":
        return (0,) * (2 * nd)
    if any(s != 1 for s in strides):
        raise Refused("unsupported", f"{node.name}: auto_pad {auto_pad} with stride > 1 pads by the input size")
    # Stride 1: SAME pads are static, total d·(k−1), the odd one at the end (UPPER) or front.
    totals = [d * (k - 1) for d, k in zip(dilations, kernel_shape)]
    small = [t // 2 for t in totals]
    big = [t - t // 2 for t in totals]
    return tuple(small + big) if auto_pad == "SAME_UPPER" else tuple(big + small)


def weight_layout(node: gs.Node | None) -> tuple[Layout, int, int] | None:
    """(layout, in channels, out channels) of a Conv, Gemm or MatMul from its weight's shape alone
    (no value read): what the graph around it learns of the tensors it reads and writes."""
    if not is_op(node, *LINEAR_OPS) or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    shape = weight.shape
    if not shape or not all(isinstance(d, int) for d in shape):
        value = constant_value(weight)
        shape = value.shape if value is not None else None
    if not shape or (node.op != "Conv" and len(shape) != 2):
        return None
    if node.op == "Conv":
        return Layout.conv(len(shape) - 2), shape[1] * int(node.attrs.get("group", 1)), shape[0]
    if node.op == "Gemm":
        inner, outer = shape if not node.attrs.get("transB", 0) else shape[::-1]
        return Layout(2, 1), inner, outer
    known = dims(node.inputs[0])
    return (Layout.last(len(known)), shape[0], shape[1]) if known and len(known) >= 2 else None


def zero_pads(pad: gs.Node, ctx: Context, rank: int) -> tuple[int, ...]:
    """The pad's amounts on the spatial axes; raises Refused unless it is a provable zero pad of those only."""
    mode = pad.attrs.get("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise Refused("not-zero-pad", f"Pad mode is {mode}, not constant")
    if "pads" in pad.attrs:  # opset < 11
        amounts, value = np.asarray(pad.attrs["pads"]), np.asarray(pad.attrs.get("value", 0.0))
    else:
        if len(pad.inputs) < 2:
            raise Refused("not-zero-pad", "no pads")
        amounts = ctx.constant(pad.inputs[1], "pads")
        value = np.asarray(0.0)
        if len(pad.inputs) > 2 and not pad.inputs[2].is_empty():
            value = ctx.constant(pad.inputs[2], "pad value")
        if len(pad.inputs) > 3 and not pad.inputs[3].is_empty():  # opset 18 axes
            axes = ctx.constant(pad.inputs[3], "pad axes")
            full = np.zeros(2 * rank, np.int64)
            half = len(axes)
            for i, axis in enumerate(np.asarray(axes) % rank):
                full[axis], full[axis + rank] = amounts[i], amounts[i + half]
            amounts = full
    amounts = np.asarray(amounts, np.int64).reshape(-1)
    if np.any(np.asarray(value) != 0):
        raise Refused("not-zero-pad", "Pad value is not 0")
    if amounts.size != 2 * rank:
        raise Refused("not-zero-pad", f"Pad has {amounts.size} amounts for rank {rank}")
    if np.any(amounts < 0):
        raise Refused("not-zero-pad", "Pad crops (negative pads)")
    begins, ends = amounts[:rank], amounts[rank:]
    if begins[:2].any() or ends[:2].any():
        raise Refused("not-zero-pad", "Pad pads the batch or channel axis")
    return tuple(int(v) for v in (*begins[2:], *ends[2:]))
