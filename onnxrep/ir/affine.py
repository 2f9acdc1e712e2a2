"""Per-channel affine ops: a BatchNormalization, or Mul/Div/Add/Sub/Neg by a constant, as
``y = scale · x + shift`` along one channel axis of x.

The channel axis is explicit (:class:`Layout`): a BatchNormalization's is
axis 1; an elementwise constant's is where its one non-unit dim lands on the
input (axis 1 for ``(C, 1, 1)`` on a 4-D tensor, the last axis for a ``(C,)``
vector: a layer scale on channels-last tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels
from onnxrep.ir.graph import Context, dims, is_op, producer
from onnxrep.refusal import Refused

FLOAT_TYPES = (np.float16, np.float32, np.float64)
ELEMENTWISE = ("Mul", "Div", "Add", "Sub", "Neg")
AFFINE_OPS = ("BatchNormalization", *ELEMENTWISE)
#: Ops that move elements without changing them: the channel axis is followed through them.
SHAPE_OPS = ("Reshape", "Flatten", "Transpose")


@dataclass(frozen=True)
class Layout:
    """Where the channels of a tensor of ``rank`` are: ``axis`` (non-negative).

    A conv reads axis 1 (N, C, spatial...); a MatMul reads the last axis (every
    axis before it a batch axis). A spec with no spatial axes stands for both
    a Gemm (rank 2) and a MatMul on channels-last tensors.
    """

    rank: int
    axis: int

    @classmethod
    def conv(cls, spatial_dims: int) -> Layout:
        return cls(spatial_dims + 2, 1)

    @classmethod
    def last(cls, rank: int) -> Layout:
        return cls(rank, rank - 1)

    @property
    def spatial_dims(self) -> int:
        return self.rank - 2 if self.axis == 1 else 0


@dataclass(frozen=True, eq=False)
class Affine:
    """``y = scale * x + shift``; both ``(C,)`` float64 or scalars. ``axis`` is the channel axis
    the parameters run along (None for scalars: any axis), on an input of ``rank`` (None: unknown)."""

    source: gs.Tensor
    scale: np.ndarray
    shift: np.ndarray
    dtype: np.dtype
    rank: int | None
    axis: int | None

    @property
    def channels(self) -> int | None:
        sizes = {self.scale.size, self.shift.size} - {1}
        return sizes.pop() if len(sizes) == 1 else None

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.broadcast_to(self.scale, (channels,)).astype(np.float64),
                np.broadcast_to(self.shift, (channels,)).astype(np.float64))


def affine(node: gs.Node, ctx: Context, rank: int | None) -> Affine | None:
    """A BatchNormalization, or Mul/Div/Add/Sub/Neg by a constant along one axis, as an affine.

    ``rank`` is the rank of the non-constant input when known (else it is read
    from the graph). None when the node is no such op at all (e.g. an Add of
    two computed tensors); raises Refused when it is one but not provably per channel.
    """
    if is_op(node, "BatchNormalization"):
        return batchnorm(node, ctx)
    if not is_op(node, *ELEMENTWISE) or len(node.outputs) != 1:
        return None
    if _closes_gelu(node):
        raise Refused("fused-pattern", f"{node.name} closes a GELU (x·(1+erf(x/√2))·0.5), which runtimes fuse "
                                       f"into one op: folding it elsewhere would break that fusion")
    if node.op == "Neg":
        return Affine(node.inputs[0], np.array(-1.0), np.array(0.0), node.inputs[0].dtype, rank, None)
    a, b = node.inputs
    a_value, b_value = (ctx.maybe_constant(t) for t in (a, b))
    if (a_value is None) == (b_value is None):
        return None  # both computed (a join, not an affine) or both constant
    const_first = a_value is not None
    source, value = (b, a_value) if const_first else (a, b_value)
    if node.op == "Div" and const_first:
        return None  # c / x is not linear in x
    if value.dtype.type not in FLOAT_TYPES:
        raise Refused("not-per-channel", f"{node.name}: constant of dtype {value.dtype}")
    if rank is None and value.size > 1:  # as exported, else as shape inference sees it (TorchScript)
        known = ctx.dims(source)
        rank = len(known) if known is not None else None
    vector, axis = _along_one_axis(value, rank, node)
    scale, shift = _scale_shift(node, vector, const_first)
    return Affine(source, scale, shift, source.dtype if source.dtype is not None else value.dtype, rank, axis)


def _scale_shift(node: gs.Node, vector: np.ndarray, const_first: bool):
    one, zero = np.array(1.0), np.array(0.0)
    op = node.op
    if op == "Div":
        if not np.all(vector):
            raise Refused("not-exact", f"{node.name} divides by zero")
        return 1.0 / vector, zero
    return {
        "Mul": (vector, zero),
        "Add": (one, vector),
        "Sub": ((-one, vector) if const_first else (one, -vector)),
    }[op]


def _along_one_axis(value: np.ndarray, rank: int | None, node: gs.Node) -> tuple[np.ndarray, int | None]:
    """The constant as a scalar (axis None) or a (C,) vector along one axis of the input, if it
    broadcasts along that axis only (the output keeps the input's shape)."""
    value = np.asarray(value, np.float64)
    if value.size == 1 and (rank is None or value.ndim <= rank):
        return value.reshape(()), None
    if rank is None:
        raise Refused("shape-unknown", f"{node.name}: the input rank is unknown")
    if value.ndim > rank:
        raise Refused("not-per-channel", f"{node.name}: constant of shape {value.shape} broadcasts the output")
    shape = (1,) * (rank - value.ndim) + value.shape
    axes = [i for i, d in enumerate(shape) if d != 1]
    if len(axes) != 1 or axes[0] == 0:
        raise Refused("not-per-channel", f"{node.name}: constant of shape {value.shape} is not per-channel")
    return value.reshape(-1), axes[0]


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


def batchnorm(node: gs.Node, ctx: Context) -> Affine:
    """An inference-mode BatchNormalization as a per-channel affine along axis 1."""
    if not is_op(node, "BatchNormalization"):
        raise Refused("unsupported", f"{node.op} is not a BatchNormalization")
    name = node.name or node.op
    if node.attrs.get("training_mode", 0):
        raise Refused("training-mode", f"{name} runs in training mode")
    if not node.attrs.get("spatial", 1):
        raise Refused("unsupported", f"{name} has spatial=0 (per-position statistics)")
    if any(id(t) in ctx.graph_outputs or t.outputs for t in node.outputs[1:]):
        raise Refused("training-mode", f"{name}'s running statistics outputs are read")
    if len(node.inputs) < 5:
        raise Refused("unsupported", f"{name} has {len(node.inputs)} inputs, not 5")
    values = []
    for tensor, what in zip(node.inputs[1:5], ("scale", "bias", "mean", "var")):
        value = ctx.constant(tensor, f"{what} of {name}")
        # a parameter another node also reads stays for it: folds write fresh weights (a private copy,
        # counted in the report's shared copies), never this tensor
        values.append(value)
    if len({v.size for v in values}) > 1 or any(v.ndim != 1 for v in values):
        raise Refused("unsupported", f"{name} parameters are not vectors of one length")
    dtype = node.inputs[0].dtype if node.inputs[0].dtype is not None else values[0].dtype
    scale, shift = kernels.bn_affine(*values, eps=float(node.attrs.get("epsilon", 1e-5)))
    known = dims(node.inputs[0])
    return Affine(node.inputs[0], scale, shift, np.dtype(dtype), len(known) if known is not None else None, 1)


def moved_axis(node: gs.Node, axis: int, ctx: Context) -> int:
    """Where ``node`` (a Reshape, Flatten or Transpose) puts its input's ``axis``; raises Refused
    when it is not one axis there."""
    before, after = ctx.dims(node.inputs[0]), ctx.dims(node.outputs[0])
    if before is None or after is None:
        raise Refused("shape-unknown", f"the shapes around {node.name} are unknown")
    if is_op(node, "Transpose"):
        perm = list(node.attrs.get("perm", range(len(before))[::-1]))
        return perm.index(axis)
    channels, tail = before[axis], before[axis + 1:]
    if channels is None or None in tail:
        raise Refused("shape-unknown", f"the channel dims before {node.name} are not static")
    for new in reversed(range(len(after))):
        rest = after[new + 1:]
        if after[new] == channels and None not in rest and math.prod(rest) == math.prod(tail):
            return new
    raise Refused("layout", f"{node.name} mixes the feature axis (of {channels}) with others")
