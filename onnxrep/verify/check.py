"""Check an optimized model against its original in onnxruntime, knowing float rounding.

Two checks, on the same seeded random inputs, with onnxruntime's own graph
optimizations disabled (its Conv+BN fusion would otherwise hide our mistakes):

- **local** (:mod:`onnxrep.local_check`): every node the optimizer emitted or
  changed runs on the original model's own values of its inputs and must give
  the original's value of the tensor it replaces within a rounding bound
  derived from its magnitudes. This is where an inexact rewrite shows.
- **end to end**: every output must lie within ``rounding_factor`` roundoffs of its
  largest value or, failing that, within ``noise_multiple`` times the model's
  own *noise floor*: how far the original's outputs move when every weight is
  perturbed by about one rounding of the layer that reads it (see
  :func:`perturbed_weights`). Deep networks amplify rounding; this measures by
  how much, on the model itself, instead of guessing a tolerance.
  A :class:`~onnxrep.verify.tolerance.Tolerance` holds these numbers; its ``rtol``/``atol``
  override both with ``|opt − ref| ≤ atol · max|ref| + rtol · |ref|``.

Integer and bool outputs must be equal (unless the noise run changes them too).
Each model is loaded once (the original with the tensors the local checks need
exposed, the optimized model with the local copies added) and run once per input
size; the noise run and the original's magnitudes run only when a check needs
them (see :func:`verify_at`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from onnxrep.algebra.rounding import UNIT_ROUNDOFF, unit_roundoff
from onnxrep.errors import UnsupportedModel
from onnxrep.io.files import too_big_for_protobuf
from onnxrep.verify import feeds as feeding
from onnxrep.verify import local as local_check
from onnxrep.verify import sizes as sizing
from onnxrep.verify.local import LocalCheck
from onnxrep.verify.sizes import Unexercised
from onnxrep.verify.tolerance import DEFAULT, Bound, Tolerance

if TYPE_CHECKING:
    import onnxruntime as ort

#: Weights perturbed for the noise floor: those read by these ops (the layers rewrites touch), and
#: per-channel constants (2 elements or more) of these elementwise ops. Scalars are left alone: they
#: also feed shape arithmetic, where a perturbation could change a floor() and so a shape.
_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
              "LayerNormalization", "GroupNormalization", "PRelu"}
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div"}


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    scale: float  # largest |reference| value
    allowed: float  # error allowed at the largest value
    passed: bool
    noise: float | None = None  # how far the output moved in the noise run (max abs); None: not run
    size: int = 0  # the input size it was checked at: an index into Verification.sizes

    @property
    def uninformative(self) -> bool:
        """The error allowed is as large as the output itself: an all-zero output would pass. So it is
        when one rounding of the weights (the noise run) moves the output by an eighth of its size: a
        TopK, ArgMax or NonMaxSuppression picking among near-tied values of an untrained model."""
        return self.noise is not None and self.scale > 0 and self.allowed >= self.scale


@dataclass(frozen=True)
class Verification:
    passed: bool
    outputs: tuple[OutputCheck, ...]
    input_shapes: dict[str, tuple[int, ...]]
    seconds: float
    local: tuple[LocalCheck, ...] = ()  # at every size checked
    bound: Bound = Bound.ROUNDING  # what the outputs were held to
    tolerance: Tolerance = DEFAULT
    local_skipped: str | None = None  # why the local checks could not run
    other_sizes: tuple[dict[str, tuple[int, ...]], ...] = ()  # input shapes also checked (dynamic dims)
    other_sizes_skipped: str | None = None  # why a second size was not checked
    size_notes: tuple[str, ...] = ()  # why each size was checked (as in ``sizes``)
    unexercised: tuple[Unexercised, ...] = ()  # rewritten convs whose border taps no size exercised
    uninformative: tuple[tuple[str, str], ...] = ()  # (output, why) the end-to-end check cannot tell

    @property
    def sizes(self) -> tuple[dict[str, tuple[int, ...]], ...]:
        """Every input size checked, the first one first: entries' ``size`` index into it."""
        return (self.input_shapes, *self.other_sizes)

    @property
    def bound_text(self) -> str:
        """"rounding", "noise floor" or "rtol R, atol A": the bound the outputs were held to."""
        return self.tolerance.describe(self.bound)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def noise_floor(self) -> float | None:
        """The largest noise-run movement of an output; None when the noise run did not run."""
        return max((o.noise for o in self.outputs if o.noise is not None), default=None)

    @property
    def local_max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.local), default=0.0)

    @property
    def failing_tensors(self) -> list[str]:
        """The rewritten tensors whose local check failed: each names the rewrite that wrote it."""
        return list(dict.fromkeys(c.tensor for c in self.local if not c.passed))

    @property
    def checked_tensors(self) -> int:
        return len({c.tensor for c in self.local})


def _options() -> ort.SessionOptions:
    import onnxruntime as ort  # here, not at the top: inspect and --no-verify never load it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # onnxruntime's own log lines would break our one-line errors
    ort.set_default_logger_severity(4)
    return options


def _run(session: ort.InferenceSession, names: list[str], feeds: dict) -> list:
    """``session.run`` with onnxruntime's own logging off (3 still lets its error lines through)."""
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    return session.run(names, feeds, quiet)


@contextmanager
def _source(model: onnx.ModelProto, tmp_dir: str, tag: str) -> Iterator[bytes | str]:
    """What onnxruntime loads the model from: its bytes, or a file with external data above 2 GB
    (the model gets its weights back afterwards)."""
    if not too_big_for_protobuf(model):
        yield model.SerializeToString()
        return
    path = os.path.join(tmp_dir, f"{tag}.onnx")
    onnx.save_model(model, path, save_as_external_data=True, location=f"{tag}.data")
    try:
        load_external_data_for_model(model, tmp_dir)  # save_model moved the weights out: back in
        yield path
    finally:
        os.remove(path)
        os.remove(os.path.join(tmp_dir, f"{tag}.data"))


def _session(source: bytes | str, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, options or _options(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own unexported error types
        raise UnsupportedModel(f"onnxruntime cannot run the model: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def compare(name: str, reference: np.ndarray, actual: np.ndarray, noise: np.ndarray | None,
            tolerance: Tolerance = DEFAULT) -> OutputCheck:
    """One output against the original's: within its own rounding plus noise_multiple × the noise
    floor (or the tolerance's rtol/atol)."""
    if reference.shape != actual.shape:
        return OutputCheck(name, float("inf"), 0.0, 0.0, False)
    if not np.issubdtype(reference.dtype, np.floating):
        unstable = noise is not None and not np.array_equal(reference, noise)
        equal = bool(np.array_equal(reference, actual))
        return OutputCheck(name, 0.0 if equal else float("inf"), 0.0, 0.0, equal or unstable)
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    finite = np.isfinite(ref)
    same_nonfinite = np.array_equal(ref[~finite], act[~finite], equal_nan=True)
    error = np.abs(act[finite] - ref[finite])
    scale = float(np.abs(ref[finite]).max(initial=0.0))
    moved = _moved(ref, noise, finite)
    if not tolerance.fixed:
        unit = unit_roundoff(reference.dtype)
        allowed = tolerance.noise_multiple * (moved or 0.0) + tolerance.rounding_factor * unit * scale
        passed = bool(same_nonfinite and np.all(error <= allowed))
        return OutputCheck(name, float(error.max(initial=0.0)), scale, allowed, passed, moved)
    rtol, atol = tolerance.rtol or 0.0, tolerance.atol or 0.0
    elementwise = atol * max(scale, np.finfo(np.float32).tiny) + rtol * np.abs(ref[finite])
    passed = bool(same_nonfinite and np.all(error <= elementwise))
    return OutputCheck(name, float(error.max(initial=0.0)), scale, atol * scale + rtol * scale, passed, moved)


def _moved(ref: np.ndarray, noise: np.ndarray | None, finite: np.ndarray) -> float | None:
    """How far the noise run moved the output (None: no noise run)."""
    if noise is None:
        return None
    if noise.shape != ref.shape:
        return 0.0
    moved = np.abs(noise.astype(np.float64)[finite] - ref[finite])
    return float(np.nan_to_num(moved, nan=0.0, posinf=0.0).max(initial=0.0))


def perturbed_weights(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """The noise run's weights: each perturbed by a relative ``u·√fan_in`` (random sign and size).

    A sum of ``fan_in`` products rounds by about ``u`` of the magnitudes it adds;
    perturbing each weight by ``u·√fan_in`` with random signs moves the sum by
    the same amount. So the noise run is the original with every layer rounded
    once more: what an exact rewrite does to the layers it merges. At least 2u:
    a smaller relative change mostly rounds back to the weight itself (a 1x1
    conv on one channel would not move at all).
    """
    graph = model.graph
    inputs = {i.name for i in graph.input}
    fan_ins = _fan_ins(graph)
    rng = np.random.default_rng(seed + 1)
    perturbed = {}
    for tensor in graph.initializer:
        if tensor.name not in fan_ins or tensor.name in inputs:
            continue
        array = numpy_helper.to_array(tensor)
        if array.dtype not in UNIT_ROUNDOFF or array.size == 0:
            continue
        relative = UNIT_ROUNDOFF[array.dtype] * max(np.sqrt(fan_ins[tensor.name]), 2.0)
        # a relative change of ±[relative/2, relative): never less than u, so every weight moves by an ulp
        factor = rng.random(array.shape, dtype=np.float32) * np.float32(relative / 2) + np.float32(relative / 2)
        factor *= rng.choice(np.array([-1, 1], np.float32), array.shape)
        factor += np.float32(1)
        perturbed[tensor.name] = (array * factor).astype(array.dtype, copy=False)
    return perturbed


def _fan_ins(graph: onnx.GraphProto) -> dict[str, int]:
    """Initializers to perturb, with the number of products each weight enters one sum with."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    fan_ins: dict[str, int] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            shape = shapes.get(name)
            if shape is None:
                continue
            if node.op_type in _LAYER_OPS:
                fan_in = _fan_in(node, position, shape)
            elif node.op_type in _ELEMENTWISE_OPS and int(np.prod(shape)) >= 2:
                fan_in = 1
            else:
                fan_ins[name] = 0  # also read by something else: leave it alone
                continue
            fan_ins[name] = min(fan_ins.get(name, fan_in), fan_in) if fan_ins.get(name) != 0 else 0
    return {name: f for name, f in fan_ins.items() if f > 0}


def _fan_in(node: onnx.NodeProto, position: int, shape: tuple[int, ...]) -> int:
    if node.op_type in ("Conv", "ConvTranspose") and position == 1 and len(shape) >= 2:
        return int(np.prod(shape[1:]))
    if node.op_type == "Gemm" and position == 1 and len(shape) == 2:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return shape[1] if trans_b else shape[0]
    if node.op_type == "MatMul" and len(shape) >= 2:
        return shape[-2] if position == 1 else shape[-1]
    return 1


def verify_at(original: onnx.ModelProto, optimized: onnx.ModelProto, *,
              input_shapes: dict[str, tuple[int, ...]] | None = None,
              tolerance: Tolerance = DEFAULT, seed: int = 0,
              local: bool = True, feeds: feeding.Inputs | None = None) -> Verification:
    """Both models on ``feeds`` (a directory of .pb/.npy files, or name → value) or seeded random inputs,
    at one input size. ``local=False`` checks the outputs only: for two graphs whose tensor names do
    not correspond (a training graph and its author's deploy graph).

    Runs what is needed and no more: the original (exposing the tensors the local
    checks read and compare) and the optimized model with its local copies, always;
    the original's magnitude twins only for the rewritten tensors that fail against
    the rewritten layer's magnitudes alone; the noise run only when an output
    differs by more than its own rounding.
    """
    with _Sessions(original, optimized, local) as sessions:
        result, _ = _verify_once(sessions, input_shapes or {}, feeds, tolerance, seed)
        return _with_uninformative(result, original)


def _verify_once(sessions: _Sessions, input_shapes, given, tolerance: Tolerance, seed,
                 watch: frozenset[str] = frozenset()) -> tuple[Verification, dict[str, tuple]]:
    """One input size, on sessions made once for every size; and the shapes the tensors in ``watch``
    had (those the original computes or takes as inputs)."""
    start = time.perf_counter()
    original, optimized, checks = sessions.original_model, sessions.optimized_model, sessions.checks
    names, feeds, reference = _run_original(sessions, input_shapes, seed, given)
    seen = {n: tuple(v.shape) for n in watch for v in [reference.get(n, feeds.get(n))] if isinstance(v, np.ndarray)}
    broken: list[str] = []  # anchors whose local copies do not even load on their own
    try:
        actual, computed = _run_optimized(sessions, reference, feeds, names)
        unloadable = None
    except _OptimizedFailed as error:  # the local checks still run, on the changed nodes alone
        actual, unloadable = None, error
        computed, broken = _standalone(sessions, {**reference, **feeds})
    results = {a: local_check.compare(a, reference[a], value, magnitude, tolerance)
               for a, (value, magnitude) in computed.items()}
    results.update({a: LocalCheck(a, float("inf"), float("inf"), False) for a in broken})
    failing = [a for a, c in results.items() if not c.passed and c.max_abs_error < float("inf")]
    if failing:  # the original's own rounding may be larger: its branches can cancel in the merge
        for anchor, magnitude in _original_magnitudes(original, checks, failing, reference, feeds).items():
            value, own = computed[anchor]
            results[anchor] = local_check.compare(anchor, reference[anchor], value, own + magnitude, tolerance)
    if unloadable is None:
        outputs, bound = _check_outputs(names, reference, actual, tolerance,
                                        lambda: dict(zip(names, _run(sessions.noise(seed), names, feeds))))
    else:
        outputs, bound = [OutputCheck(n, float("inf"), 0.0, 0.0, False) for n in names], Bound.ROUNDING
    for anchor, result in results.items():
        if not result.passed:
            results[anchor] = replace(result, region=local_check.region(original, checks, anchor))
    locals_ = (*results.values(), *_check_folded(original, optimized, checks, reference, feeds, tolerance))
    passed = all(c.passed for c in outputs) and all(c.passed for c in locals_)
    skipped = sessions.skipped if unloadable is None else (
        f"the optimized model does not run ({unloadable}): its changed nodes were checked on their own")
    return Verification(passed, tuple(outputs), _shapes(feeds), time.perf_counter() - start, locals_,
                        bound, tolerance, skipped), seen


class _Sessions:
    """The onnxruntime sessions of one verification, made when first needed and run at every input
    size: serializing a big model and loading it cost more than running it. The original (exposing
    the tensors the local checks read), the optimized model with its local copies, the noise run."""

    def __init__(self, original: onnx.ModelProto, optimized: onnx.ModelProto, local: bool):
        self.original_model, self.optimized_model = original, optimized
        self.checks = local_check.plan(original, optimized) if local else local_check.Plan()
        self.skipped = None if local else "not asked for"
        self.outputs = [o.name for o in original.graph.output]
        self._original = self._optimized = self._noise = None

    def __enter__(self) -> _Sessions:
        self.stack = ExitStack()
        self.tmp_dir = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxrep-verify-"))
        return self

    def __exit__(self, *exc) -> None:
        self._original = self._optimized = self._noise = None
        self.stack.close()

    def original(self) -> tuple[ort.InferenceSession, list[str]]:
        """The original's session and the intermediate tensors it exposes."""
        if self._original is None:
            exposed = [n for n in self.checks.needed if n not in set(self.outputs)]
            try:
                with _exposing(self.original_model, exposed):
                    self.source = self.stack.enter_context(_source(self.original_model, self.tmp_dir, "original"))
                session = _session(self.source)
            except UnsupportedModel as error:  # an intermediate onnxruntime will not expose (a sequence)
                exposed = []
                self.skipped = f"onnxruntime cannot expose the original's intermediate tensors ({error})"
                self.source = self.stack.enter_context(_source(self.original_model, self.tmp_dir, "plain"))
                session = _session(self.source)
            self._original = (session, exposed)
        return self._original

    def optimized(self, reference: dict) -> tuple[ort.InferenceSession, Callable, list]:
        """The optimized model's session with the local copies, what makes their feeds from the
        original's values, and the anchors they check (none when the copies would not load)."""
        if self._optimized is None:
            try:
                with local_check.augmented(self.optimized_model, self.checks, reference) as (feeds, compared), \
                        _source(self.optimized_model, self.tmp_dir, "optimized") as source:
                    self._optimized = (_session(source), feeds, compared)
            except UnsupportedModel as error:
                self.skipped = f"the local copies would not load ({error})"
                try:
                    with _source(self.optimized_model, self.tmp_dir, "optimized") as source:
                        self._optimized = (_session(source), lambda values: {}, [])
                except Exception as failure:
                    raise _OptimizedFailed(_first_line(failure)) from None
        return self._optimized

    def noise(self, seed: int) -> ort.InferenceSession:
        """The original with every layer's weights perturbed by about one rounding."""
        import onnxruntime as ort

        if self._noise is None:
            options = _options()
            self.perturbed = {name: ort.OrtValue.ortvalue_from_numpy(array)
                              for name, array in perturbed_weights(self.original_model, seed).items()}
            for name, value in self.perturbed.items():
                options.add_initializer(name, value)
            self._noise = _session(self.source, options)
        return self._noise


def _check_outputs(names, reference, actual, tolerance: Tolerance, noise_run) -> tuple[list[OutputCheck], Bound]:
    """Each output within its own rounding, else (the noise run made only then) within the noise
    floor; or within rtol/atol when given. A sequence's elements are outputs of their own: name[i]."""
    leaves = list(feeding.leaves((n, reference[n], a) for n, a in zip(names, actual)))
    outputs = [compare(n, r, a, None, tolerance) for n, r, a in leaves]
    if tolerance.fixed:
        return outputs, Bound.FIXED
    if all(o.passed for o in outputs):
        return outputs, Bound.ROUNDING
    noise = noise_run()
    moved = {n: m for n, _, m in feeding.leaves((n, reference[n], noise[n]) for n in names)}
    return [compare(n, r, a, moved.get(n), tolerance) for n, r, a in leaves], Bound.NOISE_FLOOR


def verify(original: onnx.ModelProto, optimized: onnx.ModelProto, *,
           input_shapes: dict[str, tuple[int, ...]] | None = None,
           tolerance: Tolerance = DEFAULT, seed: int = 0,
           local: bool = True, feeds: feeding.Inputs | None = None) -> Verification:
    """:func:`verify_at` at every size :func:`onnxrep.verify.sizes.check_sizes` asks for, on one set of
    sessions: the given (or default) shapes; for a model with dynamic dims and random inputs (given
    shapes or not), a second, odd size where the original runs there; where some rewritten conv's taps
    met no data at those and no shapes were given, a larger size of the model's family."""
    with _Sessions(original, optimized, local) as sessions:
        def run(shapes):
            first = shapes is None
            result, seen = _verify_once(sessions, (input_shapes or {}) if first else shapes,
                                        feeds if first else None, tolerance, seed, watch)
            return result, result.input_shapes, seen

        watch = frozenset(w.input for w in sizing.windows(optimized, sessions.checks.changed))
        checked = sizing.check_sizes(original, optimized, sessions.checks.changed, run,
                                     given_shapes=bool(input_shapes), given_inputs=feeds is not None)
    results = [r for r, _, _ in checked.runs]
    first = results[0]
    combined = replace(
        first, passed=all(r.passed for r in results),
        outputs=tuple(replace(o, size=i) for i, r in enumerate(results) for o in r.outputs),
        local=tuple(replace(c, size=i) for i, r in enumerate(results) for c in r.local),
        seconds=sum(r.seconds for r in results),
        bound=next((r.bound for r in results if r.bound is Bound.NOISE_FLOOR), first.bound),
        other_sizes=tuple(r.input_shapes for r in results[1:]),
        local_skipped=next((r.local_skipped for r in results if r.local_skipped), None),
        other_sizes_skipped=checked.skipped, size_notes=tuple(why for _, _, why in checked.runs),
        unexercised=tuple(checked.unexercised))
    return _with_uninformative(combined, original)


#: Ops that select among their inputs' values by rank: near-tied values of an untrained model swap
#: places under any rounding, and what follows them (the kept boxes, the scores) changes by whole values.
SELECTING = ("TopK", "ArgMax", "ArgMin", "NonMaxSuppression")


def _with_uninformative(result: Verification, original: onnx.ModelProto) -> Verification:
    """The result with the outputs whose end-to-end check cannot tell (see OutputCheck.uninformative)."""
    names = list(dict.fromkeys(o.name for o in result.outputs if o.uninformative))
    if not names:
        return result
    why = []
    for name in names:
        found = _selecting_ancestors(original.graph, name.split("[")[0])
        why.append((name, f"after {', '.join(found)}, which pick{'s' if len(found) == 1 else ''} among "
                          "near-tied values" if found else "the model amplifies one rounding to the output's size"))
    return replace(result, uninformative=tuple(why))


def _selecting_ancestors(graph: onnx.GraphProto, name: str) -> list[str]:
    """The SELECTING ops an output depends on, by op type."""
    producers = {o: n for n in graph.node for o in n.output if o}
    found, seen, todo = [], set(), [name]
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in SELECTING and node.op_type not in found:
            found.append(node.op_type)
        todo += [i for i in node.input if i]
    return found


def _run_original(sessions: _Sessions, input_shapes, seed, given):
    """The original's outputs and the tensors the local checks need, on the inputs."""
    session, exposed = sessions.original()
    feeds = feeding.inputs_for(session, given, input_shapes, seed)
    outputs = sessions.outputs
    try:
        values = _run(session, outputs + exposed, feeds)
    except Exception as error:
        raise UnsupportedModel(f"onnxruntime cannot run the original model on inputs {_shapes(feeds)}: "
                               f"{_first_line(error)}{feeding.hint(session, given, input_shapes)}") from None
    return outputs, feeds, dict(zip(outputs + exposed, values))


def _original_magnitudes(original, checks, anchors, reference, feeds) -> dict[str, np.ndarray]:
    """The magnitudes the original's own sums rounded, for these rewritten tensors: a small model of
    just the nodes that compute them, fed with the original's values."""
    model, extra, names = local_check.original_magnitudes(original, checks, anchors, {**reference, **feeds})
    try:
        session = _session(model.SerializeToString())
    except UnsupportedModel:  # a region onnxruntime will not run on its own: those checks stay failed
        return {}
    wanted = list(dict.fromkeys(names.values()))
    values = dict(zip(wanted, _run(session, wanted, extra)))
    return {anchor: values[name] for anchor, name in names.items()}


def _standalone(sessions: _Sessions, values: dict) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Each rewritten tensor's local value and magnitude from the changed nodes' copies alone (see
    local_check.standalone): all in one model, or group by group when that does not load; the
    anchors of a group that does not load or run on its own are returned apart (they fail)."""
    checks, optimized = sessions.checks, sessions.optimized_model
    try:
        return _run_standalone(optimized, checks, values, None), []
    except UnsupportedModel:
        pass
    computed, broken = {}, []
    for nodes in local_check.components(checks):
        try:
            computed.update(_run_standalone(optimized, checks, values, nodes))
        except UnsupportedModel:
            broken += [o for n in nodes for o in n.output if o in checks.writes]
    return computed, broken


def _run_standalone(optimized, checks, values, nodes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    model, feeds, compared = local_check.standalone(optimized, checks, values, nodes)
    session = _session(model.SerializeToString())
    wanted = [o for c in compared for o in c[1:]]
    try:
        outputs = dict(zip(wanted, _run(session, wanted, feeds)))
    except Exception as error:
        raise UnsupportedModel(_first_line(error)) from None
    return {anchor: (outputs[local], outputs[magnitude]) for anchor, local, magnitude in compared}


class _OptimizedFailed(Exception):
    """The optimized model does not load or run where the original does: a failed verification."""


def _run_optimized(sessions: _Sessions, reference, feeds, names):
    """The optimized model's outputs, and each rewritten tensor's local value and magnitude."""
    session, local_feeds, compared = sessions.optimized(reference)  # anchors with array values only
    extra_names = [o for c in compared for o in c[1:]]
    try:
        values = _run(session, names + extra_names, {**feeds, **local_feeds(reference)})
    except Exception as error:
        raise _OptimizedFailed(_first_line(error)) from None
    local_values = dict(zip(extra_names, values[len(names):]))
    computed = {anchor: (local_values[out], local_values[mag]) for anchor, out, mag in compared}
    return values[:len(names)], computed


def _check_folded(original: onnx.ModelProto, optimized: onnx.ModelProto, checks, reference, feeds,
                  tolerance: Tolerance) -> list[LocalCheck]:
    """Tensors the original computes and the optimized model holds as constants: equal to the rounding
    of their value, else of the original's computation of it (a sum folded in float64 is within its
    rounding, and so is what is computed from it: ``c − 1`` with c ≈ 1 is judged against |c| + 1)."""
    weights = {t.name: t for t in optimized.graph.initializer if t.name in checks.folded}
    values = {name: numpy_helper.to_array(tensor) for name, tensor in weights.items()
              if isinstance(reference.get(name), np.ndarray)}
    results = {name: local_check.compare(name, reference[name], value, np.abs(reference[name]), tolerance)
               for name, value in values.items()}
    failing = [name for name, c in results.items() if not c.passed and c.max_abs_error < float("inf")]
    if failing:
        for name, magnitude in _original_magnitudes(original, checks, failing, reference, feeds).items():
            results[name] = local_check.compare(name, reference[name], values[name],
                                                np.abs(reference[name]) + magnitude, tolerance)
    return list(results.values())


@contextmanager
def _exposing(model: onnx.ModelProto, names: list[str]) -> Iterator[onnx.ModelProto]:
    """The model with ``names`` appended to its outputs, for a moment (no copy of the weights)."""
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    try:
        yield model
    finally:
        del model.graph.output[len(model.graph.output) - len(names):]


def _shapes(feeds: dict[str, object]) -> dict[str, tuple[int, ...] | str]:
    return {k: tuple(v.shape) if isinstance(v, np.ndarray) else feeding.describe(v) for k, v in feeds.items()}
