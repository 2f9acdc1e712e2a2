"""A slow, obvious numpy convolution: the reference the kernel algebra is tested against."""

from __future__ import annotations

import itertools

import numpy as np


def conv(x, weight, bias=None, strides=None, pads=None, dilations=None, group=1):
    """ONNX Conv semantics. x: (N, Cin, *spatial); weight: (Cout, Cin/group, *k)."""
    nd = weight.ndim - 2
    strides = strides or (1,) * nd
    dilations = dilations or (1,) * nd
    pads = pads or (0,) * (2 * nd)
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[a + nd]) for a in range(nd)])
    kernel = weight.shape[2:]
    out_shape = [(x.shape[2 + a] - dilations[a] * (kernel[a] - 1) - 1) // strides[a] + 1 for a in range(nd)]
    cout, cin_g = weight.shape[:2]
    out = np.zeros((x.shape[0], cout, *out_shape))
    per_group = cout // group
    for o in range(cout):
        g = o // per_group
        xs = x[:, g * cin_g:(g + 1) * cin_g]
        for taps in itertools.product(*[range(k) for k in kernel]):
            index = tuple(slice(t * d, t * d + s * (n - 1) + 1, s)
                          for t, d, s, n in zip(taps, dilations, strides, out_shape))
            out[:, o] += np.einsum("nc...,c->n...", xs[(slice(None), slice(None)) + index],
                                   weight[(o, slice(None)) + taps])
    if bias is not None:
        out += np.asarray(bias).reshape((1, -1) + (1,) * nd)
    return out
