"""The ``onnxrep`` command line. Errors are one line on stderr with a documented exit code."""

from __future__ import annotations

import contextlib
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
from typing import TYPE_CHECKING

import click

from onnxrep import __version__
from onnxrep.errors import EXIT_CODES, INSPECT_EXIT_CODES, OnnxrepError, OutputError, UnsupportedModel
from onnxrep.io import header as inputs
from onnxrep.report import terminal

if TYPE_CHECKING:
    from onnxrep.options import Options
    from onnxrep.report.report import Report

# onnx, onnxruntime and the rules are imported by the commands that use them: `--help` takes 0.1 s, not 1 s.

def _exit_code_help(codes) -> str:
    return "\b\nExit codes:\n" + "\n".join(f"  {code:>2}  {text}" for code, text in codes)


EXIT_CODE_HELP, INSPECT_EXIT_CODE_HELP = _exit_code_help(EXIT_CODES), _exit_code_help(INSPECT_EXIT_CODES)
SHAPE_FORMAT = "expected NAME:DxD.., e.g. input:1x3x224x224"


def _parse_shape(value: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = value.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = None
    if not sep or not name or shape is None:
        raise click.UsageError(f"--input-shape {value}: {SHAPE_FORMAT}")
    problem = inputs.shape_problem(name, shape, {})
    if problem and "every dim" in problem:  # a 0 or a negative size: named, not merely "expected ..."
        raise click.UsageError(f"--input-shape {problem}")
    return name, shape


def _input_shapes(ctx, param, values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The --input-shape values as {input name: shape} (a click callback)."""
    shapes = tuple(_parse_shape(v) for v in values)
    names = [name for name, _ in shapes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise click.UsageError(f"--input-shape {', '.join(twice)} given more than once")
    return dict(shapes)


def _check_input_shapes(shapes, input_paths) -> None:
    """Before any work: every --input-shape names an input of every model, with its rank and static dims."""
    for path in input_paths if shapes else ():
        model_inputs = inputs.graph_inputs(path)
        if model_inputs is None:
            continue  # not readable as a model: loading it says why, with its own exit code
        problems = [p for p in (inputs.shape_problem(n, s, model_inputs) for n, s in shapes.items()) if p]
        if problems:
            where = f"{path}: " if len(input_paths) > 1 else ""
            raise click.UsageError(f"{where}--input-shape " + "; ".join(problems))


def _a_number(ctx, param, value: float | None) -> float | None:
    """A click callback: FloatRange lets NaN through (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value} is not a number ≥ 0")
    return value


@contextlib.contextmanager
def _usage_errors_on_one_line():
    """A usage error is one ``onnxrep: error:`` line with exit code 2, like every other bad input (click
    would print a Usage/Try/Error block of four)."""
    try:
        yield
    except click.UsageError as error:
        if isinstance(error, getattr(click.exceptions, "NoArgsIsHelpError", ())):
            raise  # `onnxrep` alone: the help, as click shows it
        message = " ".join(error.format_message().split())
        if message[:1].isupper() and message[1:2].islower():
            message = message[0].lower() + message[1:]  # click's "Invalid value for ..." reads as ours do
        click.echo(f"onnxrep: error: {message}", err=True)
        raise SystemExit(error.exit_code) from None


class Main(click.Group):
    """The streams set up first; a reader that closed our stdout (``| head``) ends the run quietly, exit 0."""

    def main(self, *args, **kwargs):
        terminal.plain_streams()
        return super().main(*args, **kwargs)

    def make_context(self, *args, **kwargs):  # where --help and --version print
        with terminal.quiet_on_closed_pipe(), _usage_errors_on_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):  # the command's own parsing too
        with terminal.quiet_on_closed_pipe(), _usage_errors_on_one_line():
            return super().invoke(ctx)


@click.group(cls=Main, epilog="Each command's --help lists its options and exit codes.")
@click.version_option(__version__, prog_name="onnxrep")
def main() -> None:
    """Structural re-parameterization of ONNX models: training-time branches → one Conv."""


@dataclass(frozen=True)
class Job:
    """One file to optimize, with everything a worker process needs (picklable)."""

    input_path: str
    output_path: str
    options: Options
    force: bool = False
    external_data: bool = False
    debug: bool = False
    progress: bool = False


@dataclass
class Outcome:
    job: Job
    code: int
    error: str | None
    report: Report | None


def run_job(job: Job) -> Outcome:
    """Optimize one file; every failure becomes an exit code and one line, never an exception."""
    progress = terminal.Progress() if job.progress else None
    try:
        return _run_job(job, progress)
    finally:
        if progress is not None:
            progress.close()


def _run_job(job: Job, progress) -> Outcome:
    from onnxrep.api import optimize
    from onnxrep.io import files as io

    try:
        output = io.check_output_path(job.output_path, job.input_path, job.force)
        model, report = optimize(job.input_path, job.options, progress=progress)
        if progress is not None:
            progress("save")
        start = time.perf_counter()
        written = io.save_model(model, output, external_data=job.external_data)
        report.seconds["save"] = time.perf_counter() - start
        report.after = dataclasses.replace(report.after, size_bytes=written)
        if job.debug:
            for trace in report.rule_errors:
                click.echo(trace, err=True)
        return Outcome(job, 0, None, report)
    except OnnxrepError as error:
        message = f"onnxrep: error: {error}"
        if isinstance(error, UnsupportedModel) and job.options.verify and str(error).startswith(
                ("onnxruntime cannot run", "cannot invent")):
            message += "; cannot verify the result, nothing written (--no-verify skips the check)"
        return Outcome(job, error.exit_code, message, getattr(error, "report", None))
    except Exception as error:  # a bug: one line, not a traceback, unless asked
        if job.debug:
            traceback.print_exc()
        return Outcome(job, 1, f"onnxrep: internal error: {type(error).__name__}: {error} "
                               "(please report it; --debug shows the traceback)", None)


def _check_json_path(json_path, inputs, outputs=(), option="--json") -> None:
    """Before any work: --json FILE must be writable, and neither an input (it would be overwritten) nor OUT."""
    if not json_path:
        return
    from onnxrep.io import files as io

    try:
        taken = [p for p in (*inputs, *outputs) if io.same_path(json_path, p)]
        if taken:
            raise OutputError(f"{json_path}: is also {'an input' if taken[0] in inputs else 'an output'}")
        io.check_output_path(json_path, None, force=False)
    except OnnxrepError as error:
        click.echo(f"onnxrep: error: {option} {error}", err=True)
        sys.exit(error.exit_code)


def _batch_pairs(paths: tuple[str, ...], output_dir: Path, recursive: bool) -> list[tuple[Path, Path]]:
    """(input, output) per file: a file given goes to OUTDIR/its name, a file found in a directory D to
    OUTDIR/its path below D. Two inputs that would be written to one output are a usage error."""
    from onnxrep.io import files as io

    pairs, taken = [], {}
    for path in map(Path, paths):
        if path.is_dir():
            found = path.rglob("*.onnx") if recursive else path.glob("*.onnx")
            pairs += [(f, output_dir / f.relative_to(path)) for f in sorted(found)
                      if f.is_file() and not _below(f, output_dir)]  # not the outputs of an earlier run
        else:
            pairs.append((path, output_dir / path.name))
    unique = []
    for source, target in pairs:
        key = os.path.normcase(os.path.abspath(target))
        if key in taken:
            if io.same_path(taken[key], source):
                continue  # the same file named twice
            raise click.UsageError(f"{taken[key]} and {source} would both be written to {target}; rename one, "
                                   "or pass their common directory with -r (paths below it are kept)")
        taken[key] = source
        unique.append((source, target))
    return unique


def _below(path: Path, directory: Path) -> bool:
    return Path(os.path.abspath(directory)) in Path(os.path.abspath(path)).parents


@main.command(name="optimize", epilog=EXIT_CODE_HELP)
@click.argument("paths", metavar="IN OUT | IN... -o OUTDIR", nargs=-1, required=True,
                type=click.Path(path_type=str))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=str),
              help="Batch mode: optimize every IN (files, or directories of *.onnx) into OUTDIR.")
@click.option("-r", "--recursive", is_flag=True,
              help="Batch mode: also look for *.onnx below the directory INs, keeping their paths under OUTDIR.")
@click.option("-j", "--jobs", type=click.IntRange(1), help="Batch mode: worker processes (default: CPUs).")
@click.option("--force", is_flag=True, help="Allow OUT to be the same file as IN.")
@click.option("--no-verify", "verify", flag_value=False, default=True, help="Skip the onnxruntime comparison.")
@click.option("--rtol", type=click.FloatRange(min=0), callback=_a_number,
              help="Relative tolerance of the outputs, instead of the model's measured noise floor.")
@click.option("--atol", type=click.FloatRange(min=0), callback=_a_number,
              help="Absolute tolerance of the outputs, times each output's largest magnitude "
                   "(instead of the noise floor).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DxD..", callback=_input_shapes,
              help="Shape for an input with dynamic dims during verification (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--inputs", metavar="DIR", type=click.Path(path_type=str),
              help="Verify on these inputs instead of random ones: .pb TensorProtos (matched to inputs by "
                   "name, else in order: input_0.pb, input_1.pb, ...) or NAME.npy files.")
@click.option("--only", multiple=True, metavar="RULE", help="Run only this rule (repeatable).")
@click.option("--skip", multiple=True, metavar="RULE", help="Do not run this rule (repeatable).")
@click.option("--external-data", is_flag=True,
              help="Store weights in OUT.data (automatic above 2 GB).")
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Also write the report as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=str),
              help="Also write a page drawing each rewritten block before and after (self-contained HTML).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="List every rewrite and every refusal.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def optimize_command(paths, output_dir, recursive, jobs, json_path, html_path, quiet, verbose,
                     **params) -> None:
    """Re-parameterize IN and write the verified result to OUT (or many INs into OUTDIR)."""
    from onnxrep.api import select_rules
    from onnxrep.options import Options

    options = Options.take(params)  # the rest of params: force, external_data, debug (Job's fields)
    try:
        select_rules(options.only, options.skip)
    except ValueError as error:
        raise click.UsageError(f"--only/--skip: {error}") from None
    if output_dir is not None:
        if html_path:
            raise click.UsageError("--html draws one model: give IN and OUT, or run inspect --html on each")
        _run_batch(paths, Path(output_dir), recursive, jobs, options, params, json_path, quiet)
        return
    if len(paths) != 2:
        raise click.UsageError("give IN and OUT, or several INs with -o OUTDIR")
    if recursive:
        raise click.UsageError("-r applies to batch mode: give -o OUTDIR")
    _run_single(*paths, options, params, json_path, html_path, quiet, verbose)


def _run_single(input_path, output_path, options: Options, params, json_path, html_path, quiet, verbose) -> None:
    _check_input_shapes(options.input_shapes, [input_path])
    _check_json_path(json_path, [input_path], [output_path])
    _check_json_path(html_path, [input_path], [output_path, *([json_path] if json_path else [])], "--html")
    show = not quiet and sys.stderr.isatty()  # plain output, no control codes, in pipes and logs
    outcome = run_job(Job(input_path, output_path, options, progress=show, **params))
    if outcome.report is not None and not quiet and (outcome.code == 0 or verbose or outcome.code == 9):
        click.echo(outcome.report.format(verbose), err=outcome.code != 0)
    if outcome.code:
        click.echo(outcome.error, err=True)
        sys.exit(outcome.code)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(outcome.report.to_dict(), f, indent=2)
    if html_path:
        from onnxrep.io import files as io

        _write_html(html_path, input_path, io.load_model(output_path), outcome.report)
    if not quiet:
        click.echo(f"wrote {output_path}")


def _run_batch(paths, output_dir: Path, recursive, jobs, options: Options, params, json_path, quiet) -> None:
    pairs = _batch_pairs(paths, output_dir, recursive)
    if not pairs:
        raise click.UsageError("no .onnx files among the inputs" + ("" if recursive else " (-r looks below)"))
    _check_input_shapes(options.input_shapes, [str(source) for source, _ in pairs])
    batch = [Job(str(source), str(target), options, **params) for source, target in pairs]
    _check_json_path(json_path, [j.input_path for j in batch], [j.output_path for j in batch])
    try:
        for directory in sorted({target.parent for _, target in pairs}):
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        click.echo(f"onnxrep: error: {error.filename}: cannot create the directory: {error.strerror}", err=True)
        sys.exit(8)
    workers = min(jobs or os.cpu_count() or 1, len(batch))
    if workers == 1:
        outcomes = [run_job(job) for job in batch]
    else:  # spawn: onnxruntime's threads do not survive a fork
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(run_job, batch))
    _print_summary(outcomes, output_dir, quiet)
    if json_path:
        with open(json_path, "w") as f:
            json.dump([{"input": o.job.input_path, "output": o.job.output_path, "exit_code": o.code,
                        "error": _reason(o)[1] if o.code else None,
                        "report": o.report.to_dict() if o.report else None}
                       for o in outcomes], f, indent=2)
    if any(o.code for o in outcomes):
        sys.exit(10)


def _print_summary(outcomes: list[Outcome], output_dir: Path, quiet: bool) -> None:
    """A table of every file and a count, all on stdout; with -q, only the failures, on stderr."""
    failed = [o for o in outcomes if o.code]
    if quiet:
        for o in failed:
            prefix, reason = _reason(o)
            click.echo(f"{prefix}{o.job.input_path}: {reason}", err=True)
        if failed:
            click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} optimized into {output_dir}", err=True)
        return
    rows = [("file", "nodes", "max error", "result")]
    for o in outcomes:
        r = o.report
        nodes = f"{r.before.nodes} → {r.after.nodes}" if r and r.after else "-"
        error = f"{r.verification.max_abs_error:.2g}" if r and r.verification else "-"
        rows.append((o.job.input_path, nodes, error, "ok" if o.code == 0 else f"exit {o.code}: {_reason(o)[1]}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo(("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3]).rstrip())
    click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} optimized into {output_dir}")


def _reason(outcome: Outcome) -> tuple[str, str]:
    """A failed file's error line as (``onnxrep: error: ``, the reason), the reason without the file's name:
    the batch summary names the file once."""
    prefix, sep, reason = outcome.error.partition("error: ")
    return prefix + sep, reason.removeprefix(f"{outcome.job.input_path}: ")


@main.command(name="inspect", epilog=INSPECT_EXIT_CODE_HELP)
@click.argument("input_path", metavar="IN", type=click.Path(path_type=str))
@click.option("--only", multiple=True, metavar="RULE", help="Consider only this rule (repeatable).")
@click.option("--skip", multiple=True, metavar="RULE", help="Do not consider this rule (repeatable).")
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Also write the findings as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=str),
              help="Also write a page drawing each block that would be rewritten, before and after.")
@click.option("-v", "--verbose", is_flag=True, help="List every rewrite and every refusal, housekeeping too.")
def inspect_command(input_path, only, skip, json_path, html_path, verbose) -> None:
    """List what would be re-parameterized in IN, and what would not and why. Writes nothing."""
    from onnxrep.api import optimize, select_rules
    from onnxrep.report.report import refusal_lines

    try:
        rules = select_rules(only, skip)
    except ValueError as error:
        raise click.UsageError(f"--only/--skip: {error}") from None
    _check_json_path(json_path, [input_path])
    _check_json_path(html_path, [input_path], [json_path] if json_path else [], "--html")
    try:
        optimized, report = optimize(input_path, rules=rules, verify=False)
    except OnnxrepError as error:
        click.echo(f"onnxrep: error: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:  # a bug: one line, not a traceback (optimize --no-verify --debug shows it)
        click.echo(f"onnxrep: internal error: {type(error).__name__}: {error} (please report it; "
                   "'onnxrep optimize IN OUT --no-verify --debug' shows the traceback)", err=True)
        sys.exit(1)
    click.echo(f"{input_path}: {report.before.nodes} nodes → {report.after.nodes} after re-parameterization")
    for line in report.fired_lines():
        click.echo(line)
    click.echo(f"would rewrite ({len(report.applied)}):")
    for line in report.rewrite_lines(verbose):
        click.echo(line)
    by_reason = ", by reason; -v lists each" if len(report.refusals) > 1 and not verbose else ""
    click.echo(f"would leave as they are ({len(report.refusals)}){by_reason}:")
    for line in refusal_lines(report.refusals, verbose) + report.hints():
        click.echo(line)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rewrites": [{"rule": r.rule, "tensor": r.anchor, "node": r.node} for r in report.applied],
                       **{k: v for k, v in report.to_dict().items() if k in ("before", "after", "refusals")}},
                      f, indent=2)
    if html_path:
        _write_html(html_path, input_path, optimized, report, verified=False)


def _write_html(path: str, input_path: str, optimized, report, verified: bool = True) -> None:
    from onnxrep.io import files as io
    from onnxrep.report import html

    page = html.render(io.load_model(input_path), optimized, report, os.path.basename(input_path), verified)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as error:
        click.echo(f"onnxrep: error: --html {path}: cannot write: {error.strerror}", err=True)
        sys.exit(8)


@main.command(name="rules")
def rules_command() -> None:
    """List the rules, in the order they run."""
    from onnxrep.rules import DEFAULT_RULES

    width = max(len(r.name) for r in DEFAULT_RULES)
    for rule in DEFAULT_RULES:
        click.echo(f"{rule.name:<{width}}  {rule.summary}")
