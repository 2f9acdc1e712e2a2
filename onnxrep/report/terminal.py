"""What the CLI needs from a terminal, a pipe or a log: no symbol it cannot encode, no error when the reader
goes away early, and progress on one line only where someone watches."""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import time

import click

#: What the symbols onnxrep prints become on a stream that cannot encode them (a cp1252 console, a Windows pipe).
ASCII = {"→": "->", "×": "x", "…": "...", "−": "-", "÷": "/", "√": "sqrt", "≤": "<=", "≥": ">=", "·": "*",
         "²": "^2", "—": "-", "–": "-", "─": "-", "│": "|"}


def _ascii_fallback(error: UnicodeError):
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "".join(ASCII.get(c, "?") for c in error.object[error.start:error.end]), error.end


codecs.register_error("onnxrep-ascii", _ascii_fallback)


def plain_streams() -> None:
    """Streams that cannot encode onnxrep's arrows and symbols print ASCII for them, never a traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "".join(ASCII).encode(stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper: left as it is
                stream.reconfigure(errors="onnxrep-ascii")



@contextlib.contextmanager
def quiet_on_closed_pipe():
    """A reader that closed stdout (`| head`) ends the run quietly, with exit code 0."""
    try:
        yield
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # nothing more to write: the exit flush must not fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


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
