"""Pure numpy kernel algebra for re-parameterization. No graph in sight.

Weight layout is ONNX's: ``(Cout, Cin / group, k1, ..., kn)``. Every function
takes and returns float64 arrays; callers cast back to the model's dtype once,
at the very end, so that rounding happens a single time.
"""

from __future__ import annotations

import numpy as np


def bn_affine(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization as ``y = scale * x + shift`` per channel.

    scale = γ / √(σ² + ε),  shift = β − μ · scale.   Shapes: all ``(C,)``.
    """
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def scale_conv(weight, bias, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """A per-output-channel affine applied after a conv, folded into it.

    ``scale * (conv(x, W) + b) + shift == conv(x, W * scale[:, None..]) + (b * scale + shift)``
    """
    scale = np.asarray(scale, np.float64)
    w = np.asarray(weight, np.float64) * scale.reshape((-1,) + (1,) * (np.ndim(weight) - 1))
    return w, np.asarray(bias, np.float64) * scale + np.asarray(shift, np.float64)


def diagonal_kernel(scale, spatial_dims: int) -> np.ndarray:
    """The depthwise 1x1 kernel ``(C, 1, 1, ...)`` that multiplies channel c by scale[c].

    With ``group = C`` it is a BatchNormalization, or the identity when scale is all ones.
    Use :func:`regroup` to express it for a conv with fewer groups.
    """
    scale = np.asarray(scale, np.float64)
    return scale.reshape((-1, 1) + (1,) * spatial_dims)


def regroup(weight, group: int, new_group: int) -> np.ndarray:
    """Express a grouped conv's kernel for a conv with ``new_group`` groups.

    ``group`` must be a multiple of ``new_group``: every new group then holds
    whole old groups, and the kernel becomes block-diagonal inside it, with
    zeros where an output channel did not read an input channel before.
    ``(Cout, Cin/group, *k) -> (Cout, Cin/new_group, *k)``
    """
    weight = np.asarray(weight, np.float64)
    if new_group == group:
        return weight
    cout, cin_per_group = weight.shape[:2]
    result = np.zeros((cout, cin_per_group * group // new_group) + weight.shape[2:])
    return add_into(result, new_group, weight, group, (0,) * (weight.ndim - 2))


def add_into(result: np.ndarray, result_group: int, weight, group: int, offsets) -> np.ndarray:
    """``result += weight``, in place, with the weight's taps shifted by ``offsets`` on each spatial
    axis (the zero padding around it is never built) and its groups regrouped to ``result_group``.

    ``result`` is float64 ``(Cout, Cin/result_group, *K)``; ``weight`` is any float dtype
    ``(Cout, Cin/group, *k)`` with ``offsets[i] + k[i] <= K[i]``; ``group`` a multiple of
    ``result_group`` (see regroup). Adding in place keeps one merged kernel in memory, not
    one padded copy per branch.
    """
    weight = np.asarray(weight)
    spatial = tuple(slice(o, o + k) for o, k in zip(offsets, weight.shape[2:]))
    if group == result_group:
        result[(slice(None), slice(None)) + spatial] += weight
        return result
    if group % result_group:
        raise ValueError(f"cannot regroup a {group}-group kernel into {result_group} groups")
    cout, cin_per_group = weight.shape[:2]
    cin = cin_per_group * group
    out_channel = np.arange(cout)
    old_group = out_channel // (cout // group)
    new_group_of = out_channel // (cout // result_group)
    # first column, within the new group, of the input channels this output read
    first = old_group * cin_per_group - new_group_of * (cin // result_group)
    columns = first[:, None] + np.arange(cin_per_group)[None, :]
    result[(out_channel[:, None], columns) + spatial] += weight
    return result


def dilate_kernel(weight, factors) -> np.ndarray:
    """A kernel at dilation ``d·f`` rewritten for dilation ``d``: zeros between its taps.

    ``factors`` has one integer per spatial axis. A k-tap axis becomes ``f·(k−1)+1`` taps.
    """
    weight = np.asarray(weight, np.float64)
    factors = tuple(int(f) for f in factors)
    if all(f == 1 for f in factors):
        return weight
    spatial = weight.shape[2:]
    result = np.zeros(weight.shape[:2] + tuple(f * (k - 1) + 1 for f, k in zip(factors, spatial)))
    result[(slice(None), slice(None)) + tuple(slice(None, None, f) for f in factors)] = weight
    return result


def ungroup(weight, group: int) -> np.ndarray:
    """The dense ``(Cout, Cin, *k)`` kernel of a grouped one: the inverse of regroup to 1."""
    return regroup(weight, group, 1)


def to_groups(dense, group: int) -> np.ndarray:
    """The ``group``-group kernel of a block-diagonal dense ``(Cout, Cin, *k)`` kernel."""
    dense = np.asarray(dense, np.float64)
    cout, cin = dense.shape[:2]
    out_per, in_per = cout // group, cin // group
    blocks = dense.reshape(group, out_per, group, in_per, *dense.shape[2:])
    return blocks[np.arange(group), :, np.arange(group)].reshape(cout, in_per, *dense.shape[2:])


def compose(first, first_group: int, second, second_group: int) -> tuple[np.ndarray, int]:
    """The kernel of ``second(first(x))`` when one of them is 1x1 (no pads, no stride in between).

    first: (C1, C0/g1, *k1), second: (C2, C1/g2, *k2), one of k1, k2 all ones.
    Returns the kernel with the spatial shape of the other and its groups,
    gcd(g1, g2): each output then still reads whole groups of inputs.
    """
    scaled = _compose_diagonal(first, first_group, second, second_group)
    if scaled is not None:
        return scaled
    a, b = ungroup(first, first_group), ungroup(second, second_group)
    # tensordot runs on BLAS; einsum's own loops took minutes on FastViT's 7x7 depthwise chains
    if all(k == 1 for k in a.shape[2:]):
        dense = np.moveaxis(np.tensordot(b, a.reshape(a.shape[:2]), axes=([1], [0])), -1, 1)
    else:
        dense = np.tensordot(b.reshape(b.shape[:2]), a, axes=([1], [0]))
    group = int(np.gcd(first_group, second_group))
    return to_groups(dense, group), group


def _is_diagonal(weight, group: int) -> bool:
    """A depthwise 1x1 kernel with one output per input channel: a per-channel scale (a BN)."""
    weight = np.asarray(weight)
    return weight.shape[1] == 1 and group == weight.shape[0] and all(k == 1 for k in weight.shape[2:])


def _compose_diagonal(first, first_group: int, second, second_group: int) -> tuple[np.ndarray, int] | None:
    """compose() when one side is a per-channel scale: the other kernel scaled along its input
    (scale first) or output (scale second) channels, in its own grouping. None otherwise.

    Without this, a BN next to a large depthwise conv would make a dense C×C kernel.
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if _is_diagonal(first, first_group):
        cout, in_per = second.shape[:2]
        # input channel read by second[o, j]: (o's group) · in_per + j
        channel = (np.arange(cout) // (cout // second_group))[:, None] * in_per + np.arange(in_per)[None, :]
        scale = first.reshape(-1)[channel]
        return second * scale.reshape(scale.shape + (1,) * (second.ndim - 2)), second_group
    if _is_diagonal(second, second_group):
        scale = second.reshape(-1)
        return first * scale.reshape((-1,) + (1,) * (first.ndim - 1)), first_group
    return None


def average_kernel(channels: int, kernel_shape) -> np.ndarray:
    """AveragePool (pads counted) as a depthwise kernel ``(C, 1, *k)`` of 1/(k1·k2·…)."""
    return np.full((channels, 1, *kernel_shape), 1.0 / float(np.prod(kernel_shape)))
