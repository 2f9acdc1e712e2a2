"""Weights in external files: read from the model's own directory, written beside the output, atomically."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers import histogram, random_feeds, run
from onnx import external_data_helper, numpy_helper
from test_cli import onnxrep_cmd
from test_hostile import one_error_line, small_model, snapshot, with_external_data

from onnxrep import cli
from onnxrep.io import files as io

MERGED = {"Conv": 1, "Relu": 1}


def external_model(folder: Path, name: str = "m.onnx", seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return with_external_data(small_model(seed), folder / name)


def external_tensors(path: Path) -> list[str]:
    model = onnx.load(path, load_external_data=False)
    return [t.name for t in model.graph.initializer if external_data_helper.uses_external_data(t)]


def assert_runs_like(path: Path, reference: onnx.ModelProto) -> None:
    """onnxruntime loads ``path`` itself (so it resolves the external data) and matches ``reference``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = random_feeds(reference)
    np.testing.assert_allclose(session.run(None, feeds)[0], run(reference, feeds)[0], rtol=1e-4, atol=1e-5)


def optimize(*args) -> object:
    result = CliRunner().invoke(cli.main, ["optimize", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_external_data_is_read_from_the_model_directory_not_the_cwd(tmp_path):
    model = external_model(tmp_path / "models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = snapshot(tmp_path / "models")
    result = onnxrep_cmd("optimize", Path("..") / "models" / "m.onnx", "o.onnx", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "verification: passed" in result.stdout
    assert snapshot(tmp_path / "models") == before
    assert sorted(p.name for p in elsewhere.iterdir()) == ["o.onnx"]  # self-contained: no --external-data
    out = onnx.load(elsewhere / "o.onnx")
    assert histogram(out) == MERGED and not external_tensors(elsewhere / "o.onnx")
    assert_runs_like(elsewhere / "o.onnx", onnx.load(model))


def test_external_data_option_writes_beside_the_output_and_reruns(tmp_path, monkeypatch):
    model = external_model(tmp_path / "models")
    reference = onnx.load(model)
    out_dir, cwd = tmp_path / "out", tmp_path / "cwd"
    out_dir.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = out_dir / "o.onnx"
    result = optimize(model, out, "--external-data")
    assert result.exit_code == 0, result.output
    assert "verification: passed" in result.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.onnx", "o.onnx.data"]
    assert list(cwd.iterdir()) == []
    assert external_tensors(out)  # the merged 3x3 kernel is over the 1 KB threshold
    assert histogram(onnx.load(out)) == MERGED
    assert_runs_like(out, reference)

    again = out_dir / "again.onnx"  # onnxrep reads its own external-data output
    result = optimize(out, again, "--external-data")
    assert result.exit_code == 0, result.output
    assert "verification: passed" in result.stdout and "rules fired: none" in result.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["again.onnx", "again.onnx.data", "o.onnx", "o.onnx.data"]
    assert_runs_like(again, reference)

    result = optimize(out, out, "--external-data", "--force", "-q")  # in place: the data file is replaced too
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out_dir.iterdir()) == ["again.onnx", "again.onnx.data", "o.onnx", "o.onnx.data"]
    assert_runs_like(out, reference)


def lower_limit(monkeypatch, weight_bytes: int) -> None:
    """Make ``weight_bytes`` of weights the most a protobuf may hold (the real limit is 2 GB)."""
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", io.STRUCTURE_MARGIN + weight_bytes)


def test_too_big_for_protobuf_threshold(monkeypatch):
    model = small_model()
    size = io.weight_bytes(model)
    assert size == sum(len(t.raw_data) for t in model.graph.initializer)
    assert not io.too_big_for_protobuf(model)
    lower_limit(monkeypatch, size)
    assert not io.too_big_for_protobuf(model)
    lower_limit(monkeypatch, size - 1)
    assert io.too_big_for_protobuf(model)


def test_save_switches_to_external_data_above_the_limit(tmp_path, monkeypatch):
    model = small_model()
    io.save_model(model, tmp_path / "small.onnx")
    lower_limit(monkeypatch, io.weight_bytes(model) - 1)
    io.save_model(model, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "small.onnx"]
    assert external_tensors(tmp_path / "big.onnx") and not external_tensors(tmp_path / "small.onnx")
    loaded = onnx.load(tmp_path / "big.onnx")
    for want, got in zip(small_model().graph.initializer, loaded.graph.initializer, strict=True):
        assert np.array_equal(numpy_helper.to_array(want), numpy_helper.to_array(got)), want.name


@pytest.mark.parametrize("verify", [True, False])
def test_cli_switches_to_external_data_above_the_limit(tmp_path, monkeypatch, verify):
    """Without --external-data: verification (which then runs onnxruntime from files) and the save both switch."""
    src = tmp_path / "m.onnx"
    onnx.save(small_model(), src)
    lower_limit(monkeypatch, 1000)
    result = optimize(src, tmp_path / "o.onnx", *([] if verify else ["--no-verify"]))
    assert result.exit_code == 0, result.output
    assert ("verification: passed" if verify else "verification: skipped") in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "o.onnx", "o.onnx.data"]
    assert_runs_like(tmp_path / "o.onnx", small_model())


@pytest.fixture
def previous_output(tmp_path):
    """An output directory already holding an external-data output of another model."""
    src = external_model(tmp_path / "in")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    with_external_data(small_model(seed=7), out)
    return src, out


def test_disk_full_while_writing_external_data(tmp_path, monkeypatch, previous_output):
    src, out = previous_output
    calls = []

    def fill_disk(tensor, base_path):  # the disk is full halfway through the (one, merged) big weight
        calls.append(tensor.name)
        with open(Path(base_path) / out.with_suffix(".onnx.data").name, "ab") as f:
            f.write(tensor.raw_data[: len(tensor.raw_data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(external_data_helper, "save_external_data", fill_disk)
    before = snapshot(tmp_path)
    result = optimize(src, out, "--external-data")
    assert len(calls) == 1
    assert result.exit_code == 8, result.output
    one_error_line(result.stderr, "No space left on device")
    assert snapshot(tmp_path) == before  # old o.onnx and o.onnx.data intact, no temporary files


@pytest.mark.parametrize("existing", [True, False])
def test_failed_rename_keeps_the_old_output_and_its_data(tmp_path, monkeypatch, previous_output, existing):
    """The data file is renamed into place first: if the model's rename then fails, it is put back."""
    src, out = previous_output
    if not existing:
        out.unlink()
        out.with_suffix(".onnx.data").unlink()
    real = os.replace

    def fail_on_model(source, target, *args, **kwargs):
        if Path(target) == out:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(source, target, *args, **kwargs)
    monkeypatch.setattr(io.os, "replace", fail_on_model)
    before = snapshot(tmp_path)
    result = optimize(src, out, "--external-data")
    assert result.exit_code == 8, result.output
    one_error_line(result.stderr, "Input/output error")
    assert snapshot(tmp_path) == before
    if existing:
        assert_runs_like(out, small_model(seed=7))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_data_file_gets_the_mode_of_a_new_file_like_the_output(tmp_path, umask):
    out = tmp_path / "o.onnx"
    for _ in range(2):  # a fresh output, then one renamed over the first
        subprocess.run([shutil.which("onnxrep"), "optimize", str(Path(__file__).parent.parent / "models" /
                        "repvgg.train.onnx"), str(out), "--external-data", "-q"],
                       check=True, timeout=120, preexec_fn=lambda: os.umask(umask))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"o.onnx": 0o666 & ~umask, "o.onnx.data": 0o666 & ~umask}
