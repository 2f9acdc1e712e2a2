"""Verification that knows float rounding: exact merges always pass, subtly wrong ones never do.

Local checks evaluate each rewritten layer on the original's own inputs within
a rounding bound from its magnitudes; the outputs are checked against the
model's measured noise floor. A deep stack with random BatchNorm gains drifts
far more than a fixed tolerance allows, and still nothing may roll back; five
deliberately broken merges, each off by a small amount, must all be caught by
the local checks (not by bisection) and rolled back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from deep_stack import mobileone_stack
from helpers import altered_rule, histogram, random_feeds, run

import onnxrep
from onnxrep import api
from onnxrep.ir import affine
from onnxrep.rules import RULES_BY_NAME
from onnxrep.verify import local as local_check
from onnxrep.verify.check import perturbed_weights, verify_at
from onnxrep.verify.tolerance import Tolerance

MODELS = Path(__file__).resolve().parent.parent / "models"
FOLD = RULES_BY_NAME["fold_conv_affine"]


@pytest.fixture(scope="module", params=[np.float32, np.float16], ids=["float32", "float16"])
def stack(request):
    return mobileone_stack(blocks=32, dtype=request.param)


def test_deep_stack_reaches_its_deploy_twin_with_nothing_rolled_back(stack):
    train, deploy = stack
    optimized, report = onnxrep.optimize(train)
    assert report.verification.passed and report.dropped == [], report.format()
    assert histogram(optimized) == histogram(deploy) == {"Conv": 32, "Relu": 32, "Identity": 1}
    assert len(report.verification.local) == 32 and all(c.passed for c in report.verification.local)
    # the merged weights equal the independently computed deploy weights (to the dtype's rounding)
    tol = 2e-3 if train.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else 1e-5
    feeds = random_feeds(train, seed=3)
    want, got = run(deploy, feeds)[0], run(optimized, feeds)[0]
    np.testing.assert_allclose(got.astype(np.float64), want, atol=tol * float(np.abs(want).max()))


def test_deep_stack_deploy_twin_passes_the_output_check(stack):
    """The author's own conversion must pass: the checker accepts what an exact conversion makes."""
    train, deploy = stack
    result = verify_at(train, deploy, local=False)
    assert result.passed and not result.local


def test_noise_floor_accepts_the_deploy_twin_and_rejects_a_wrong_one(stack, monkeypatch):
    """Forced onto the noise floor (no allowance for the outputs' own rounding): the exact deploy
    twin passes; the same twin with its last layer off by 10% does not. (An early layer off by 1%
    may not show at all at the output of this stack: that is what the local checks are for.)"""
    no_rounding = Tolerance(rounding_factor=0.0)
    train, deploy = stack
    result = verify_at(train, deploy, local=False, tolerance=no_rounding)
    assert result.passed and result.bound_text == "noise floor" and result.noise_floor > 0
    wrong = onnx.ModelProto()
    wrong.CopyFrom(deploy)
    weight = [t for t in wrong.graph.initializer if len(t.dims) == 4][-1]
    array = onnx.numpy_helper.to_array(weight) * 1.1
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    assert not verify_at(train, wrong, local=False, tolerance=no_rounding).passed


def test_deep_stack_drifts_beyond_a_fixed_tolerance_but_passes():
    """What the old fixed tolerance measured was float noise: drift deep in the stack exceeds
    rtol=1e-6 while the noise floor accepts it."""
    train, deploy = mobileone_stack(blocks=32)
    strict = verify_at(train, deploy, local=False, tolerance=Tolerance(rtol=1e-7, atol=1e-7))
    assert not strict.passed and strict.bound_text == "rtol 1e-07, atol 1e-07"
    assert verify_at(train, deploy, local=False).passed


def _shift_tap(spec, _):
    return replace(spec, weight=np.roll(spec.weight, 1, axis=-1))


def _drop_one_bias(spec, _):
    bias = spec.bias.copy()
    bias[int(np.argmax(np.abs(bias)))] = 0.0
    return replace(spec, bias=bias)


def _zero_one_group(spec, _):
    """The last group: in the deep stack, some channels are dead (negative everywhere before a Relu),
    and a zeroed group reading one changes nothing any input can show (block 2's group 0 is one)."""
    if spec.group == 1:
        return spec
    weight = spec.weight.copy()
    weight[-(spec.out_channels // spec.group):] = 0.0
    return replace(spec, weight=weight)


def _transpose_asymmetric(spec, branches):
    """Re-merge with every 1x3/3x1 branch embedded transposed (kh↔kw, pads swapped)."""
    from onnxrep.algebra import spec as specs

    def transposed(s):
        if s.kernel_shape[0] == s.kernel_shape[1]:
            return s
        top, left, bottom, right = s.pads
        return replace(s, weight=s.weight.swapaxes(-1, -2).copy(), pads=(left, top, right, bottom))
    return specs.merge_parallel([transposed(b.spec) for b in branches])


#: (the wrong merge, the model, how many of its merges it changes): the deep stack's 8 blocks are
#: 4 depthwise 3x3 (grouped) and 4 pointwise 1x1 (where a shift along a width of 1 changes nothing);
#: the ACNet sample's 4 blocks each have a 1x3 and a 3x1 branch.
BROKEN = {
    "tap shifted by one": (_shift_tap, "deep", 4),
    "one output channel's bias dropped": (_drop_one_bias, "deep", 8),
    "one group's kernel zeroed": (_zero_one_group, "deep", 4),
    "3x1/1x3 kernel transposed": (_transpose_asymmetric, "acnet", 4),
}


def _model(kind: str) -> onnx.ModelProto:
    return mobileone_stack(blocks=8)[0] if kind == "deep" else onnx.load(MODELS / "acnet.train.onnx")


@pytest.mark.parametrize("what", list(BROKEN))
def test_subtly_wrong_merges_are_caught_locally(what, monkeypatch):
    alter, kind, wrong = BROKEN[what]
    model = _model(kind)
    _, clean = onnxrep.optimize(model, rules=(FOLD, RULES_BY_NAME["merge_parallel"]))
    merges = clean.fired["merge_parallel"]
    monkeypatch.setattr(api, "_first_failing", _no_bisection)
    _, report = onnxrep.optimize(model, rules=(FOLD, altered_rule("broken", alter)))
    assert report.verification.passed
    assert len(report.dropped) == wrong and report.fired["broken"] == merges - wrong, report.format()
    assert all("local check of" in f.reason for f in report.dropped)


def test_misapplied_bn_epsilon_is_caught_locally(monkeypatch):
    """Every BatchNormalization lifted with ε = 1e-3 instead of its own 1e-5: a relative error of
    ~5e-4 in each folded scale, found and rolled back by the local checks alone."""
    model = _model("deep")
    real = affine.batchnorm

    def wrong_epsilon(node, ctx):
        saved = node.attrs.get("epsilon", 1e-5)
        node.attrs["epsilon"] = 1e-3
        try:
            return real(node, ctx)
        finally:
            node.attrs["epsilon"] = saved
    monkeypatch.setattr(affine, "batchnorm", wrong_epsilon)
    monkeypatch.setattr(api, "_first_failing", _no_bisection)
    optimized, report = onnxrep.optimize(model)
    assert report.verification.passed and report.dropped
    assert all("local check of" in f.reason for f in report.dropped)
    assert histogram(optimized)["BatchNormalization"] == histogram(model)["BatchNormalization"]


def _no_bisection(*args, **kwargs):
    raise AssertionError("the local checks should have named the culprit")


def test_bisection_still_finds_a_culprit_the_local_checks_cannot_see(monkeypatch):
    """Without local checks (onnxruntime would not expose the tensors), the outputs and bisection
    still find the one broken merge."""
    monkeypatch.setattr(local_check, "plan", lambda original, optimized: local_check.Plan())
    model = onnx.load(MODELS / "repvgg.train.onnx")
    _, clean = onnxrep.optimize(model, verify=False)
    target = [r.anchor for r in clean.applied if r.rule == "merge_parallel"][2]
    _, report = onnxrep.optimize(model, rules=(FOLD, altered_rule("broken", _shift_tap, only=target)))
    assert [(f.rule, f.rewrite.anchor) for f in report.dropped] == [("broken", target)]
    assert "outputs differ" in report.dropped[0].reason and report.verification.passed


def test_report_states_both_checks():
    _, report = onnxrep.optimize(MODELS / "repvgg.train.onnx")
    line = report.format().splitlines()[-2]
    assert "local max error" in line and "over 8 rewritten tensor(s)" in line and "within rounding" in line
    data = report.to_dict()["verification"]
    assert data["local"]["checked"] == 8 and data["local"]["failed"] == [] and data["tolerance"] == "rounding"


def test_rtol_and_atol_override_the_noise_floor():
    _, report = onnxrep.optimize(MODELS / "repvgg.train.onnx", rtol=1e-3, atol=1e-4)
    assert report.verification.passed and report.verification.bound_text == "rtol 0.001, atol 0.0001"
    assert ", rtol 0.001, atol 0.0001)" in report.format()


def test_noise_run_perturbs_layer_weights_by_about_one_rounding():
    model = onnx.load(MODELS / "repvgg.train.onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    perturbed = perturbed_weights(model, seed=0)
    assert set(perturbed) == {n for n, w in weights.items() if w.dtype == np.float32}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = weights[conv.input[1]]
    fan_in = int(np.prod(weight.shape[1:]))
    relative = np.abs(perturbed[conv.input[1]] / weight - 1)
    assert 0 < relative.max() <= 2.0**-24 * max(np.sqrt(fan_in), 2) * 1.01 + 2.0**-23


def test_noise_run_leaves_scalars_and_shape_constants_alone():
    from onnxrep.testing import GraphBuilder

    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 4, 8, 8])
    y = b.conv(x, 4, 3)
    y = b.op("Mul", y, b.constant(np.float32(0.5), "half"))
    b.node("Reshape", [y, b.constant(np.array([1, -1], np.int64), "shape")], outputs=["y"])
    b.output("y")
    perturbed = perturbed_weights(b.model(), seed=0)
    assert "half" not in perturbed and "shape" not in perturbed and len(perturbed) == 2


def test_a_wrong_constant_fold_is_caught_where_it_happens():
    """Tensors the original computes and the optimized model holds as constants are compared too."""
    model = onnx.load(MODELS / "repvgg.train.onnx")
    optimized, _ = onnxrep.optimize(model, verify=False)
    result = verify_at(model, optimized)
    assert result.passed
    # corrupt one folded weight's source: the conv's output is then locally wrong
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    weight = next(t for t in optimized.graph.initializer if t.name == conv.input[1])
    array = onnx.numpy_helper.to_array(weight).copy()
    array[0, 0, 1, 1] *= 1.001
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    result = verify_at(model, optimized)
    assert not result.passed and result.failing_tensors == [conv.output[0]]


def _cancelling_branches() -> onnx.ModelProto:
    """A conv3x3-BN + conv1x1-BN block whose BN shifts (±~3) cancel to ~1e-6 in the merged bias,
    reading a tensor that is zero on half the image: there both sides compute the bias alone."""
    from onnxrep.testing import GraphBuilder

    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 8, 12, 12])
    mask = np.zeros((1, 1, 12, 12), np.float32)
    mask[..., :6] = 1.0
    masked = b.op("Mul", x, b.constant(mask, "mask"))
    shifts = []
    outs = []
    for k in (3, 1):
        conv = b.conv(masked, 8, k, bias=False)
        gamma, beta, mean, var = b.bn_params(8)
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
        mean = np.full(8, 3.0, np.float32)
        if shifts:  # the second branch's shift cancels the first's
            beta = (-shifts[0] + mean * scale + 1e-6).astype(np.float32)
        shifts.append(beta - mean * scale)
        outs.append(b.node("BatchNormalization", [conv, *[b.constant(p) for p in (gamma, beta, mean, var)]],
                           epsilon=1e-5))
    b.node("Add", outs, outputs=["y"])
    b.output("y")
    return b.model()


def test_cancelling_branches_are_checked_against_the_originals_own_magnitudes(monkeypatch):
    """Stage 2: the merged layer's magnitudes alone are too small to bound the original's rounding
    of terms that cancel; the original's magnitudes are computed and the exact merge is kept."""
    from onnxrep.verify import check as verification

    model = _cancelling_branches()
    optimized, report = onnxrep.optimize(model)
    assert report.verification.passed and report.dropped == [], report.format()
    assert histogram(optimized) == {"Mul": 1, "Conv": 1}
    # without the original's magnitudes, the same exact merge would be rolled back
    monkeypatch.setattr(verification, "_original_magnitudes",
                        lambda original, checks, anchors, reference, feeds: {a: 0.0 for a in anchors})
    _, report = onnxrep.optimize(model)
    assert [f.rule for f in report.dropped] == ["merge_parallel"]


@pytest.mark.parametrize("what", ["tap shifted by one", "one output channel's bias dropped"])
def test_subtly_wrong_merges_are_caught_locally_in_float16(what, monkeypatch):
    """The same checks with float16's roundoff (2^-11): still far below a wrong term."""
    alter, _, wrong = BROKEN[what]
    model = mobileone_stack(blocks=8, dtype=np.float16)[0]
    monkeypatch.setattr(api, "_first_failing", _no_bisection)
    _, report = onnxrep.optimize(model, rules=(FOLD, altered_rule("broken", alter)))
    assert report.verification.passed and len(report.dropped) == wrong, report.format()
    assert all("local check of" in f.reason for f in report.dropped)


def _dynamic(model: onnx.ModelProto, *axes: int) -> onnx.ModelProto:
    for value in (*model.graph.input, *model.graph.output):
        for axis in axes:
            value.type.tensor_type.shape.dim[axis].dim_param = f"d{axis}"
    return model


def test_dynamic_models_are_verified_at_a_second_odd_size():
    train, deploy = mobileone_stack(blocks=4)
    _dynamic(train, 0, 2, 3)
    _, report = onnxrep.optimize(train)
    v = report.verification
    assert v.passed and v.input_shapes == {"x": (1, 16, 32, 32)} and v.other_sizes == ({"x": (2, 16, 37, 53)},)
    assert "and x=2x16x37x53" in report.format() and v.checked_tensors == 4 and len(v.local) == 8


def test_a_merge_wrong_only_at_odd_sizes_is_caught_at_the_second_size(monkeypatch):
    """A Conv with pads that give the right output only for even sizes: stride 2 and one pad dropped
    at the end. At the default 32x32 both shapes agree; at 37x53 the width differs."""
    from onnxrep.testing import GraphBuilder

    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 4, "h", "w"])
    y3 = b.bn(b.conv(x, 8, 3, stride=2, bias=False))
    y1 = b.bn(b.conv(x, 8, 1, stride=2, pads=[0, 0, 0, 0], bias=False))
    b.node("Add", [y3, y1], outputs=["y"])
    b.output("y")
    model = _dynamic(b.model(), 0)

    def drop_right_pad(spec, _):
        top, left, bottom, right = spec.pads
        return replace(spec, pads=(top, left, bottom, 0))
    _, clean = onnxrep.optimize(model)
    assert clean.verification.passed and clean.dropped == []
    broken = (FOLD, altered_rule("broken", drop_right_pad))
    _, report = onnxrep.optimize(model, rules=broken)
    assert report.verification.passed and [f.rule for f in report.dropped] == ["broken"], report.format()
    # at one size alone the wrong merge is invisible: that is why a second size is checked, also when
    # the first size is given (the model's dims stay dynamic); real inputs are checked as they are
    x = np.random.default_rng(0).standard_normal((1, 4, 32, 32)).astype(np.float32)
    _, one_size = onnxrep.optimize(model, rules=broken, inputs={"x": x})
    assert one_size.dropped == [] and one_size.verification.other_sizes == ()
    _, given = onnxrep.optimize(model, rules=broken, input_shapes={"x": (1, 4, 32, 32)})
    assert [f.rule for f in given.dropped] == ["broken"] and given.verification.other_sizes == ({"x": (2, 4, 37, 53)},)


def test_a_wrong_rewrite_keyed_at_a_vanished_tensor_is_found_through_its_region(monkeypatch):
    """LeViT's LinearNorm: the BN folds into the Linear and the reshapes around it vanish, so the first
    tensor both graphs still compute is the HardSwish after them. A wrong fold fails the local check
    there; the rewrites to roll back are found among the original tensors that check covers: the
    last of them first (fold_reshapes, innocent), then the fold; the guess is undone at the end."""
    from test_fold_reshaped_affine import bn, tokens
    from test_matmul import linear

    from onnxrep.rules import DEFAULT_RULES, fold_reshaped_affine

    b, x = tokens()
    y = linear(b, x, bias=False)
    normed = bn(b, b.node("Flatten", [y], axis=2), 6)
    b.output(b.op("HardSwish", b.node("Reshape", [normed, b.node("Shape", [y])])))
    model = b.model()

    def off_by_a_little(builder, match):
        spec = match.affine.spec
        affine = replace(match.affine, spec=replace(spec, bias=spec.bias + 1e-3))
        return fold_reshaped_affine.build(builder, replace(match, affine=affine))
    broken = replace(fold_reshaped_affine.RULE, summary="off by 1e-3", build=off_by_a_little)
    rules = tuple(broken if r.name == broken.name else r for r in DEFAULT_RULES)
    monkeypatch.setattr(api, "_first_failing", _no_bisection)
    steps = []
    optimized, report = onnxrep.optimize(model, rules=rules, progress=steps.append)
    assert report.verification.passed and [f.rule for f in report.dropped] == ["fold_reshaped_affine"]
    assert [s.split(" at ")[0] for s in steps if " at " in s] == [
        "roll back fold_reshapes", "roll back fold_reshaped_affine", "keep fold_reshapes"]
    assert "BatchNormalization" in histogram(optimized)


def _sorted_indices_model() -> onnx.ModelProto:
    """A RepVGG-style merge whose 4096 outputs TopK sorts: the order of near-tied values changes under
    any rounding, so the indices (cast to float, as a detector's kept boxes change) move by whole values."""
    from onnxrep.testing import GraphBuilder

    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 16, 16, 16])
    y = b.node("Add", [b.bn(b.conv(x, 16, 3, bias=False)), b.bn(b.conv(x, 16, 1, pads=[0, 0, 0, 0], bias=False))])
    k = b.constant(np.array([4096], np.int64))
    b.node("TopK", [b.node("Flatten", [y]), k], outputs=["scores", "order_i"])
    b.node("Cast", ["order_i"], outputs=["order"], to=onnx.TensorProto.FLOAT)
    b.output("scores")
    b.output("order")
    return b.model()


def test_an_output_the_noise_floor_swamps_is_reported_uninformative():
    _, report = onnxrep.optimize(_sorted_indices_model())
    v = report.verification
    assert v.passed and v.bound_text == "noise floor" and v.local and all(c.passed for c in v.local)
    assert [name for name, _ in v.uninformative] == ["order"], report.format()  # not the scores: they round
    assert "TopK" in v.uninformative[0][1]
    assert "end-to-end check uninformative for order" in report.format()
    assert "the local checks carry the verification" in report.format()
    data = report.to_dict()["verification"]
    assert data["uninformative"] == [{"output": "order", "why": v.uninformative[0][1]}]
    assert data["noise_floor"] == v.noise_floor > 0


def test_errors_are_printed_relative_to_their_scale():
    """Random-init MobileOne-S0's outputs reach 1.6e15: 8.1e8 is rounding there, and the line says so."""
    from onnxrep.report.report import Report
    from onnxrep.verify.check import OutputCheck, Verification
    from onnxrep.verify.local import LocalCheck

    outputs = (OutputCheck("logits", 8.1e8, 1.6e15, 1.6e9, True),)
    local = (LocalCheck("a", 6.4e9, 0.1, True, scale=3.2e16), LocalCheck("b", 1e-4, 0.1, True, scale=1e3))
    line = Report(verification=Verification(True, outputs, {"x": (1, 3, 224, 224)}, 1.0, local)).format()
    assert "local max error 2e-07 relative (6.4e+09 at values up to 3.2e+16) over 2 rewritten tensor(s)" in line
    assert "outputs max error 5.1e-07 relative (8.1e+08 at values up to 1.6e+15, within rounding)" in line


def test_json_lists_each_output_and_tensor_once_with_its_result_at_every_size():
    train, _ = mobileone_stack(blocks=4)
    _dynamic(train, 0, 2, 3)
    _, report = onnxrep.optimize(train)
    data = report.to_dict()["verification"]
    sizes = [s["input_shapes"] for s in data["sizes"]]
    assert sizes == [{"x": (1, 16, 32, 32)}, {"x": (2, 16, 37, 53)}] and data["noise_floor"] is None
    tensors = data["local"]["tensors"]
    assert data["local"]["checked"] == len(tensors) == len({t["tensor"] for t in tensors}) == 4
    assert [o["name"] for o in data["outputs"]] == ["y"]
    for entry in tensors + data["outputs"]:
        assert [s["input_shapes"] for s in entry["by_size"]] == sizes and entry["passed"]
