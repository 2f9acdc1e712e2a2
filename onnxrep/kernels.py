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
    if group % new_group:
        raise ValueError(f"cannot regroup a {group}-group kernel into {new_group} groups")
    cout, cin_per_group = weight.shape[:2]
    cin = cin_per_group * group
    out_channel = np.arange(cout)
    old_group = out_channel // (cout // group)
    new_group_of = out_channel // (cout // new_group)
    # first column, within the new group, of the input channels this output read
    first = old_group * cin_per_group - new_group_of * (cin // new_group)
    result = np.zeros((cout, cin // new_group) + weight.shape[2:])
    columns = first[:, None] + np.arange(cin_per_group)[None, :]
    result[out_channel[:, None], columns] = weight
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


def pad_kernel(weight, before, after) -> np.ndarray:
    """Zero-pad a kernel's spatial axes: ``before[i]`` taps in front of axis i, ``after[i]`` behind."""
    weight = np.asarray(weight, np.float64)
    return np.pad(weight, [(0, 0), (0, 0)] + [(int(b), int(a)) for b, a in zip(before, after)])
