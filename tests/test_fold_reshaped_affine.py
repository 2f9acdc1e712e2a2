"""fold_reshaped_affine: BatchNorm1d applied through reshapes (LeViT's LinearNorm) folds into the Linear."""

from __future__ import annotations

import numpy as np
from helpers import codes, optimize_and_check, reasons
from test_matmul import linear, vector

from onnxrep.testing import GraphBuilder

B, T, C, OUT = 2, 5, 8, 6


def tokens(seed=90):
    b = GraphBuilder(seed)
    return b, b.input("x", [B, T, C])


def shape(b: GraphBuilder, *dims) -> str:
    return b.constant(np.array(dims, np.int64))


def bn(b: GraphBuilder, x: str, channels: int) -> str:
    b.channels[x] = channels
    return b.bn(x)


def test_levit_linear_norm():
    """relu(bn(linear(x).flatten(0, 1)).reshape_as(x)): the BN folds, then the reshapes cancel out."""
    b, x = tokens()
    y = linear(b, x, bias=False)
    normed = bn(b, b.node("Flatten", [y], axis=2), OUT)
    b.output(b.op("Relu", b.node("Reshape", [normed, b.node("Shape", [y])])))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Relu": 1})
    assert report.fired["fold_reshaped_affine"] == 1 and report.fired["fold_reshapes"] == 1


def test_reshapes_writing_a_graph_output_become_one():
    """The round trip writes a graph output: one Reshape keeps its name."""
    b, x = tokens(96)
    normed = bn(b, b.node("Flatten", [linear(b, x)], axis=2), OUT)
    b.output(b.node("Reshape", [normed, shape(b, B, T, OUT)]))
    optimized, _ = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Reshape": 1})
    assert optimized.graph.output[0].name == b.outputs[0].name


def test_through_reshape_and_transpose():
    """A Linear with bias, reshaped to [B·T, C], and a BN on [B, C, T] after a Transpose."""
    b, x = tokens(91)
    flat = bn(b, b.node("Reshape", [linear(b, x), shape(b, -1, OUT)]), OUT)
    b.output(b.node("Reshape", [flat, shape(b, B, T, OUT)]))
    moved = bn(b, b.node("Transpose", [linear(b, x)], perm=[0, 2, 1]), OUT)
    b.output(b.node("Mul", [moved, vector(b, (OUT, 1))]))
    optimize_and_check(b.model(), {"MatMul": 2, "Add": 2, "Reshape": 1, "Transpose": 1})


def test_refuses_reshape_that_mixes_the_feature_axis():
    b, x = tokens(92)
    mixed = b.node("Reshape", [linear(b, x), shape(b, -1, 4)])  # rows of 4 cut across the 6 features
    b.output(bn(b, mixed, 4))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Reshape": 1, "BatchNormalization": 1})
    assert "mixes the feature axis" in reasons(report) and "layout" in codes(report)


def test_refuses_batchnorm_of_the_tokens():
    b, x = tokens(93)
    same = b.node("Reshape", [linear(b, x), shape(b, B, T, OUT)])
    b.output(bn(b, same, T))  # the reshape to its own shape is dropped
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "BatchNormalization": 1})
    assert "axis" in reasons(report)


def test_batchnorm_whose_statistics_another_node_reads_folds_into_a_copy():
    """The running mean is also an Add's input: the fold writes fresh weights and leaves the mean to
    the Add (counted as a shared copy)."""
    b, x = tokens(94)
    normed = bn(b, b.node("Flatten", [linear(b, x)], axis=2), OUT)
    mean = b.nodes[-1].input[3]
    b.output(normed)
    b.output(b.node("Add", [b.input("z", [OUT]), mean]))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 2, "Flatten": 1})
    assert mean in report.shared_copies


def test_refuses_reshaped_features_read_elsewhere():
    b, x = tokens(95)
    flat = b.node("Flatten", [linear(b, x)], axis=2)
    b.output(bn(b, flat, OUT))
    b.output(b.op("Relu", flat))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Flatten": 1, "BatchNormalization": 1,
                                               "Relu": 1})
    assert "also read by" in reasons(report) and "read-elsewhere" in codes(report)


def test_scalar_after_a_head_split():
    """Attention's q · scale after q is split into heads: a scalar folds through any reshape."""
    b, x = tokens(97)
    heads = b.node("Transpose", [b.node("Reshape", [linear(b, x), shape(b, B, T, 2, 3)])], perm=[0, 2, 1, 3])
    b.output(b.node("Mul", [heads, b.constant(np.float32(0.25))]))
    optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Reshape": 1, "Transpose": 1})


def test_refuses_vector_after_a_head_split():
    b, x = tokens(98)
    heads = b.node("Reshape", [linear(b, x), shape(b, B, T, 2, 3)])
    b.output(b.node("Mul", [heads, vector(b, (3,))]))
    _, report = optimize_and_check(b.model(), {"MatMul": 1, "Add": 1, "Reshape": 1, "Mul": 1})
    assert "mixes the feature axis" in reasons(report) and "layout" in codes(report)
