"""fold_bias_pad: a 1x1 conv's output padded with the conv's own bias becomes that conv, padded.

Diverse Branch Block's BN-and-pad layer pads a conv-BN's output with the BN's
bias per channel, so that the kxk conv after it sees what one conv over the
zero-padded input would. PyTorch exports it as a zero Pad and one border
write per side (ScatterND; the dynamo exporter wraps each in Transposes):

Before:  X → Conv(1x1, W, b) → Pad(zeros, p) → ScatterND(border = v) ×4 → T
After:   X → Conv(1x1, W, b, pads p) → T

A 1x1 conv over a zero-padded input outputs exactly b on the border, so this
is exact when v = b. fold_sequential and merge_parallel then merge the padded
1x1 conv with the kxk conv or AveragePool that reads T (DBB's 1x1→kxk and
1x1→avg branches).

Conditions:
  1. The Conv is 1x1, stride 1, no pads, with constant weights read by it only;
     its output is read by the Pad only.
  2. The Pad is a zero pad of the spatial axes, with constant amounts p.
  3. Then come only ScatterND (reduction none, constant indices), Transpose,
     Identity and Slices that keep everything, each intermediate read by the
     next only (and, in the Pad's layout, by Shape nodes); the Transposes
     cancel out by T.
  4. The channel count is static. The writes cover exactly the border of
     width p, and every written element is v[c] for its channel c: a
     constant, or an Expand of a per-channel constant (any batch size).
     With static spatial dims the written positions are compared with the
     border element by element. With dynamic ones (an export with dynamic
     height and width) each write must set whole rows of one spatial axis,
     its indices Unsqueeze(Slice(Range(0, Shape(P)[axis], 1), s, e)) of that
     very axis of the padded tensor P: s = 0, e = p_begin is the first p_begin
     rows and s = −p_end, e = ∞ the last p_end, for every size; each side of
     each padded axis written once. The Shape nodes then read the result.
  5. v equals b to within float rounding (the exporter computed one, the
     BatchNormalization fold the other): rounding.agree, |v − b| ≤ 64·u·(1 + max|b|).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import rounding
from onnxrep.ir import lift, lower
from onnxrep.ir.graph import WHOLE_END, Context, constant_value, is_op, producer, selects_all
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "fold_bias_pad"


@dataclass(frozen=True, eq=False)
class BiasPad:
    conv: gs.Node
    pad: gs.Node
    chain: tuple[gs.Node, ...]  # the writes and the Transposes / Identities between them
    end: gs.Tensor
    lifted: lift.Lifted
    pads: tuple[int, ...]
    measured: tuple[gs.Node, ...] = ()  # Shape nodes reading the padded tensor (same shape as end)

    @property
    def output(self) -> str:
        return self.end.name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.conv, self.pad, *self.chain)


@dataclass(frozen=True)
class _Write:
    node: gs.Node
    perm: tuple[int, ...]  # axis i of the written tensor is axis perm[i] of the padded one


def _follow(tensor: gs.Tensor, rank: int, ctx: Context) -> tuple[list[gs.Node], gs.Tensor, list[_Write],
                                                                  list[gs.Node]] | None:
    """The longest run of writes after the Pad that ends in the Pad's own layout; None without writes.

    Besides the next node of the run, a tensor in the Pad's layout may be read by Shape nodes
    (exports with dynamic dims compute the writes' indices from it): they are returned, to read
    the run's end instead, which has the same shape.
    """
    nodes, writes, measured, perm, best = [], [], [], tuple(range(rank)), None
    identity = tuple(range(rank))
    while id(tensor) not in ctx.graph_outputs:
        shapes = [n for n in tensor.outputs if is_op(n, "Shape")] if perm == identity else []
        rest = [n for n in tensor.outputs if n not in shapes]
        if len(rest) != 1:
            break
        node = rest[0]
        if is_op(node, "Transpose"):
            order = node.attrs.get("perm", list(range(rank))[::-1])
            if sorted(order) != list(range(rank)):
                break
            perm = tuple(perm[i] for i in order)
        elif is_op(node, "ScatterND") and node.inputs[0] is tensor and node.attrs.get("reduction", "none") in (
                "none", b"none"):
            writes.append(_Write(node, perm))
        elif not (is_op(node, "Identity") or selects_all(node, ctx)):
            break
        measured += shapes
        nodes.append(node)
        tensor = node.outputs[0]
        if writes and perm == identity:
            best = (list(nodes), tensor, list(writes), list(measured))
    return best


def _in_pad_layout(pad: gs.Node, nodes: list[gs.Node], rank: int) -> set[int]:
    """The ids of the Pad's output and of the run's tensors in its layout: all of the padded shape."""
    ids, perm = {id(pad.outputs[0])}, list(range(rank))
    for node in nodes:
        if node.op == "Transpose":
            perm = [perm[i] for i in node.attrs.get("perm", list(range(rank))[::-1])]
        if perm == list(range(rank)):
            ids.add(id(node.outputs[0]))
    return ids


def _channel_fill(tensor: gs.Tensor, ctx: Context) -> np.ndarray | tuple[np.ndarray, int] | None:
    """What ScatterND writes: a constant array, or (v, axis) for a tensor whose value is v[i] at
    index i of that axis whatever its shape (an Expand of a per-channel constant)."""
    value = ctx.maybe_constant(tensor)
    if value is not None:
        return value
    node = producer(tensor)
    if is_op(node, "Identity"):
        return _channel_fill(node.inputs[0], ctx)
    if is_op(node, "Cast") and node.outputs[0].dtype is not None:
        inner = _channel_fill(node.inputs[0], ctx)
        cast = (lambda v: np.asarray(v).astype(node.outputs[0].dtype))  # noqa: E731
        return (cast(inner[0]), inner[1]) if isinstance(inner, tuple) else None if inner is None else cast(inner)
    if is_op(node, "Transpose") and "perm" in node.attrs:
        inner = _channel_fill(node.inputs[0], ctx)
        if isinstance(inner, tuple):
            return inner[0], list(node.attrs["perm"]).index(inner[1])
        return None if inner is None else np.transpose(inner, node.attrs["perm"])
    if is_op(node, "Expand"):
        source = ctx.maybe_constant(node.inputs[0])
        length = ctx.dims(node.inputs[1])
        if source is None or length is None or length[0] is None or length[0] < source.ndim:
            return None
        varying = [a for a, d in enumerate(source.shape) if d != 1]
        if len(varying) > 1:
            return None
        axis = length[0] - source.ndim + (varying[0] if varying else 0)
        return source.reshape(-1), axis
    return None


def _border_value(writes: list[_Write], shape: list[int | None], pads: tuple[int, ...],
                  same_shape: set[int], ctx: Context) -> np.ndarray:
    """v (C,) when the writes set exactly the border of width ``pads`` to v[c], channel by channel;
    raises Refused otherwise."""
    if shape[1] is None:
        raise Refused("shape-unknown", "the padded tensor's channel count is not static")
    if any(d is None for d in shape[2:]):
        return _rows_border(writes, shape, pads, same_shape, ctx)
    batch_static = shape[0] is not None
    mask = np.zeros([shape[0] if batch_static else 1, *shape[1:]], bool)
    channels = shape[1]
    values = np.full(channels, np.nan)
    for write in writes:
        indices = ctx.constant(write.node.inputs[1], "ScatterND indices")
        depth = indices.shape[-1] if indices.ndim else 0
        written = mask.transpose(write.perm)  # a view: writing it marks the mask
        if not 1 <= depth <= written.ndim or (not batch_static and write.perm.index(0) < depth):
            raise Refused("border", f"{write.node.name} picks rows of a dynamic batch")
        bounds = np.array(written.shape[:depth])
        picked = indices.reshape(-1, depth).astype(np.int64)
        picked = np.where(picked < 0, picked + bounds, picked)
        if np.any(picked < 0) or np.any(picked >= bounds):
            raise Refused("border", f"{write.node.name} writes out of bounds")
        written[tuple(picked.T)] = True
        values = _merge(values, _write_values(write, picked.reshape(indices.shape), written.shape, channels, ctx))
    nd = len(shape) - 2
    border = np.ones(shape[2:], bool)
    border[tuple(slice(pads[a], shape[2 + a] - pads[nd + a]) for a in range(nd))] = False
    if not np.array_equal(mask, np.broadcast_to(border, mask.shape)):
        raise Refused("border", "the writes do not cover exactly the padded border")
    return values


def _merge(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The per-channel values so far (NaN: not written yet) and one more write's, if they agree."""
    known = ~np.isnan(values) & ~np.isnan(found)
    if np.any(values[known] != found[known]):
        raise Refused("border", "the border writes set different values")
    return np.where(np.isnan(values), found, values)


def _rows_border(writes: list[_Write], shape: list[int | None], pads: tuple[int, ...], same_shape: set[int],
                 ctx: Context) -> np.ndarray:
    """v (C,) when, for any spatial size, the writes set exactly the border of width ``pads`` to v[c]:
    each write sets the first or last rows of one padded axis (see _side), each side once."""
    nd, channels = len(shape) - 2, shape[1]
    values, sides = np.full(channels, np.nan), []
    for write in writes:
        axis = write.perm[0]  # whole rows along axis 0 of the written tensor: this axis of the padded one
        if axis < 2:
            raise Refused("border", f"{write.node.name} writes along the batch or channel axis")
        try:
            side = _side(write.node.inputs[1], axis, shape[axis], (pads[axis - 2], pads[nd + axis - 2]), same_shape,
                         ctx)
        except Refused as refusal:
            raise Refused(refusal.code, f"{write.node.name}: {refusal.reason}") from None
        sides.append((axis, side))
        if not isinstance(_channel_fill(write.node.inputs[2], ctx), tuple):
            raise Refused("border", f"{write.node.name} does not write an Expand of a per-channel constant")
        values = _merge(values, _write_values(write, np.zeros((1, 1), np.int64), (), channels, ctx))
    expected = [(2 + a, side) for a in range(nd) for side, p in ((0, pads[a]), (1, pads[nd + a])) if p]
    if sorted(sides) != sorted(expected):
        raise Refused("border", "the writes do not cover exactly the padded border")
    return values


def _side(indices: gs.Tensor, axis: int, dim: int | None, pads: tuple[int, int], same_shape: set[int],
          ctx: Context) -> int:
    """0 when ``indices`` (k, 1) are the first pads[0] rows of ``axis``, 1 when the last pads[1], for
    every size of it: constants (the first rows, or the last as −p…−1), or
    Unsqueeze(Slice(Range(0, Shape(P)[axis], 1), s, e), −1) with P the padded tensor."""
    begin, end = pads
    rows = ctx.maybe_constant(indices)
    if rows is not None:
        if rows.ndim != 2 or rows.shape[-1] != 1:
            raise Refused("border", "its indices do not pick whole rows")
        picked = rows.reshape(-1).tolist()
        if begin and picked == list(range(begin)):
            return 0
        if end and (picked == list(range(-end, 0)) or dim is not None and picked == list(range(dim - end, dim))):
            return 1
        raise Refused("border", f"it writes rows {picked} of an axis padded by {begin} and {end}")
    start, stop = _sliced_range(indices, axis, same_shape, ctx)
    if begin and start == 0 and stop == begin:
        return 0
    if end and start == -end and stop >= WHOLE_END:
        return 1
    raise Refused("border", f"it writes rows {start}:{stop} of axis {axis}, padded by {begin} and {end}: "
                            "not its border for every size")


def _sliced_range(indices: gs.Tensor, axis: int, same_shape: set[int], ctx: Context) -> tuple[int, int]:
    """(s, e) when ``indices`` is Unsqueeze(Slice(Range(0, Shape(P)[axis], 1), [s], [e]), [-1])."""
    unsqueeze = producer(indices)
    squeeze_axes = (unsqueeze.attrs.get("axes") if is_op(unsqueeze, "Unsqueeze") and len(unsqueeze.inputs) == 1
                    else _constant_list(unsqueeze.inputs[1], ctx) if is_op(unsqueeze, "Unsqueeze") else None)
    if squeeze_axes is None or list(squeeze_axes) not in ([-1], [1]):
        raise Refused("border", "its indices are neither constant nor rows of a Range")
    slice_ = producer(unsqueeze.inputs[0])
    if not is_op(slice_, "Slice") or len(slice_.inputs) < 3:
        raise Refused("border", "its indices are not a Slice of a Range")
    starts, ends, *rest = (_constant_list(t, ctx) for t in slice_.inputs[1:5])
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1 or any(
            r is None or list(r) not in (default, [-1] if default == [0] else default)
            for r, default in zip(rest, ([0], [1]))):
        raise Refused("border", "its indices are not one constant Slice (axis 0, step 1) of a Range")
    range_ = producer(slice_.inputs[0])
    if not is_op(range_, "Range"):
        raise Refused("border", "its indices are not a Slice of a Range")
    first, step = (_constant_list(t, ctx) for t in (range_.inputs[0], range_.inputs[2]))
    if first != [0] or step != [1]:
        raise Refused("border", "its indices slice a Range that does not count 0, 1, 2, …")
    measured = _measured_axis(range_.inputs[1], same_shape, ctx)
    if measured != axis:
        counted = "another tensor or axis" if measured is None else measured
        raise Refused("border", f"its indices count the rows of {counted}, not of axis {axis} of the padded tensor")
    return starts[0], ends[0]


def _measured_axis(limit: gs.Tensor, same_shape: set[int], ctx: Context) -> int | None:
    """a when ``limit`` is Gather(Shape(P), a) (a scalar) of a tensor P with the padded tensor's shape."""
    gather = producer(limit)
    if not is_op(gather, "Gather") or gather.attrs.get("axis", 0) != 0:
        return None
    shape = producer(gather.inputs[0])
    index = ctx.maybe_constant(gather.inputs[1])
    if not is_op(shape, "Shape") or id(shape.inputs[0]) not in same_shape:
        return None
    if index is None or index.ndim != 0:
        return None
    rank = len(ctx.dims(shape.inputs[0]) or ())
    start = shape.attrs.get("start", 0)
    dims = list(range(rank))[start:shape.attrs.get("end", rank)]
    return dims[int(index)] if rank and -len(dims) <= int(index) < len(dims) else None


def _constant_list(tensor: gs.Tensor, ctx: Context) -> list[int] | None:
    value = ctx.maybe_constant(tensor)
    return None if value is None or value.dtype.kind not in "iu" else value.reshape(-1).tolist()


def _write_values(write: _Write, indices: np.ndarray, shape: tuple, channels: int,
                  ctx: Context) -> np.ndarray:
    """Per channel, the value one ScatterND writes (NaN for channels it does not write).

    ``indices``: the write's index tuples, in bounds; ``shape``: the written tensor's.
    """
    depth = indices.shape[-1]
    fill = _channel_fill(write.node.inputs[2], ctx)
    if fill is None:
        raise Refused("border", f"{write.node.name} does not write a per-channel constant")
    channel_axis = write.perm.index(1)
    # The updates' axis holding the channel, when the index tuples do not pick channels themselves.
    updates_axis = indices.ndim - 1 + channel_axis - depth if channel_axis >= depth else None
    values = np.full(channels, np.nan)
    if isinstance(fill, tuple):
        v, axis = fill
        if axis != updates_axis or v.size not in (1, channels):
            raise Refused("border", f"{write.node.name} writes a constant that is not per channel")
        return np.broadcast_to(np.asarray(v, np.float64), (channels,)).copy()
    updates = np.asarray(fill, np.float64)
    if updates.shape != indices.shape[:-1] + shape[depth:]:
        raise Refused("border", f"{write.node.name} writes updates of shape {updates.shape}")
    if updates_axis is None:
        picked = indices[..., channel_axis].reshape(indices.shape[:-1] + (1,) * (len(shape) - depth))
        channel_of = np.broadcast_to(picked, updates.shape)
    else:
        channel_of = np.indices(updates.shape)[updates_axis]
    for c in np.unique(channel_of):
        written = updates[channel_of == c]
        if np.any(written != written[0]):
            raise Refused("border", f"{write.node.name} writes different values within channel {c}")
        values[c] = written[0]
    return values


def match(ctx: Context, pad: gs.Node) -> BiasPad | None:
    conv = producer(pad.inputs[0]) if pad.inputs else None
    if not is_op(conv, "Conv") or len(conv.inputs) < 2 or constant_value(conv.inputs[1]) is None:
        return None
    rank = constant_value(conv.inputs[1]).ndim
    chain = _follow(pad.outputs[0], rank, ctx)
    if chain is None:
        return None  # a plain pad: fold_pad_conv's business
    nodes, end, writes, measured = chain
    where = f"{conv.name} → {pad.name} → {len(writes)} border writes"
    try:
        return _checked(conv, pad, nodes, end, writes, measured, rank, ctx)
    except Refused as refusal:
        refusal.where = where
        raise


def _checked(conv: gs.Node, pad: gs.Node, nodes: list[gs.Node], end: gs.Tensor, writes: list[_Write],
             measured: list[gs.Node], rank: int, ctx: Context) -> BiasPad:
    if not ctx.private(pad.inputs[0], pad):
        raise Refused("read-elsewhere", f"the conv output is also read by {ctx.readers(pad.inputs[0], pad)}")
    lifted = lift.lift(conv, ctx)
    spec = lifted.spec
    if any(k != 1 for k in spec.kernel_shape) or any(spec.pads) or any(s != 1 for s in spec.strides):
        raise Refused("not-exact", "the padded tensor is not the output of a 1x1 conv with stride 1 "
                                   "and no pads, whose border would be its bias")
    pads = lift.zero_pads(pad, ctx, rank)
    shape = ctx.dims(pad.outputs[0])
    if shape is None or len(shape) != rank:
        raise Refused("shape-unknown", "the padded tensor's shape is unknown")
    value = _border_value(writes, shape, pads, _in_pad_layout(pad, nodes, rank), ctx)
    same, gap = rounding.agree(value, spec.bias, lifted.dtype)
    if not same:
        raise Refused("border", f"the border value is not the conv's bias (they differ by up to {gap:.3g})")
    return BiasPad(conv, pad, tuple(nodes), end, lifted, pads, tuple(measured))


def build(b: Builder, m: BiasPad) -> Replacement:
    lower.emit(b, m.conv.name, m.conv.inputs[0], replace(m.lifted.spec, pads=m.pads), m.lifted.layout, m.end,
               m.lifted.dtype, with_bias=m.lifted.has_bias)
    # The padded tensor is gone: its shape is the end's.
    measured = list({id(shape.inputs[0]): shape.inputs[0] for shape in m.measured}.values())
    return b.replacement(m.nodes, same_shape=tuple((tensor, m.end) for tensor in measured))


RULE = Rule(NAME, "1x1 Conv → zero Pad → border writes of the conv's bias (DBB's BN-and-pad) "
                  "→ the Conv with padding", ("Pad",), match, build)
