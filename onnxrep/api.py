"""The Python API: ``onnxrep.optimize(model) -> (optimized model, Report)``."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import onnx
import onnx_graphsurgeon as gs

from onnxrep.errors import UsageError, VerificationFailed
from onnxrep.io import files, header
from onnxrep.ir import convert
from onnxrep.options import Options
from onnxrep.report.report import ModelStats, Report
from onnxrep.rewrite import engine
from onnxrep.rewrite.contract import Rule
from onnxrep.rewrite.ledger import Rewrite, RolledBack
from onnxrep.rules import DEFAULT_RULES, RULES_BY_NAME

if TYPE_CHECKING:
    from onnxrep.verify.check import Verification
    from onnxrep.verify.local import LocalCheck

#: At most this many rounds of rollback (each a rewrite and a verification) before a run gives up.
#: A round rolls back every rewrite whose local check failed, or, when the local checks all pass
#: and the outputs still differ, the one rewrite that bisection finds.
MAX_ROLLBACK_ROUNDS = 8


def select_rules(only: Sequence[str] = (), skip: Sequence[str] = ()) -> tuple[Rule, ...]:
    unknown = [n for n in (*only, *skip) if n not in RULES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES_BY_NAME)}")
    return tuple(r for r in DEFAULT_RULES if (not only or r.name in only) and r.name not in skip)


def _rewrite(model: onnx.ModelProto, rules, allowed=None, blocked=frozenset(), *,
             free_model: Callable[[], None] | None = None) -> tuple[onnx.ModelProto, Report]:
    """Rewrite a copy of ``model``. With ``free_model``, the weights are read out of the proto at
    once and ``free_model`` is called to drop the caller's reference to it: the proto's memory
    is then freed before the rewrite starts (a big model's weights are never held twice)."""
    graph = gs.import_onnx(model)
    overridable = convert.overridable_initializers(model)
    original = model
    if free_model is not None:
        convert.load_weights(graph)
        original = convert.skeleton(model)
        del model
        free_model()
    ledger = engine.rewrite_graph(graph, rules, overridable, allowed, blocked)
    return convert.export(graph, original), Report.of(ledger)


def optimize(model: onnx.ModelProto | gs.Graph | str | os.PathLike, options: Options | None = None, *,
             rules: Sequence[Rule] | None = None,
             progress: Callable[[str], None] | None = None,
             **fields) -> tuple[onnx.ModelProto, Report]:
    """Re-parameterize ``model`` (a ModelProto, a graphsurgeon Graph or a path) and verify it.

    ``options`` (:class:`onnxrep.options.Options`), or its fields as keyword arguments
    (``verify=False``, ``input_shapes={"x": (1, 3, 224, 224)}``, ``rtol=``, ``atol=``, ``seed=``,
    ``inputs=``, ``only=``, ``skip=``), say what to do; ``rules`` replaces the rules ``only``/``skip``
    select (a tuple of :class:`onnxrep.rules.Rule`).

    Verification (:mod:`onnxrep.verify`) checks every rewrite locally and the
    outputs against the model's own noise floor (``rtol``/``atol`` replace the
    latter with fixed tolerances). Rewrites whose local check fails are rolled
    back (``report.dropped`` names them); if the local checks pass and the
    outputs still differ, bisection over the applied rewrites finds the one to
    roll back. The best model that verifies is returned. Raises
    :class:`onnxrep.errors.VerificationFailed` (with ``.report``) only when
    nothing can be salvaged. The input ModelProto is not modified.
    ``progress`` is called with the name of each long step as it starts.
    ``inputs`` (input name → array, or a directory of .pb/.npy tensors) replaces the random
    verification inputs.
    """
    options = dataclasses.replace(options or Options(), **fields)
    if rules is None:
        rules = select_rules(options.only, options.skip)
    step = progress or (lambda name: None)
    timings = {}
    start = time.perf_counter()
    path = None
    if isinstance(model, gs.Graph):
        model = gs.export_onnx(model, do_type_check=False)
    if isinstance(model, onnx.ModelProto):
        before = ModelStats.of(model)
    else:
        path = model
        step("load")
        model = files.load_model(path)
        timings["load"] = time.perf_counter() - start
        before = ModelStats.of(model, _size_on_disk(path, model))
    _check_input_shapes(options.input_shapes, model)

    start = time.perf_counter()
    step("rewrite")
    if path is None:
        optimized, report = _rewrite(model, rules)
    else:
        # Our own copy, read from the file: freed during the rewrite, and read again to verify.
        loaded = [model]
        del model
        optimized, report = _rewrite(loaded[0], rules, free_model=loaded.clear)
    timings["rewrite"] = time.perf_counter() - start

    if options.verify:
        start = time.perf_counter()
        step("verify")
        if path is not None:
            model = files.load_model(path)

        from onnxrep.verify.check import verify  # onnxruntime is loaded only to verify

        def check_model(candidate: onnx.ModelProto) -> Verification:
            return verify(model, candidate, input_shapes=options.input_shapes, tolerance=options.tolerance,
                          seed=options.seed, feeds=options.inputs)

        optimized, report = _verified(model, rules, optimized, report, check_model, step)
        timings["verify"] = time.perf_counter() - start
    report.before, report.after = before, ModelStats.of(optimized)
    report.seconds = timings
    if report.verification is not None and not report.verification.passed:
        error = VerificationFailed(f"verification failed: {_failure(report.verification)}; nothing written")
        error.report = report
        raise error
    return optimized, report


def _check_input_shapes(shapes, model: onnx.ModelProto) -> None:
    """Before any work: every input shape names an input of the model, with its rank and static dims (a
    shape that fits nothing would otherwise be ignored, and the verification pass at the default size)."""
    inputs = header.model_inputs(model) if shapes else {}
    problems = [p for p in (header.shape_problem(n, s, inputs) for n, s in shapes.items()) if p]
    if problems:
        raise UsageError("input_shapes: " + "; ".join(problems))


def _verified(model, rules, optimized, report, check_model, step) -> tuple[onnx.ModelProto, Report]:
    """Verify ``optimized``; while it fails, roll back the culprits (at most MAX_ROLLBACK_ROUNDS
    rounds) and rewrite again. The report gets ``dropped`` and the last ``verification``."""
    verification = check_model(optimized)
    dropped: list[RolledBack] = []
    guessed: list[RolledBack] = []  # chosen among several rewrites that could be wrong at one tensor
    for _ in range(MAX_ROLLBACK_ROUNDS):
        if verification.passed or not report.applied:
            break
        culprits, guesses = _culprits(model, rules, report.applied, _keys(dropped), verification, check_model)
        if not culprits:
            break
        for culprit in culprits:
            step(f"roll back {culprit.rule} at {culprit.where}")
        dropped += culprits
        guessed += guesses
        optimized, report = _rewrite(model, rules, blocked=_keys(dropped))
        verification = check_model(optimized)
    for guess in guessed if verification.passed else ():  # undo a guess the model verifies without
        candidate, candidate_report = _rewrite(model, rules, blocked=_keys(d for d in dropped if d is not guess))
        check = check_model(candidate)
        if check.passed:
            step(f"keep {guess.rule} at {guess.where}")
            dropped.remove(guess)
            optimized, report, verification = candidate, candidate_report, check
    report.dropped = dropped
    report.verification = verification
    return optimized, report


def _keys(rolled_back) -> set[tuple[str, str, int]]:
    return {r.rewrite.key for r in rolled_back}


def _failure(v: Verification) -> str:
    """What failed, in a few words."""
    if v.failing_tensors:
        worst = max((c for c in v.local if not c.passed), key=lambda c: c.worst_ratio)
        return (f"the local check of {len(v.failing_tensors)} rewritten tensor(s) failed (worst: "
                f"{worst.tensor}, max abs error {worst.max_abs_error:.3g})")
    bad = [o for o in v.outputs if not o.passed]
    worst = max(bad, key=lambda o: o.max_abs_error) if bad else None
    if worst is None:
        return "outputs differ"
    return (f"output {worst.name} differs by {worst.max_abs_error:.3g}, more than the {worst.allowed:.3g} "
            f"allowed ({v.bound_text})")


def _culprits(model, rules, applied: list[Rewrite], blocked, verification: Verification,
              check_model) -> tuple[list[RolledBack], list[RolledBack]]:
    """The rewrites to roll back, and which of them were guesses.

    Per failing local check, the last rewrite applied at its tensor or inside its region (the
    original's tensors between the ones the rewrites read and it: a rewrite whose anchor vanished,
    a Reshape's, can be wrong at the HardSwish after it), all failing checks at once; a rewrite is
    found by its anchor, else by the tensors it replaced. Where several rewrites could be wrong at
    one tensor (two merge_concat runs on one Concat, a fold and the reshapes around it) the last is
    a guess, undone at the end if the model verifies without it. When the local checks pass, or name
    no rewrite, the one that bisection finds.
    """
    culprits: dict[tuple, tuple[Rewrite, LocalCheck, bool]] = {}
    live = [r for r in applied if r.key not in blocked]
    for check in (c for c in verification.local if not c.passed):
        inside = {check.tensor, *check.region}
        found = [r for r in live if r.anchor in inside] or [r for r in live if r.touches & inside]
        if found:
            culprits.setdefault(found[-1].key, (found[-1], check, len(found) > 1))
    if culprits:
        rolled = {key: RolledBack(rewrite, f"rolled back: the local check of {check.tensor} failed (max abs error "
                                           f"{check.max_abs_error:.3g}, more than float rounding allows)")
                  for key, (rewrite, check, _) in culprits.items()}
        return list(rolled.values()), [rolled[key] for key, (_, _, guess) in culprits.items() if guess]
    culprit = _first_failing(model, rules, applied, blocked, check_model)
    if culprit is None:
        return [], []
    return [RolledBack(culprit, f"rolled back: the outputs differ with this rewrite ({_failure(verification)})")], []


def _first_failing(model, rules, applied: list[Rewrite], blocked, check_model) -> Rewrite | None:
    """The first rewrite, in applied order, whose inclusion makes verification fail (bisection).

    A prefix of the applied rewrites is re-run with only those allowed. None
    when even the empty prefix fails (the failure is not ours to roll back).
    """
    def fails(count: int) -> bool:
        candidate, _ = _rewrite(model, rules, allowed={r.key for r in applied[:count]}, blocked=blocked)
        return not check_model(candidate).passed

    if fails(0):
        return None
    low, high = 0, len(applied)  # fails(low) is False, fails(high) is True
    while high - low > 1:
        middle = (low + high) // 2
        if fails(middle):
            high = middle
        else:
            low = middle
    return applied[high - 1]


def _size_on_disk(path, model: onnx.ModelProto) -> int:
    """The model file's size plus its external data files' (the loaded model no longer names them)."""
    size = os.path.getsize(path)
    if files.weight_bytes(model) <= size:
        return size  # the weights fit in the file itself
    header = onnx.load(path, load_external_data=False)  # small: the weights are elsewhere
    locations = {entry.value for tensor in header.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    return size + sum(os.path.getsize(os.path.join(os.path.dirname(path), loc)) for loc in locations)

