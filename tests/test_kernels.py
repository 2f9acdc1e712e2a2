"""The pure kernel algebra against the numpy conv reference, no graph involved."""

from __future__ import annotations

import numpy as np
import pytest
from reference import conv

from onnxrep.algebra import kernels, spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.refusal import Refused

rng = np.random.default_rng(0)


def random_spec(cin, cout, kernel, strides=(1, 1), pads=None, dilations=(1, 1), group=1):
    if pads is None:
        half = [d * (k - 1) // 2 for d, k in zip(dilations, kernel)]
        pads = tuple(half + half)
    w = rng.standard_normal((cout, cin // group, *kernel))
    return ConvSpec(w, rng.standard_normal(cout), tuple(strides), tuple(pads), tuple(dilations),
                    group, w.size)


def apply(s: ConvSpec, x):
    return conv(x, s.weight, s.bias, s.strides, s.pads, s.dilations, s.group)


def test_bn_affine_matches_formula():
    gamma, beta, mean, var = rng.standard_normal((4, 6))
    var = np.abs(var) + 0.1
    x = rng.standard_normal((3, 6))
    scale, shift = kernels.bn_affine(gamma, beta, mean, var, 1e-3)
    np.testing.assert_allclose(x * scale + shift, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta)


def test_scale_conv_equals_affine_after_conv():
    s = random_spec(4, 6, (3, 3))
    scale, shift = rng.standard_normal(6), rng.standard_normal(6)
    x = rng.standard_normal((2, 4, 7, 7))
    w, b = kernels.scale_conv(s.weight, s.bias, scale, shift)
    want = apply(s, x) * scale[:, None, None] + shift[:, None, None]
    np.testing.assert_allclose(conv(x, w, b, pads=s.pads), want, atol=1e-12)


@pytest.mark.parametrize("group,new_group", [(4, 1), (4, 2), (8, 4), (2, 2), (8, 1)])
def test_regroup_is_the_same_conv(group, new_group):
    w = rng.standard_normal((8, 8 // group, 3, 3))
    x = rng.standard_normal((1, 8, 6, 6))
    np.testing.assert_allclose(conv(x, kernels.regroup(w, group, new_group), group=new_group),
                               conv(x, w, group=group), atol=1e-12)


def test_regroup_refuses_non_divisor():
    with pytest.raises(ValueError):
        kernels.regroup(np.zeros((6, 3, 1, 1)), 2, 3)


def test_dilate_kernel_is_the_same_conv():
    w = rng.standard_normal((3, 2, 3, 2))
    x = rng.standard_normal((1, 2, 11, 11))
    np.testing.assert_allclose(conv(x, kernels.dilate_kernel(w, (2, 3)), dilations=(1, 2)),
                               conv(x, w, dilations=(2, 6)), atol=1e-12)


def test_identity_spec_is_identity():
    x = rng.standard_normal((2, 5, 4, 4))
    np.testing.assert_allclose(apply(spec.identity(5, 2), x), x)


MERGEABLE = {
    "repvgg": [random_spec(6, 6, (3, 3)), random_spec(6, 6, (1, 1)), spec.identity(6, 2)],
    "acnet": [random_spec(4, 5, (3, 3)), random_spec(4, 5, (1, 3)), random_spec(4, 5, (3, 1))],
    "stride2": [random_spec(4, 5, (3, 3), strides=(2, 2)), random_spec(4, 5, (1, 1), strides=(2, 2))],
    "groups": [random_spec(8, 8, (3, 3), group=4), random_spec(8, 8, (1, 1), group=4),
               spec.diagonal(rng.standard_normal(8), rng.standard_normal(8), 2, cost=8)],
    "depthwise": [random_spec(6, 6, (5, 5), group=6), random_spec(6, 6, (3, 3), group=6),
                  spec.identity(6, 2)],
    "asymmetric pads": [random_spec(3, 4, (3, 3), pads=(0, 1, 2, 1)),
                        random_spec(3, 4, (2, 2), pads=(0, 0, 1, 1))],
    "even kernels": [random_spec(3, 4, (4, 4), pads=(1, 1, 2, 2)), random_spec(3, 4, (2, 2), pads=(0, 0, 1, 1))],
    "dilated with 1x1": [random_spec(4, 4, (3, 3), dilations=(2, 2), group=4),
                         random_spec(4, 4, (1, 1), group=4), spec.identity(4, 2)],
    "dilated into large kernel": [random_spec(4, 4, (7, 7), group=4),
                                  random_spec(4, 4, (3, 3), dilations=(2, 2), group=4),
                                  random_spec(4, 4, (3, 3), dilations=(3, 3), group=4)],
    "1d": [random_spec(3, 3, (5,), pads=(2, 2), strides=(1,), dilations=(1,)),
           random_spec(3, 3, (1,), pads=(0, 0), strides=(1,), dilations=(1,)), spec.identity(3, 1)],
    "3d": [random_spec(2, 3, (3, 3, 3), strides=(1, 1, 1), dilations=(1, 1, 1)),
           random_spec(2, 3, (1, 1, 1), strides=(1, 1, 1), dilations=(1, 1, 1))],
}


@pytest.mark.parametrize("name", MERGEABLE)
def test_merge_parallel_equals_sum_of_branches(name):
    specs = MERGEABLE[name]
    merged = spec.merge_parallel(specs)
    assert isinstance(merged, ConvSpec), merged
    x = rng.standard_normal((2, specs[0].in_channels) + (9,) * specs[0].spatial_dims)
    np.testing.assert_allclose(apply(merged, x), sum(apply(s, x) for s in specs), atol=1e-10)


def test_merge_sign_via_negated():
    a, b = random_spec(3, 3, (3, 3)), random_spec(3, 3, (1, 1))
    x = rng.standard_normal((1, 3, 6, 6))
    merged = spec.merge_parallel([a, b.negated()])
    np.testing.assert_allclose(apply(merged, x), apply(a, x) - apply(b, x), atol=1e-10)


REFUSED = {
    "different strides": ([random_spec(3, 3, (3, 3), strides=(2, 2)), random_spec(3, 3, (1, 1))],
                          "different strides"),
    "output shapes": ([random_spec(3, 3, (3, 3), pads=(0, 0, 0, 0)), random_spec(3, 3, (1, 1))],
                      "output shapes differ"),
    "pads misaligned": ([random_spec(3, 3, (3, 3), dilations=(2, 2), pads=(2, 2, 2, 2)),
                         random_spec(3, 3, (2, 2), dilations=(2, 2), pads=(1, 1, 1, 1))],
                        "do not line up"),
    "channels broadcast": ([random_spec(3, 1, (3, 3)), spec.identity(3, 2)], "output channel"),
    "costlier groups": ([random_spec(6, 6, (3, 3), group=2), random_spec(6, 6, (3, 3), group=3)],
                        "would cost"),
    "costlier dilation": ([random_spec(3, 3, (3, 3), dilations=(2, 2)), random_spec(3, 3, (3, 3),
                           dilations=(3, 3))], "would cost"),
    "dense 1x1 with big depthwise": ([random_spec(8, 8, (1, 1)), random_spec(8, 8, (7, 7), group=8)],
                                     "would cost"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_merge_parallel_refusals(name):
    specs, reason = REFUSED[name]
    with pytest.raises(Refused) as refused:
        spec.merge_parallel(specs)
    assert reason in refused.value.reason, refused.value


def test_compose_with_a_per_channel_scale_keeps_the_grouping():
    """A diagonal (BN) before or after a grouped kernel: the same kernel as the dense einsum gives."""
    rng = np.random.default_rng(5)
    scale = rng.standard_normal((6, 1, 1, 1))
    for group in (1, 2, 3, 6):
        conv = rng.standard_normal((12, 6 // group, 3, 3))
        dense = kernels.to_groups(np.einsum("om...,mi->oi...", kernels.ungroup(conv, group),
                                            np.diag(scale.reshape(-1))), group)
        np.testing.assert_allclose(kernels.compose(scale, 6, conv, group)[0], dense)
        assert kernels.compose(scale, 6, conv, group)[1] == group
        after = rng.standard_normal((12, 1, 1, 1))
        expected = conv * after.reshape(-1, 1, 1, 1)
        np.testing.assert_allclose(kernels.compose(conv, group, after, 12)[0], expected)
