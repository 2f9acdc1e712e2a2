"""The README's Python example runs as written, and its links point at files that exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_python_api_example_runs_and_saves(tmp_path, monkeypatch, capsys):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "onnxrep.optimize(" in b)
    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "models" / "repvgg.train.onnx", tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert "verification: passed" in capsys.readouterr().out
    assert len(onnx.load(tmp_path / "repvgg.onnx").graph.node) == 19


def test_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / target).exists(), target
