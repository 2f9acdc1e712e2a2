"""merge_concat: channel-concatenated convs of one tensor become one conv with stacked kernels."""

from __future__ import annotations

from helpers import codes, optimize_and_check, reasons

from onnxrep.testing import GraphBuilder


def concat_model(specs, axis=1, extra=False, seed=60):
    b = GraphBuilder(seed)
    x = b.input("x", ["N", 6, 9, 9])
    outs = [b.bn(b.conv(x, cout, k, **kw)) for cout, k, kw in specs]
    if extra:
        outs.insert(1, b.op("Relu", x))
    b.output(b.node("Concat", outs, axis=axis))
    return b.model()


def test_stacks_conv_bn_branches():
    _, report = optimize_and_check(concat_model([(4, 3, {}), (5, 3, {}), (3, 3, {})]),
                                   {"Conv": 1})
    assert report.fired["merge_concat"] == 1


def test_negative_axis_and_strides():
    model = concat_model([(4, 3, {"stride": 2}), (4, 3, {"stride": 2, "dilation": 1})], axis=-3)
    optimize_and_check(model, {"Conv": 1})


def test_keeps_other_operands_in_order():
    """[conv_a(x), relu(x), conv_b(x), conv_c(x)]: only the consecutive run b, c merges."""
    b = GraphBuilder(61)
    x = b.input("x", [1, 6, 9, 9])
    outs = [b.conv(x, 4, 3), b.op("Relu", x), b.conv(x, 4, 3), b.conv(x, 2, 3)]
    b.output(b.node("Concat", outs, axis=1))
    optimize_and_check(b.model(), {"Conv": 2, "Relu": 1, "Concat": 1})


def test_refuses_inception_style_mixed_kernels():
    model = concat_model([(4, 1, {"pads": [0] * 4}), (4, 5, {})])
    _, report = optimize_and_check(model, {"Conv": 2, "Concat": 1})
    assert "would cost" in reasons(report) and "costlier" in codes(report)


def test_refuses_other_axes():
    model = concat_model([(6, 3, {}), (6, 3, {})], axis=2)
    _, report = optimize_and_check(model, {"Conv": 2, "Concat": 1})
    assert "channel axis" in reasons(report) and "layout" in codes(report)


def test_refuses_grouped_convs_that_would_densify():
    model = concat_model([(6, 3, {"group": 3}), (6, 3, {"group": 3})])
    _, report = optimize_and_check(model, {"Conv": 2, "Concat": 1})
    assert "would cost" in reasons(report) and "costlier" in codes(report)


def test_refuses_branch_read_elsewhere():
    b = GraphBuilder(62)
    x = b.input("x", [1, 6, 9, 9])
    a, c = b.conv(x, 4, 3), b.conv(x, 4, 3)
    b.output(b.node("Concat", [a, c], axis=1))
    b.output(b.op("Relu", a))
    _, report = optimize_and_check(b.model(), {"Conv": 2, "Concat": 1, "Relu": 1})
    assert "also read by" in reasons(report) and "read-elsewhere" in codes(report)
