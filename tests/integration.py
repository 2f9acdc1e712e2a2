"""What the integration tests need beyond the `test` extra: onnxsim, onnxslim and OpenVINO (the
`integration` extra) and Debian's chromium and poppler-utils (pdftotext). A test that needs one is skipped
where it is missing on a developer machine, and fails where CI is set: CI (.ci/run) installs them all, so
there none of these tests may skip."""

from __future__ import annotations

import importlib
import os
import shutil

import pytest

INSTALL = 'pip install -e ".[integration]"; apt-get install chromium poppler-utils'


def _missing(what: str):
    message = f"{what} is not installed ({INSTALL})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI installs every integration dependency", pytrace=False)
    pytest.skip(message)


def module(name: str):
    """The module, imported."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(name)


def program(name: str) -> str:
    """The program's path."""
    return shutil.which(name) or _missing(name)
