"""A deep stack of MobileOne blocks and its deploy twin, computed here in numpy (not by onnxrep).

Each block: 4 kxk conv-BN branches, a 1x1 "scale" conv-BN branch (kxk blocks
only) and a BN skip, summed, then Relu; depthwise 3x3 and pointwise 1x1 blocks
alternate as in MobileOne. BatchNorm gains are random, of both signs and well
away from 1; they are scaled down by √(branches) so that activations stay O(1)
through every block instead of growing by √6 each.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxrep.testing import GraphBuilder

EPS = 1e-5
CONV_BRANCHES = 4


def fuse_bn(kernel: np.ndarray, bn) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (p.astype(np.float64) for p in bn)
    std = np.sqrt(var + EPS)
    return kernel * (gamma / std).reshape(-1, 1, 1, 1), beta - mean * gamma / std


def _bn_params(b: GraphBuilder, channels: int, branches: int):
    gamma, beta, mean, var = b.bn_params(channels)
    return [(gamma / np.sqrt(branches)).astype(b.dtype), beta, mean, var]


def _block(train: GraphBuilder, deploy: GraphBuilder, xt: str, xd: str, channels: int, k: int):
    group = channels if k > 1 else 1
    pad = k // 2
    kinds = [(k, "conv")] * CONV_BRANCHES + ([(1, "conv")] if k > 1 else []) + [(1, "skip")]
    kernel, bias = np.zeros((channels, channels // group, k, k)), np.zeros(channels)
    outs = []
    for size, kind in kinds:
        bn = _bn_params(train, channels, len(kinds))
        if kind == "conv":
            weight, _ = train.conv_weights(channels, channels, (size, size), group, bias=False)
            p = size // 2
            y = train.node("Conv", [xt, train.constant(weight)], kernel_shape=[size, size],
                           pads=[p, p, p, p], group=group)
        else:
            weight = np.zeros((channels, channels // group, 1, 1), train.dtype)
            weight[np.arange(channels), np.arange(channels) % (channels // group), 0, 0] = 1
            y = xt
        outs.append(train.node("BatchNormalization", [y, *[train.constant(v) for v in bn]], epsilon=EPS))
        fused, shift = fuse_bn(weight.astype(np.float64), bn)
        offset = (k - size) // 2
        kernel[:, :, offset:offset + size, offset:offset + size] += fused
        bias += shift
    total = outs[0]
    for y in outs[1:]:
        total = train.node("Add", [total, y])
    conv = deploy.node("Conv", [xd, deploy.constant(kernel.astype(deploy.dtype)),
                                deploy.constant(bias.astype(deploy.dtype))],
                       kernel_shape=[k, k], pads=[pad] * 4, group=group)
    return train.node("Relu", [total]), deploy.node("Relu", [conv])


def mobileone_stack(blocks: int = 32, channels: int = 16, size: int = 16, seed: int = 0,
                    dtype=np.float32) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(train, deploy): ``blocks`` blocks, depthwise 3x3 and pointwise 1x1 alternating."""
    train, deploy = GraphBuilder(seed, dtype), GraphBuilder(seed, dtype)
    shape = [1, channels, size, size]
    xt, xd = train.input("x", shape), deploy.input("x", shape)
    for i in range(blocks):
        xt, xd = _block(train, deploy, xt, xd, channels, 3 if i % 2 == 0 else 1)
    for b, x in ((train, xt), (deploy, xd)):
        b.node("Identity", [x], outputs=["y"])
        b.output("y", shape)
    return train.model(), deploy.model()
