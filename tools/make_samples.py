"""Make the sample models in models/: training-time nets and their deploy-time twins.

    python tools/make_samples.py

Each net is built twice from the same random parameters (fixed seed, random
BatchNorm statistics): once with the training-time branches, once as the
single-conv deploy graph. The deploy weights are computed here the way the
papers' own code does it (RepVGG's get_equivalent_kernel_bias, ACNet's
kernel addition), independently of onnxrep's engine, so the tests compare
onnxrep against an outside reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxrep.testing import GraphBuilder

MODELS = Path(__file__).resolve().parent.parent / "models"
EPS = 1e-5


class Twins:
    """Two builders fed the same parameters: ``train`` gets branches, ``deploy`` one conv."""

    def __init__(self, seed: int, shape):
        self.rng = np.random.default_rng(seed)
        self.train, self.deploy = GraphBuilder(seed), GraphBuilder(seed)
        self.x = self.train.input("input", shape)
        self.deploy.input("input", shape)
        self.channels = shape[1]

    def conv_bn_params(self, cin, cout, kernel, group):
        b = self.train
        weight, _ = b.conv_weights(cin, cout, kernel, group, bias=False)
        return weight, b.bn_params(cout)

    def emit_train_conv_bn(self, x, weight, bn, stride, pads, group):
        b = self.train
        conv = b.node("Conv", [x, b.constant(weight)], kernel_shape=list(weight.shape[2:]),
                      strides=[stride, stride], pads=pads, group=group)
        return b.node("BatchNormalization", [conv, *[b.constant(p) for p in bn]], epsilon=EPS)

    def emit_deploy_conv(self, x, weight, bias, stride, pads, group):
        b = self.deploy
        return b.node("Conv", [x, b.constant(weight.astype(np.float32)), b.constant(bias.astype(np.float32))],
                      kernel_shape=list(weight.shape[2:]), strides=[stride, stride], pads=pads, group=group)


def fuse_bn(kernel, bn):
    """RepVGG's _fuse_bn_tensor in numpy: (kernel, bias) of conv-BN."""
    gamma, beta, mean, var = (p.astype(np.float64) for p in bn)
    std = np.sqrt(var + EPS)
    return kernel * (gamma / std).reshape(-1, 1, 1, 1), beta - mean * gamma / std


def repvgg_block(t: Twins, x_train, x_deploy, cin, cout, stride, group):
    k3, bn3 = t.conv_bn_params(cin, cout, (3, 3), group)
    k1, bn1 = t.conv_bn_params(cin, cout, (1, 1), group)
    has_identity = cin == cout and stride == 1
    bn_id = t.train.bn_params(cin) if has_identity else None

    y3 = t.emit_train_conv_bn(x_train, k3, bn3, stride, [1, 1, 1, 1], group)
    y1 = t.emit_train_conv_bn(x_train, k1, bn1, stride, [0, 0, 0, 0], group)
    y = t.train.node("Add", [y3, y1])
    if has_identity:
        yid = t.train.node("BatchNormalization", [x_train, *[t.train.constant(p) for p in bn_id]], epsilon=EPS)
        y = t.train.node("Add", [y, yid])

    kernel3, bias3 = fuse_bn(k3.astype(np.float64), bn3)
    kernel1, bias1 = fuse_bn(k1.astype(np.float64), bn1)
    kernel, bias = kernel3 + np.pad(kernel1, [(0, 0), (0, 0), (1, 1), (1, 1)]), bias3 + bias1
    if has_identity:
        input_dim = cin // group
        identity = np.zeros((cin, input_dim, 3, 3))
        for i in range(cin):
            identity[i, i % input_dim, 1, 1] = 1
        kid, bid = fuse_bn(identity, bn_id)
        kernel, bias = kernel + kid, bias + bid
    y_deploy = t.emit_deploy_conv(x_deploy, kernel, bias, stride, [1, 1, 1, 1], group)
    return t.train.node("Relu", [y]), t.deploy.node("Relu", [y_deploy])


def acnet_block(t: Twins, x_train, x_deploy, cin, cout, stride):
    """ACNet: 3x3 + 1x3 + 3x1 conv-BN, the asymmetric kernels added onto the square's skeleton."""
    k33, bn33 = t.conv_bn_params(cin, cout, (3, 3), 1)
    k13, bn13 = t.conv_bn_params(cin, cout, (1, 3), 1)
    k31, bn31 = t.conv_bn_params(cin, cout, (3, 1), 1)
    y = t.train.node("Add", [t.emit_train_conv_bn(x_train, k33, bn33, stride, [1, 1, 1, 1], 1),
                             t.emit_train_conv_bn(x_train, k13, bn13, stride, [0, 1, 0, 1], 1)])
    y = t.train.node("Add", [y, t.emit_train_conv_bn(x_train, k31, bn31, stride, [1, 0, 1, 0], 1)])
    kernel, bias = fuse_bn(k33.astype(np.float64), bn33)
    hor, hor_bias = fuse_bn(k13.astype(np.float64), bn13)
    ver, ver_bias = fuse_bn(k31.astype(np.float64), bn31)
    kernel = kernel.copy()
    kernel[:, :, 1:2, :] += hor
    kernel[:, :, :, 1:2] += ver
    y_deploy = t.emit_deploy_conv(x_deploy, kernel, bias + hor_bias + ver_bias, stride, [1, 1, 1, 1], 1)
    return t.train.node("Relu", [y]), t.deploy.node("Relu", [y_deploy])


def classifier(t: Twins, x_train, x_deploy, channels, classes=10):
    weight = (t.rng.standard_normal((classes, channels)) / np.sqrt(channels)).astype(np.float32)
    bias = (t.rng.standard_normal(classes) * 0.1).astype(np.float32)
    for b, x in ((t.train, x_train), (t.deploy, x_deploy)):
        pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
        b.node("Gemm", [pooled, b.constant(weight, "fc.weight"), b.constant(bias, "fc.bias")],
               outputs=["logits"], name="fc", transB=1)
        b.output("logits", ["N", classes])


def build(name, seed, stages, block):
    t = Twins(seed, ["N", 3, 32, 32])
    x_train = x_deploy = "input"
    cin = 3
    for cout, stride, *group in stages:
        args = (cin, cout, stride, *(group or [1])) if block is repvgg_block else (cin, cout, stride)
        x_train, x_deploy = block(t, x_train, x_deploy, *args)
        cin = cout
    classifier(t, x_train, x_deploy, cin)
    for kind, b in (("train", t.train), ("deploy", t.deploy)):
        model = b.model(opset=17)
        model.graph.name = f"{name}_{kind}"
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, MODELS / f"{name}.{kind}.onnx")
        print(f"models/{name}.{kind}.onnx: {len(model.graph.node)} nodes, "
              f"{(MODELS / f'{name}.{kind}.onnx').stat().st_size / 1024:.0f} KB")


REPVGG_STAGES = [(16, 2), (16, 1), (32, 2), (32, 1), (32, 1, 4), (64, 2), (64, 1), (64, 1, 4)]
ACNET_STAGES = [(16, 2), (16, 1), (32, 2), (32, 1)]

if __name__ == "__main__":
    MODELS.mkdir(exist_ok=True)
    build("repvgg", 2021, REPVGG_STAGES, repvgg_block)
    build("acnet", 2019, ACNET_STAGES, acnet_block)
