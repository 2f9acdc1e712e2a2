"""ConvSpec: a linear op written as one convolution, and the pure algebra on specs.

Every op that is linear in its input X with constant parameters is a conv
``Y = conv(X, W, b, strides, pads, dilations, group)``. Re-parameterization
is algebra on such specs; this module holds that algebra and its exactness
conditions, with no graph in sight. A function that cannot prove a result
exact raises :class:`~onnxrep.refusal.Refused` with the reason instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from onnxrep.algebra import kernels
from onnxrep.refusal import Refused


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """A conv in ONNX terms. ``weight``: (Cout, Cin/group, *k) float64; ``bias``: (Cout,).

    ``pads`` is ONNX order: all begins, then all ends. ``cost`` is the number of
    multiply-accumulates per output pixel of the op this spec stands for: a
    conv's weight size, a BatchNormalization's C, the identity's 0. Merges
    compare it against the merged conv's, so that nothing becomes slower.
    """

    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int
    cost: int

    @property
    def spatial_dims(self) -> int:
        return self.weight.ndim - 2

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.group

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    def negated(self) -> ConvSpec:
        return ConvSpec(-self.weight, -self.bias, self.strides, self.pads, self.dilations,
                        self.group, self.cost)


def diagonal(scale, shift, spatial_dims: int, cost: int) -> ConvSpec:
    """A per-channel ``scale * x + shift`` as a depthwise 1x1 conv (BatchNormalization, identity)."""
    scale = np.asarray(scale, np.float64)
    return ConvSpec(
        weight=kernels.diagonal_kernel(scale, spatial_dims),
        bias=np.asarray(shift, np.float64) * np.ones_like(scale),
        strides=(1,) * spatial_dims,
        pads=(0,) * (2 * spatial_dims),
        dilations=(1,) * spatial_dims,
        group=len(scale),
        cost=cost,
    )


def identity(channels: int, spatial_dims: int) -> ConvSpec:
    return diagonal(np.ones(channels), np.zeros(channels), spatial_dims, cost=0)


@dataclass(frozen=True)
class _Aligned:
    """Where each branch kernel sits on the merged conv's grid (same dilation and groups)."""

    weights: list[np.ndarray]  # dilated to the common dilation, not yet padded or regrouped
    offsets: list[tuple[int, ...]]  # per kernel, its first tap's index on each merged axis
    kernel_shape: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int

    def add(self, result: np.ndarray, result_group: int, specs: list[ConvSpec]) -> np.ndarray:
        """Sum every branch kernel into ``result`` (float64), in place."""
        for weight, offsets, s in zip(self.weights, self.offsets, specs):
            kernels.add_into(result, result_group, weight, s.group, offsets)
        return result


def _align(specs: list[ConvSpec]) -> _Aligned:
    """Put every kernel on the merged conv's grid, or say why the taps cannot line up.

    Exact when all branches read the same X with the same strides and produce
    the same output size (for every input size): tap j of branch i reads input
    row ``o·s − pad_i + j·d_i``; in the merged kernel (top pad P, dilation D)
    that is tap ``(P − pad_i + j·d_i) / D``, which must be an integer. Kernels
    are zero-padded around to the common size, dilated kernels get zeros
    between taps, grouped kernels are regrouped block-diagonally to the
    coarsest common grouping (none for a Gemm, which has no spatial axes).
    """
    nd = specs[0].spatial_dims
    if any(s.spatial_dims != nd for s in specs):
        raise Refused("not-aligned", "branches have different spatial ranks")
    if len({s.in_channels for s in specs}) > 1:
        raise Refused("not-aligned", "branches read different channel counts")
    if len({s.strides for s in specs}) > 1:
        raise Refused("not-aligned", f"different strides {sorted({s.strides for s in specs})}")

    # Axes of size 1 ignore dilation; elsewhere dilate every kernel to the gcd.
    dilation = tuple(
        math.gcd(*[s.dilations[a] for s in specs if s.kernel_shape[a] > 1]) or 1
        for a in range(nd))
    weights, begins, ends = [], [], []
    for s in specs:
        factors = tuple(s.dilations[a] // dilation[a] if s.kernel_shape[a] > 1 else 1
                        for a in range(nd))
        weights.append(kernels.dilate_kernel(s.weight, factors))
        begins.append(s.pads[:nd])
        ends.append(s.pads[nd:])

    pad_begin, pad_end, before, shape = [], [], [[] for _ in specs], []
    for a in range(nd):
        sizes = [w.shape[2 + a] for w in weights]
        # Equal "extent" (pads minus kernel span) means equal output size for every input size.
        extents = {b[a] + e[a] - dilation[a] * (k - 1) for b, e, k in zip(begins, ends, sizes)}
        if len(extents) > 1:
            raise Refused("not-aligned", f"branch output shapes differ on spatial axis {a}: the join broadcasts")
        top = max(b[a] for b in begins)
        if any((top - b[a]) % dilation[a] for b in begins):
            raise Refused("not-aligned", f"pads do not line up with dilation {dilation[a]} on spatial axis {a}")
        offsets = [(top - b[a]) // dilation[a] for b in begins]
        size = max(o + k for o, k in zip(offsets, sizes))
        for i, o in enumerate(offsets):
            before[i].append(o)
        shape.append(size)
        pad_begin.append(top)
        pad_end.append(extents.pop() - top + dilation[a] * (size - 1))

    group = math.gcd(*[s.group for s in specs]) if nd else 1
    return _Aligned(weights, [tuple(b) for b in before], tuple(shape), tuple(pad_begin + pad_end), dilation, group)


def _check_cost(size: int, shape: tuple[int, ...], group: int, cost: int) -> None:
    if size > cost:
        raise Refused(
            "costlier", f"merged kernel {shape} (group {group}) would cost {size} "
            f"multiply-adds per pixel, more than the {cost} of the branches")


def merge_parallel(specs: list[ConvSpec]) -> ConvSpec:
    """``sum(conv_i(X))`` as one conv, when that is exact (see _align) and costs no more."""
    if len({s.out_channels for s in specs}) > 1:
        raise Refused(
            "not-aligned", "branches have different output channel counts "
            f"({sorted({s.out_channels for s in specs})}): the join broadcasts")
    aligned = _align(specs)
    cout = specs[0].out_channels
    shape = (cout, specs[0].in_channels // aligned.group) + aligned.kernel_shape
    size = math.prod(shape)
    _check_cost(size, shape, aligned.group, sum(s.cost for s in specs))
    weight = aligned.add(np.zeros(shape), aligned.group, specs)
    bias = np.zeros(cout)
    for s in specs:
        bias += s.bias
    return ConvSpec(weight, bias, specs[0].strides, aligned.pads, aligned.dilations, aligned.group, size)


def merge_concat(specs: list[ConvSpec]) -> ConvSpec:
    """``concat([conv_i(X)], axis=1)`` as one conv: kernels stacked along output channels.

    Exact under the same alignment as merge_parallel, with every kernel dense
    (group 1): stacking grouped kernels would interleave their groups.
    """
    aligned = _align(specs)
    shape = (sum(s.out_channels for s in specs), specs[0].in_channels) + aligned.kernel_shape
    size = math.prod(shape)
    _check_cost(size, shape, 1, sum(s.cost for s in specs))
    weight, row = np.zeros(shape), 0
    for w, offsets, s in zip(aligned.weights, aligned.offsets, specs):
        kernels.add_into(weight[row:row + s.out_channels], 1, w, s.group, offsets)
        row += s.out_channels
    return ConvSpec(weight, np.concatenate([s.bias for s in specs]), specs[0].strides, aligned.pads,
                    aligned.dilations, 1, size)


def is_unit(s: ConvSpec) -> bool:
    """A 1x1 kernel (any pads)."""
    return all(k == 1 for k in s.kernel_shape)


def is_pointwise(s: ConvSpec) -> bool:
    """A 1x1 kernel without pads."""
    return is_unit(s) and not any(s.pads)


def _sequential_costlier(size: int, cost: int) -> Refused:
    return Refused("costlier",
                   f"the merged kernel would cost {size} multiply-adds per pixel, more than the {cost} of the two")


def merge_sequential(first: ConvSpec, second: ConvSpec, *, check_cost: bool = True) -> ConvSpec:
    """``second(first(X))`` as one conv, when exact and not costlier.

    Exact when first is 1x1 or second is pointwise (1x1, unpadded):
      - first 1x1 and stride 1: the result has second's geometry, with both
        pads added (a 1x1 conv with pads p outputs its bias on that border,
        which is what the merged conv sees of the zero-padded X: DBB's
        BN-and-pad, see fold_bias_pad). If second pads, it pads first's
        *output* with zeros where the merged conv would see first's bias, so
        first's bias must be zero.
      - second pointwise: the result has first's geometry, strides multiplied.
    Cost is compared per output pixel, counting the first conv's extra pixels
    when the second one strides. With ``check_cost=False`` (a chain inside a
    branch, whose cost the parallel merge checks as a whole) the result carries
    the two ops' summed cost instead of its own.
    """
    if first.out_channels != second.in_channels or first.spatial_dims != second.spatial_dims:
        raise Refused("not-aligned", "the convs' channels do not chain")
    pixels = int(np.prod(second.strides))  # first runs on this many pixels per output pixel
    cost = first.cost * pixels + second.cost
    if check_cost and (is_unit(first) or is_pointwise(second)):  # refuse before composing a big kernel
        group = math.gcd(first.group, second.group)
        spatial = second.kernel_shape if is_unit(first) and all(s == 1 for s in first.strides) else first.kernel_shape
        size = second.out_channels * (first.in_channels // group) * math.prod(spatial)
        if size > cost:
            raise _sequential_costlier(size, cost)
    if is_unit(first) and all(s == 1 for s in first.strides):
        if any(second.pads) and np.any(first.bias):
            raise Refused("not-exact", "the second conv pads with zeros where the merged conv would see the "
                           "first conv's bias (not exact)")
        weight, group = kernels.compose(first.weight, first.group, second.weight, second.group)
        taps_summed = kernels.ungroup(second.weight, second.group).reshape(
            second.out_channels, first.out_channels, -1).sum(axis=2)
        bias = second.bias + taps_summed @ first.bias
        geometry = replace(second, pads=tuple(a + b for a, b in zip(first.pads, second.pads)))
        strides = second.strides
    elif is_pointwise(second):
        weight, group = kernels.compose(first.weight, first.group, second.weight, second.group)
        bias = second.bias + kernels.ungroup(second.weight, second.group).reshape(
            second.out_channels, -1) @ first.bias
        geometry = first
        strides = tuple(a * b for a, b in zip(first.strides, second.strides))
    elif is_unit(first):
        raise Refused("not-exact", "a strided 1x1 conv before a kxk conv: the kxk taps would skip input rows")
    else:
        raise Refused("unsupported", "neither conv is 1x1 without pads (a kxk→kxk chain grows the kernel)")
    if check_cost and weight.size > cost:
        raise _sequential_costlier(weight.size, cost)
    return ConvSpec(weight, bias, strides, geometry.pads, geometry.dilations, group,
                    weight.size if check_cost else cost)
