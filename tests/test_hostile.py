"""Hostile input through the CLI: one clear stderr line, the documented exit code, and nothing touched.

Every case (test_cli.py's bad inputs and output problems included) also checks
that no file under the test's directory changed or appeared: the input's bytes
are the same (sha256) and no output or temporary file is left behind.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import histogram, random_feeds, run
from onnx import helper, numpy_helper
from test_cli import SAMPLE, _bad_inputs, onnxrep_cmd

from onnxrep import cli
from onnxrep.io import files as io
from onnxrep.testing import GraphBuilder


def small_model(seed: int = 0, opset: int = 17, channels: int = 8) -> onnx.ModelProto:
    """Conv3x3+BN ‖ Conv1x1+BN → Add → Relu: one merge; the 3x3 weight is over 1 KB (goes external)."""
    b = GraphBuilder(seed)
    x = b.input("x", [1, channels, 6, 6])
    b.output(b.op("Relu", b.op("Add", b.bn(b.conv(x, channels, 3)), b.bn(b.conv(x, channels, 1)))))
    return b.model(opset)


def with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return path


def custom_op_model(with_rewrite: bool) -> onnx.ModelProto:
    """An op of an unknown domain (onnxruntime cannot run it), after a foldable block or alone."""
    b = GraphBuilder(3)
    x = b.input("x", [1, 4, 6, 6])
    y = b.op("Add", b.bn(b.conv(x, 4, 3)), b.bn(b.conv(x, 4, 1))) if with_rewrite else x
    b.output(b.node("Blur", [y], domain="com.example"), [1, 4, 6, 6])
    graph = helper.make_graph(b.nodes, "g", b.inputs, b.outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 10
    return model


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root``: its sha256 (FIFOs and symlinks by kind, never opened)."""
    files = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                files[str(path.relative_to(root))] = f"-> {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                files[str(path.relative_to(root))] = "dir" if stat.S_ISDIR(mode) else oct(mode)
    return files


# --- the corpus: each maker gets (in_dir, out_dir) and returns the arguments after `optimize` ---

def _existing(name):
    """One of test_cli.py's bad inputs (missing.onnx is not made: it is the missing file)."""
    def make(src, out):
        _bad_inputs(src)
        return [src / name, out / "o.onnx"]
    return make


def _copy_of_sample(src: Path) -> Path:
    (src / "model.onnx").write_bytes(SAMPLE.read_bytes())
    return src / "model.onnx"


def _saved(model_or_bytes, name="m.onnx"):
    def make(src, out):
        data = model_or_bytes() if callable(model_or_bytes) else model_or_bytes
        (src / name).write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
        return [src / name, out / "o.onnx"]
    return make


def _tensor_proto() -> bytes:
    return numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString()


def _model_without_graph() -> onnx.ModelProto:
    model = small_model()
    model.ClearField("graph")
    return model


def _old_opset() -> onnx.ModelProto:
    model = small_model()
    model.opset_import[0].version = 6
    return model


def _unknown_default_op() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _cycle(self_loop: bool) -> Callable[[], onnx.ModelProto]:
    def build():
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
        a = helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 4])
        nodes = [helper.make_node("Add", ["x", "a"], ["a"], name="n1")] if self_loop else \
            [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")]
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [a]), opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        return model
    return build


def _missing_external_data(src, out):
    path = with_external_data(small_model(), src / "m.onnx")
    (src / "m.onnx.data").unlink()
    return [path, out / "o.onnx"]


def _external_location(location: str, make_target: bool = False):
    """A model whose external data points at ``location`` (which onnx itself would not write)."""
    def make(src, out):
        path = with_external_data(small_model(), src / "m.onnx")
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(model.SerializeToString())
        if make_target:  # the data file is a symlink to the real one, outside the model's directory
            (src.parent / "elsewhere.data").write_bytes((src / "m.onnx.data").read_bytes())
            (src / "m.onnx.data").unlink()
            (src / "m.onnx.data").symlink_to(src.parent / "elsewhere.data")
        return [path, out / "o.onnx"]
    return make


def _truncated_external_data(src, out):
    path = with_external_data(small_model(), src / "m.onnx")
    data = src / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    return [path, out / "o.onnx"]


def _fifo_output(src, out):
    os.mkfifo(out / "o.onnx")
    return [_copy_of_sample(src), out / "o.onnx"]


def _read_only_output_dir(src, out):
    locked = out / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if not os.access(locked, os.W_OK):
        return [_copy_of_sample(src), locked / "o.onnx"]
    # root writes anywhere; /proc takes no new files, even from root
    return [_copy_of_sample(src), Path("/proc") / f"onnxrep-hostile-{os.getpid()}.onnx"]


def _file_as_output_dir(src, out):
    (out / "file.txt").write_text("a file, not a directory")
    return [_copy_of_sample(src), out / "file.txt" / "o.onnx"]


def _json_is_input(src, out):
    model = _copy_of_sample(src)
    return [model, out / "o.onnx", "--json", model]


def _json_dir_missing(src, out):
    return [_copy_of_sample(src), out / "o.onnx", "--json", out / "nope" / "r.json"]


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Path], list]
    code: int
    message: str | tuple[str, ...]


CASES = {
    # test_cli.py's cases, run again for the no-change checks
    "missing file": Case(lambda src, out: [src / "missing.onnx", out / "o.onnx"], 3, "no such file"),
    "empty file": Case(_existing("empty.onnx"), 4, "not an ONNX model"),
    "random bytes": Case(_existing("random.onnx"), 4, "not an ONNX model"),
    "truncated": Case(_existing("truncated.onnx"), 5, "truncated or corrupt"),
    "fails checker": Case(_existing("fails_checker.onnx"), 5, "fails the ONNX checker"),
    "future opset": Case(_existing("future_opset.onnx"), 7, "outside the supported range"),
    "output is the input": Case(lambda src, out: [_copy_of_sample(src)] * 2, 8, "--force"),
    "output dir missing": Case(lambda src, out: [_copy_of_sample(src), out / "nope" / "o.onnx"], 8, "does not exist"),
    "output is a dir": Case(lambda src, out: [_copy_of_sample(src), out], 8, "is a directory"),
    # new
    "TensorProto": Case(_saved(_tensor_proto), 4, "not an ONNX model"),
    "GraphProto": Case(_saved(lambda: small_model().graph), 4, "not an ONNX model"),
    "ModelProto without graph": Case(_saved(_model_without_graph), 4, "not an ONNX model (no graph"),
    "external data missing": Case(_missing_external_data, 6, "external data file missing"),
    "external data ../../etc/passwd": Case(_external_location("../../../../../etc/passwd"), 5,
                                           "outside the model's directory"),
    "external data /etc/passwd": Case(_external_location("/etc/passwd"), 5, "outside the model's directory"),
    "external data via symlink": Case(_external_location("m.onnx.data", make_target=True), 5,
                                      "external data refused"),
    "external data truncated": Case(_truncated_external_data, 5, "truncated or corrupt external data"),
    "opset 6": Case(_saved(_old_opset), 7, "opset 6 is outside the supported range 7.."),
    "custom domain op": Case(_saved(lambda: custom_op_model(False)), 7, "cannot verify"),
    "unknown op, default domain": Case(_saved(_unknown_default_op), 5, "No Op registered for NoSuchOp"),
    "cycle of two nodes": Case(_saved(_cycle(False)), 5,
                               "topologically sorted, however input 'b' of node: name: n1 OpType: Add is not output"),
    "node reading itself": Case(_saved(_cycle(True)), 5, "topologically sorted"),
    "output is a FIFO": Case(_fifo_output, 8, "not a regular file"),
    "output dir read-only": Case(_read_only_output_dir, 8, ("is not writable", "cannot create a file in")),
    "output dir is a file": Case(_file_as_output_dir, 8, "file.txt is not a directory"),
    "--json is the input": Case(_json_is_input, 8, "--json"),
    "--json dir missing": Case(_json_dir_missing, 8, "--json"),
}


def one_error_line(stderr: str, message: str | tuple[str, ...]) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("onnxrep: error: ") and "Traceback" not in stderr, stderr
    assert any(m in lines[0] for m in ((message,) if isinstance(message, str) else message)), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(tmp_path, name):
    case = CASES[name]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    args = case.make(src, out)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli.main, ["optimize", *map(str, args)])
    try:
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == case.code, result.output
        one_error_line(result.stderr, case.message)
        assert snapshot(tmp_path) == before  # the input unchanged, no output, no temporary file
        assert not Path(args[1]).exists() or Path(args[1]).is_relative_to(tmp_path)
    finally:
        for locked in out.glob("locked"):
            locked.chmod(0o755)


def test_fifo_input_is_refused_not_read(tmp_path):
    """Reading a FIFO (or /dev/zero) would block forever: it is refused before it is opened."""
    os.mkfifo(tmp_path / "pipe.onnx")
    (tmp_path / "out").mkdir()
    result = onnxrep_cmd("optimize", tmp_path / "pipe.onnx", tmp_path / "out" / "o.onnx")
    assert result.returncode == 3
    one_error_line(result.stderr, "not a regular file")
    assert list((tmp_path / "out").iterdir()) == []


def test_python_dash_m_gives_one_line(tmp_path):
    """The real process, not CliRunner: an external-data file escaping the directory."""
    src = tmp_path / "in"
    src.mkdir()
    args = _external_location("../../../../../etc/passwd")(src, tmp_path)
    before = snapshot(tmp_path)
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "onnxrep", "optimize", *map(str, args)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 5
    one_error_line(result.stderr, "outside the model's directory")
    assert snapshot(tmp_path) == before


class _FullDisk:
    """A file that takes ``room`` bytes and then fails with ENOSPC, like a filling disk."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_leaves_nothing_and_keeps_the_old_output(tmp_path, monkeypatch):
    def full_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller's with)
        return _FullDisk(f, 500) if "w" in mode or "a" in mode else f
    monkeypatch.setattr(io, "open", full_open, raising=False)
    src = tmp_path / "model.onnx"
    onnx.save(small_model(), src)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous output")
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli.main, ["optimize", str(src), str(out)])
    assert result.exit_code == 8, result.output
    one_error_line(result.stderr, "No space left on device")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("with_rewrite", [False, True])
def test_custom_op_is_written_with_no_verify(tmp_path, with_rewrite):
    """onnxruntime cannot run it, so it cannot be verified (exit 7 above); --no-verify still rewrites it."""
    src = tmp_path / "custom.onnx"
    onnx.save(custom_op_model(with_rewrite), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(cli.main, ["optimize", str(src), str(out), "--no-verify", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    written = onnx.load(out)
    onnx.checker.check_model(written)
    assert histogram(written) == ({"Conv": 1, "Blur": 1} if with_rewrite else {"Blur": 1})
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_batch_of_hostile_files(tmp_path):
    """Batch mode: each bad file gets its own code in the summary; the good one is still written."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    onnx.save(small_model(), src / "good.onnx")
    (src / "tensor.onnx").write_bytes(_tensor_proto())
    onnx.save(_cycle(False)(), src / "cycle.onnx")
    onnx.save(custom_op_model(False), src / "custom.onnx")
    _external_location("../../etc/passwd")(src, out)
    (src / "m.onnx").rename(src / "escape.onnx")
    before = snapshot(src)
    result = CliRunner().invoke(cli.main, ["optimize", str(src), "-o", str(out), "-j", "1"])
    assert result.exit_code == 10, result.output
    assert "Traceback" not in result.output
    for name, code in [("tensor", 4), ("cycle", 5), ("custom", 7), ("escape", 5)]:
        line = next(line for line in result.stdout.splitlines() if f"{name}.onnx" in line)
        assert f"exit {code}: " in line and line.count(f"{name}.onnx") == 1, line  # the file named once
    assert "1 of 5 optimized" in result.stdout  # the summary is on stdout whatever the outcome
    assert sorted(p.name for p in out.iterdir()) == ["good.onnx"]
    assert snapshot(src) == before
    feeds = random_feeds(small_model())
    np.testing.assert_allclose(run(onnx.load(out / "good.onnx"), feeds)[0], run(small_model(), feeds)[0],
                               rtol=1e-4, atol=1e-5)
