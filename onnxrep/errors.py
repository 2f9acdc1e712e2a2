"""Errors a user can cause, each with its own exit code (documented in the README).

Anything else that escapes is a bug in onnxrep: the CLI reports it as one line
with exit code 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations


class OnnxrepError(Exception):
    exit_code = 1


class UsageError(OnnxrepError):
    """An option that does not fit the model (``--input-shape``, ``input_shapes=``): bad usage, like the
    command-line errors click reports."""

    exit_code = 2


class BadInputs(UsageError):
    """Verification inputs (``--inputs DIR``, ``inputs=``) that do not fit the model: bad usage."""


class InputNotFound(OnnxrepError):
    exit_code = 3


class NotOnnx(OnnxrepError):
    exit_code = 4


class CorruptModel(OnnxrepError):
    exit_code = 5


class MissingExternalData(OnnxrepError):
    exit_code = 6


class UnsupportedModel(OnnxrepError):
    exit_code = 7


class OutputError(OnnxrepError):
    exit_code = 8


class VerificationFailed(OnnxrepError):
    exit_code = 9


#: (code, meaning) rows of ``onnxrep optimize`` for the README and ``--help``.
EXIT_CODES = (
    (0, "success: the optimized model was written"),
    (1, "internal error in onnxrep (a bug: please report it, with --debug output)"),
    (2, "bad command-line usage, or --inputs DIR that does not fit the model's inputs"),
    (3, "input file missing, unreadable or not a regular file"),
    (4, "input is not an ONNX model"),
    (5, "input is a truncated or corrupt ONNX model, fails the ONNX checker, or has external data that is "
        "truncated or outside its directory"),
    (6, "an external-data file the model refers to is missing"),
    (7, "unsupported model: opset outside the supported range, or onnxruntime cannot run it (so it cannot "
        "be verified; --no-verify skips the check)"),
    (8, "output path (or --json FILE) unusable: same as the input without --force, missing or read-only "
        "directory, not a regular file, disk full"),
    (9, "verification failed: the optimized model's outputs differ; nothing was written"),
    (10, "batch mode (-o OUTDIR): one or more files failed; the summary says which and why"),
)

#: (code, meaning) rows of ``onnxrep inspect``: it writes no model and runs no verification.
INSPECT_EXIT_CODES = (
    (0, "success: the findings were listed (nothing is written but --json/--html FILE)"),
    (1, "internal error in onnxrep (a bug: please report it)"),
    (2, "bad command-line usage"),
    *((code, text) for code, text in EXIT_CODES if code in (3, 4, 5, 6)),
    (7, "unsupported model: opset outside the supported range"),
    (8, "--json or --html FILE unusable: an input, missing or read-only directory, not a regular file"),
)
