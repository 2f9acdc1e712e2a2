"""The ``onnxrep`` command line. Errors are one line on stderr with a documented exit code."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from onnxrep import __version__, io
from onnxrep.api import optimize, select_rules
from onnxrep.errors import EXIT_CODES, OnnxrepError, OutputError, UnsupportedModel
from onnxrep.report import Report
from onnxrep.rules import DEFAULT_RULES
from onnxrep.verify import DEFAULT_ATOL, DEFAULT_RTOL

EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)


def _parse_shape(value: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = value.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
        if not sep or not name or any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected NAME:DxDxD, e.g. input:1x3x224x224") from None
    return name, shape


@click.group(epilog=EXIT_CODE_HELP)
@click.version_option(__version__, prog_name="onnxrep")
def main() -> None:
    """Structural re-parameterization of ONNX models: training-time branches → one Conv."""


@dataclass(frozen=True)
class Job:
    """One file to optimize, with everything a worker process needs (picklable)."""

    input_path: str
    output_path: str
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    force: bool = False
    check: bool = True
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    seed: int = 0
    external_data: bool = False
    debug: bool = False
    progress: bool = False
    inputs: str | None = None


@dataclass
class Outcome:
    job: Job
    code: int
    error: str | None
    report: Report | None


class Progress:
    """Steps and their times on one terminal line; only used when stderr is a terminal."""

    def __init__(self) -> None:
        self.start = self.step_start = time.perf_counter()
        self.name = ""

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        done = f"{self.name} {now - self.step_start:.1f}s, " if self.name else ""
        self.line = getattr(self, "line", "") + done
        self.name, self.step_start = name, now
        click.echo(f"\r\x1b[2K{self.line}{name}…", nl=False, err=True)

    def close(self) -> None:
        if self.name:
            click.echo("\r\x1b[2K", nl=False, err=True)


def run_job(job: Job) -> Outcome:
    """Optimize one file; every failure becomes an exit code and one line, never an exception."""
    progress = Progress() if job.progress else None
    try:
        return _run_job(job, progress)
    finally:
        if progress is not None:
            progress.close()


def _run_job(job: Job, progress) -> Outcome:
    try:
        output = io.check_output_path(job.output_path, job.input_path, job.force)
        model, report = optimize(job.input_path, rules=select_rules(job.only, job.skip), check=job.check,
                                 input_shapes=dict(job.input_shapes), rtol=job.rtol, atol=job.atol,
                                 seed=job.seed, progress=progress, inputs=job.inputs)
        if progress is not None:
            progress("save")
        start = time.perf_counter()
        written = io.save_model(model, output, external_data=job.external_data)
        report.seconds["save"] = time.perf_counter() - start
        report.after = dataclasses.replace(report.after, size_bytes=written)
        return Outcome(job, 0, None, report)
    except OnnxrepError as error:
        message = f"onnxrep: error: {error}"
        if isinstance(error, UnsupportedModel) and job.check and str(error).startswith(
                ("onnxruntime cannot run", "cannot invent")):
            message += "; cannot verify the result, nothing written (--no-verify skips the check)"
        return Outcome(job, error.exit_code, message, getattr(error, "report", None))
    except Exception as error:  # a bug: one line, not a traceback, unless asked
        if job.debug:
            traceback.print_exc()
        return Outcome(job, 1, f"onnxrep: internal error: {type(error).__name__}: {error} "
                               "(please report it; --debug shows the traceback)", None)


def _check_json_path(json_path, inputs, outputs=()) -> None:
    """Before any work: --json FILE must be writable, and neither an input (it would be overwritten) nor OUT."""
    if not json_path:
        return
    try:
        taken = [p for p in (*inputs, *outputs) if io.same_path(json_path, p)]
        if taken:
            raise OutputError(f"{json_path}: is also {'an input' if taken[0] in inputs else 'an output'}")
        io.check_output_path(json_path, None, force=False)
    except OnnxrepError as error:
        click.echo(f"onnxrep: error: --json {error}", err=True)
        sys.exit(error.exit_code)


def _batch_inputs(paths: tuple[str, ...]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.onnx")) if path.is_dir() else [path]
    return files


@main.command(name="optimize", epilog=EXIT_CODE_HELP)
@click.argument("paths", metavar="IN OUT | IN... -o OUTDIR", nargs=-1, required=True,
                type=click.Path(path_type=str))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=str),
              help="Batch mode: optimize every IN (files, or directories of *.onnx) into OUTDIR.")
@click.option("-j", "--jobs", type=click.IntRange(1), help="Batch mode: worker processes (default: CPUs).")
@click.option("--force", is_flag=True, help="Allow OUT to be the same file as IN.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison.")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True,
              help="Relative tolerance of the verification.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True,
              help="Absolute tolerance, times the largest magnitude of each output.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DxD..",
              help="Shape for an input with dynamic dims during verification (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--inputs", "inputs_dir", metavar="DIR", type=click.Path(path_type=str),
              help="Verify on these inputs instead of random ones: .pb TensorProtos (matched to inputs by "
                   "name, else in order: input_0.pb, input_1.pb, ...) or NAME.npy files.")
@click.option("--only", multiple=True, metavar="RULE", help="Run only this rule (repeatable).")
@click.option("--skip", multiple=True, metavar="RULE", help="Do not run this rule (repeatable).")
@click.option("--external-data", is_flag=True,
              help="Store weights in OUT.data (automatic above 2 GB).")
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Also write the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="List every refusal.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def optimize_command(paths, output_dir, jobs, force, no_verify, rtol, atol, input_shapes, seed, inputs_dir,
                     only, skip, external_data, json_path, quiet, verbose, debug) -> None:
    """Re-parameterize IN and write the verified result to OUT (or many INs into OUTDIR)."""
    try:
        select_rules(only, skip)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    options = dict(only=tuple(only), skip=tuple(skip), force=force, check=not no_verify,
                   input_shapes=tuple(_parse_shape(s) for s in input_shapes), rtol=rtol, atol=atol,
                   seed=seed, external_data=external_data, debug=debug, inputs=inputs_dir)
    if output_dir is None:
        if len(paths) != 2:
            raise click.UsageError("give IN and OUT, or several INs with -o OUTDIR")
        _check_json_path(json_path, paths[:1], paths[1:])
        show = not quiet and sys.stderr.isatty()  # plain output, no control codes, in pipes and logs
        outcome = run_job(Job(paths[0], paths[1], progress=show, **options))
        if outcome.report is not None and not quiet and (outcome.code == 0 or verbose or outcome.code == 9):
            click.echo(outcome.report.format(verbose), err=outcome.code != 0)
        if outcome.code:
            click.echo(outcome.error, err=True)
            sys.exit(outcome.code)
        if json_path:
            with open(json_path, "w") as f:
                json.dump(outcome.report.to_dict(), f, indent=2)
        if not quiet:
            click.echo(f"wrote {paths[1]}")
        return
    _run_batch(paths, Path(output_dir), jobs, options, json_path, quiet)


def _run_batch(paths, output_dir: Path, jobs, options, json_path, quiet) -> None:
    inputs = _batch_inputs(paths)
    if not inputs:
        raise click.UsageError("no .onnx files among the inputs")
    if not output_dir.is_dir():
        click.echo(f"onnxrep: error: {output_dir}: directory does not exist", err=True)
        sys.exit(8)
    batch = [Job(str(p), str(output_dir / p.name), **options) for p in inputs]
    _check_json_path(json_path, [j.input_path for j in batch], [j.output_path for j in batch])
    workers = min(jobs or os.cpu_count() or 1, len(batch))
    if workers == 1:
        outcomes = [run_job(job) for job in batch]
    else:  # spawn: onnxruntime's threads do not survive a fork
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(run_job, batch))
    rows = [("file", "nodes", "max error", "result")]
    for o in outcomes:
        r = o.report
        nodes = f"{r.before.nodes} → {r.after.nodes}" if r and r.after else "-"
        error = f"{r.verification.max_abs_error:.2g}" if r and r.verification else "-"
        rows.append((o.job.input_path, nodes, error, "ok" if o.code == 0 else f"exit {o.code}: {o.error}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows if not quiet else ():
        click.echo(("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3]).rstrip())
    for o in outcomes if quiet else ():
        if o.code:
            click.echo(f"{o.job.input_path}: {o.error}", err=True)
    failed = sum(o.code != 0 for o in outcomes)
    if not quiet or failed:
        click.echo(f"{len(outcomes) - failed} of {len(outcomes)} optimized into {output_dir}", err=bool(failed))
    if json_path:
        with open(json_path, "w") as f:
            json.dump([{"input": o.job.input_path, "output": o.job.output_path, "exit_code": o.code,
                        "error": o.error, "report": o.report.to_dict() if o.report else None}
                       for o in outcomes], f, indent=2)
    if failed:
        sys.exit(10)


@main.command(name="inspect", epilog=EXIT_CODE_HELP)
@click.argument("input_path", metavar="IN", type=click.Path(path_type=str))
@click.option("--only", multiple=True, metavar="RULE", help="Consider only this rule (repeatable).")
@click.option("--skip", multiple=True, metavar="RULE", help="Do not consider this rule (repeatable).")
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Also write the findings as JSON.")
def inspect_command(input_path, only, skip, json_path) -> None:
    """List what would be re-parameterized in IN, and what would not and why. Writes nothing."""
    try:
        rules = select_rules(only, skip)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    _check_json_path(json_path, [input_path])
    try:
        _, report = optimize(input_path, rules=rules, check=False)
    except OnnxrepError as error:
        click.echo(f"onnxrep: error: {error}", err=True)
        sys.exit(error.exit_code)
    click.echo(f"{input_path}: {report.before.nodes} nodes → {report.after.nodes} after re-parameterization")
    click.echo(f"would rewrite ({len(report.applied)}):")
    for rule, tensor in report.applied:
        click.echo(f"  {rule}: {tensor}")
    click.echo(f"would leave as they are ({len(report.refusals)}):")
    for finding in report.refusals:
        click.echo(f"  {finding.rule}: {finding.where}: {finding.reason}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rewrites": [{"rule": r, "tensor": t} for r, t in report.applied],
                       **{k: v for k, v in report.to_dict().items() if k in ("before", "after", "refusals")}},
                      f, indent=2)


@main.command(name="rules")
def rules_command() -> None:
    """List the rules, in the order they run."""
    width = max(len(r.name) for r in DEFAULT_RULES)
    for rule in DEFAULT_RULES:
        click.echo(f"{rule.name:<{width}}  {rule.summary}")
