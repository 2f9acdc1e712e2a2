"""The ``onnxrep`` command line. Errors are one line on stderr with a documented exit code."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback

import click

from onnxrep import __version__, io
from onnxrep.api import optimize, select_rules
from onnxrep.errors import EXIT_CODES, OnnxrepError
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


@main.command(name="optimize", epilog=EXIT_CODE_HELP)
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=True, path_type=str))
@click.argument("output_path", metavar="OUT", type=click.Path(path_type=str))
@click.option("--force", is_flag=True, help="Allow OUT to be the same file as IN.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison.")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True,
              help="Relative tolerance of the verification.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True,
              help="Absolute tolerance, times the largest magnitude of each output.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DxD..",
              help="Shape for an input with dynamic dims during verification (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--only", multiple=True, metavar="RULE", help="Run only this rule (repeatable).")
@click.option("--skip", multiple=True, metavar="RULE", help="Do not run this rule (repeatable).")
@click.option("--external-data", is_flag=True,
              help="Store weights in OUT.data (automatic above 2 GB).")
@click.option("--json", "json_path", type=click.Path(path_type=str), help="Also write the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="List every refusal.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def optimize_command(input_path, output_path, force, no_verify, rtol, atol, input_shapes, seed,
                     only, skip, external_data, json_path, quiet, verbose, debug) -> None:
    """Re-parameterize IN and write the verified result to OUT."""
    try:
        rules = select_rules(only, skip)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    shapes = dict(_parse_shape(s) for s in input_shapes)
    try:
        output = io.check_output_path(output_path, input_path, force)
        model, report = optimize(input_path, rules=rules, check=not no_verify,
                                 input_shapes=shapes, rtol=rtol, atol=atol, seed=seed)
        start = time.perf_counter()
        written = io.save_model(model, output, external_data=external_data)
        report.seconds["save"] = time.perf_counter() - start
        report.after = dataclasses.replace(report.after, size_bytes=written)
    except OnnxrepError as error:
        partial = getattr(error, "report", None)
        if partial is not None and not quiet:
            click.echo(partial.format(verbose), err=True)
        click.echo(f"onnxrep: error: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:  # a bug: one line, not a traceback, unless asked
        if debug:
            traceback.print_exc()
        click.echo(f"onnxrep: internal error: {type(error).__name__}: {error} "
                   "(please report it; --debug shows the traceback)", err=True)
        sys.exit(1)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    if not quiet:
        click.echo(report.format(verbose))
        click.echo(f"wrote {output}")



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
