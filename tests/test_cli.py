"""The CLI through the real console script, as a user meets it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import broken_rule

import onnxrep
from onnxrep import api, cli
from onnxrep.rules import RULES_BY_NAME

MODELS = Path(__file__).resolve().parent.parent / "models"
SAMPLE = MODELS / "repvgg.train.onnx"


def onnxrep_cmd(*args, cwd=None):
    exe = shutil.which("onnxrep")
    assert exe, "the onnxrep console script is not installed"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_optimize_prints_report_and_writes(tmp_path):
    out = tmp_path / "out.onnx"
    digest = hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    result = onnxrep_cmd("optimize", SAMPLE, out, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for text in ("BatchNormalization", "nodes", "parameters", "file size", "fold_conv_affine ×16",
                 "merge_parallel ×8", "verification: passed", "local max error", "within rounding", f"wrote {out}",
                 "at input=1x3x32x32 and input=2x3x32x32\n", "time: load "):
        assert text in result.stdout, text
    onnx.checker.check_model(onnx.load(out), full_check=True)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rules_fired"] == {"fold_conv_affine": 16, "merge_parallel": 8}
    assert report["verification"]["passed"] and report["after"]["nodes"] == 19
    assert hashlib.sha256(SAMPLE.read_bytes()).hexdigest() == digest


def test_quiet_no_verify_only_skip(tmp_path):
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "a.onnx", "-q", "--no-verify", "--only", "fold_conv_affine")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    ops = [n.op_type for n in onnx.load(tmp_path / "a.onnx").graph.node]
    assert "BatchNormalization" in ops and ops.count("Add") == 13  # identity BNs stay; no merges
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "b.onnx", "--skip", "merge_parallel", "--no-verify")
    assert "verification: skipped" in result.stdout and "merge_parallel" not in result.stdout


def test_input_shape_option(tmp_path):
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--input-shape", "input:4x3x32x32")
    assert result.returncode == 0 and "input=4x3x32x32" in result.stdout
    bad = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--input-shape", "input:4xx")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("shapes, message", [
    (["inp:1x3x32x32"], "inp:1x3x32x32: the model has no input 'inp'; its inputs: input [N, 3, 32, 32]"),
    (["input:1x3x32"], "input:1x3x32: the model's input is input [N, 3, 32, 32]: 4 dims, not 3"),
    (["input:2x3x224x224"], "input:2x3x224x224: the model's input is input [N, 3, 32, 32]: its dim 2 is a "
                            "static 32, not 224; dim 3 is a static 32, not 224"),
    (["input:1x3x32x32", "input:2x3x32x32"], "input given more than once"),
    (["garbage"], "garbage: expected NAME:DxD.., e.g. input:1x3x224x224"),
    (["input:1x3x0x32"], "input:1x3x0x32: dim 2 is 0; every dim must be ≥ 1"),
])
def test_input_shape_that_does_not_fit_is_one_usage_error_line(tmp_path, shapes, message):
    args = [a for s in shapes for a in ("--input-shape", s)]
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", *args)
    assert result.returncode == 2 and result.stderr == f"onnxrep: error: --input-shape {message}\n"
    if "no input" in message:  # batch mode checks every file the same way
        batch = onnxrep_cmd("optimize", SAMPLE, MODELS / "acnet.train.onnx", "-o", tmp_path / "out", *args)
        assert batch.returncode == 2 and message in batch.stderr and batch.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # before any work


@pytest.mark.parametrize("args, message", [
    (["--rtol", "-1"], "onnxrep: error: invalid value for '--rtol': -1.0 is not in the range x>=0."),
    (["--atol", "nan"], "onnxrep: error: invalid value for '--atol'"),
    (["--frce"], "onnxrep: error: no such option '--frce'. Did you mean '--force'?"),
    (["--only", "nope"], "onnxrep: error: --only/--skip: unknown rule(s) nope; known: fold_constants, "),
    (["extra"], "onnxrep: error: give IN and OUT, or several INs with -o OUTDIR"),
])
def test_every_usage_error_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli.main, ["optimize", str(SAMPLE), str(tmp_path / "o.onnx"), *args])
    assert result.exit_code == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1, \
        result.stderr
    assert list(tmp_path.iterdir()) == []


def test_each_command_lists_its_own_exit_codes_aligned():
    def codes(command):
        text = CliRunner().invoke(cli.main, [command, "--help"]).output
        rows = text.split("Exit codes:\n")[1].splitlines()
        assert len({len(row) - len(row.lstrip(" 0123456789")) for row in rows}) == 1, rows  # one text column
        return text, [int(row.split()[0]) for row in rows]

    optimize, optimize_codes = codes("optimize")
    inspect, inspect_codes = codes("inspect")
    assert optimize_codes == list(range(11)) and "--debug" in optimize
    assert inspect_codes == list(range(9)) and "--debug" not in inspect and "written:" not in inspect


def test_onnxruntime_rejecting_a_shape_keeps_its_detail(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [numpy_helper.from_array(np.array([4, 4], dtype=np.int64), "s")])  # runs at no size but 2x8
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "r.onnx")
    result = onnxrep_cmd("optimize", tmp_path / "r.onnx", tmp_path / "o.onnx", "--input-shape", "x:3x8")
    assert result.returncode == 7 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("onnxrep: error:") and "Input shape:{3,8}, requested shape:{4,4}" in result.stderr
    assert "set --input-shape" not in result.stderr  # the size was the user's own
    default = onnxrep_cmd("optimize", tmp_path / "r.onnx", tmp_path / "o.onnx")
    assert default.returncode == 7 and "(set --input-shape, or pass --inputs DIR" in default.stderr


def test_unknown_rule_is_a_usage_error(tmp_path):
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--only", "nope")
    assert result.returncode == 2 and "unknown rule" in result.stderr


def test_rules_and_help():
    result = onnxrep_cmd("rules")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(RULES_BY_NAME)
    assert "Exit codes" in onnxrep_cmd("optimize", "--help").stdout
    assert onnxrep_cmd("--version").stdout.startswith("onnxrep, version")


def test_python_dash_m(tmp_path):
    exe = shutil.which("python") or shutil.which("python3")
    result = subprocess.run([exe, "-m", "onnxrep", "rules"], capture_output=True, text=True)
    assert result.returncode == 0 and "merge_parallel" in result.stdout


def test_rollback_writes_what_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "select_rules", lambda only, skip: (RULES_BY_NAME["fold_conv_affine"], broken_rule()))
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli.main, ["optimize", str(SAMPLE), str(out)])
    assert result.exit_code == 0, result.output
    assert "rolled back (8)" in result.output and "verification: passed" in result.output
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("Add") == 13 and "BatchNormalization" in ops  # folds kept, every broken merge dropped


def test_verification_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "select_rules", lambda only, skip: (RULES_BY_NAME["fold_conv_affine"], broken_rule()))
    monkeypatch.setattr(api, "MAX_ROLLBACK_ROUNDS", 0)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli.main, ["optimize", str(SAMPLE), str(out)])
    assert result.exit_code == 9, result.output
    assert "verification failed" in result.output and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [[], ["--no-verify"]])
def test_internal_error_is_one_line(tmp_path, monkeypatch, flags):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(api, "optimize", explode)  # cli imports it when a command runs
    result = CliRunner().invoke(cli.main, ["optimize", str(SAMPLE), str(tmp_path / "o.onnx"), *flags])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "onnxrep: internal error: RuntimeError: boom (please report it; --debug shows the traceback)"]


def test_inspect_internal_error_is_one_line(monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(api, "optimize", explode)
    result = CliRunner().invoke(cli.main, ["inspect", str(SAMPLE)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["onnxrep: internal error: RuntimeError: boom (please report it; "
                                          "'onnxrep optimize IN OUT --no-verify --debug' shows the traceback)"]


def _bad_inputs(tmp_path):
    data = SAMPLE.read_bytes()
    files = {"empty.onnx": b"", "random.onnx": bytes(range(256)) * 4, "truncated.onnx": data[: len(data) // 2]}
    model = onnx.load(SAMPLE)
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    files["future_opset.onnx"] = model.SerializeToString()
    model = onnx.load(SAMPLE)
    model.graph.node[0].input[0] = "undefined_tensor"
    files["fails_checker.onnx"] = model.SerializeToString()
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name,code,message", [
    ("missing.onnx", 3, "no such file"),
    ("empty.onnx", 4, "not an ONNX model"),
    ("random.onnx", 4, "not an ONNX model"),
    ("truncated.onnx", 5, "truncated or corrupt"),
    ("fails_checker.onnx", 5, "fails the ONNX checker"),
    ("future_opset.onnx", 7, "outside the supported range"),
])
def test_bad_input_is_one_line(tmp_path, name, code, message):
    (tmp_path / "in").mkdir()
    folder = _bad_inputs(tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = onnxrep_cmd("optimize", folder / name, out_dir / "o.onnx")
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxrep: error:") and message in lines[0], result.stderr
    assert list(out_dir.iterdir()) == []


def test_output_problems(tmp_path):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(SAMPLE.read_bytes())
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    same = onnxrep_cmd("optimize", copy, copy)
    assert same.returncode == 8 and "--force" in same.stderr
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    missing_dir = onnxrep_cmd("optimize", copy, tmp_path / "nope" / "o.onnx")
    assert missing_dir.returncode == 8 and "does not exist" in missing_dir.stderr
    is_dir = onnxrep_cmd("optimize", copy, tmp_path)
    assert is_dir.returncode == 8 and "is a directory" in is_dir.stderr
    forced = onnxrep_cmd("optimize", copy, copy, "--force", "-q")
    assert forced.returncode == 0 and hashlib.sha256(copy.read_bytes()).hexdigest() != digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left


def test_inspect_lists_rewrites_and_refusals_and_writes_nothing(tmp_path):
    result = onnxrep_cmd("inspect", SAMPLE, "--json", tmp_path / "i.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "61 nodes → 19 after" in result.stdout and "would rewrite (24)" in result.stdout
    assert "merge_parallel:" in result.stdout and "would leave as they are (0)" in result.stdout
    data = json.loads((tmp_path / "i.json").read_text())
    assert len(data["rewrites"]) == 24 and data["after"]["nodes"] == 19
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.json"]
    bad = onnxrep_cmd("inspect", tmp_path / "missing.onnx")
    assert bad.returncode == 3 and bad.stderr.startswith("onnxrep: error:")


def test_batch_mode_with_one_bad_file(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("repvgg", "acnet"):
        (inputs / f"{name}.onnx").write_bytes((MODELS / f"{name}.train.onnx").read_bytes())
    (inputs / "broken.onnx").write_bytes(b"not a model")
    out = tmp_path / "out"
    out.mkdir()
    result = onnxrep_cmd("optimize", inputs, "-o", out, "-j", "2", "--json", tmp_path / "batch.json")
    assert result.returncode == 10, result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["acnet.onnx", "repvgg.onnx"]
    assert "61 → 19" in result.stdout and "39 → 11" in result.stdout
    broken = next(line for line in result.stdout.splitlines() if "broken.onnx" in line)
    assert broken.count("broken.onnx") == 1 and "exit 4: not an ONNX model" in broken, broken  # named once
    assert "2 of 3 optimized" in result.stdout  # one stream
    report = json.loads((tmp_path / "batch.json").read_text())
    assert sorted(r["exit_code"] for r in report) == [0, 0, 4]


def test_batch_mode_all_good_and_usage_errors(tmp_path):
    result = onnxrep_cmd("optimize", MODELS / "acnet.train.onnx", "-o", tmp_path, "-q")
    assert result.returncode == 0 and result.stdout == "" and (tmp_path / "acnet.train.onnx").exists()
    assert onnxrep_cmd("optimize", MODELS / "acnet.train.onnx").returncode == 2
    created = onnxrep_cmd("optimize", SAMPLE, "-o", tmp_path / "missing" / "deeper", "--no-verify")
    assert created.returncode == 0 and (tmp_path / "missing" / "deeper" / SAMPLE.name).exists()
    assert "1 of 1 optimized" in created.stdout and created.stderr == ""
    (tmp_path / "file").write_text("x")
    blocked = onnxrep_cmd("optimize", SAMPLE, "-o", tmp_path / "file" / "sub", "--no-verify")
    assert blocked.returncode == 8 and blocked.stderr.count("\n") == 1 and "Traceback" not in blocked.stderr


def test_quiet_batch_names_a_failing_file_once(tmp_path):
    result = onnxrep_cmd("optimize", "nope.onnx", "-o", tmp_path / "out", "-q", cwd=tmp_path)
    assert result.returncode == 10 and result.stdout == ""
    assert result.stderr.splitlines() == ["onnxrep: error: nope.onnx: no such file",
                                          f"0 of 1 optimized into {tmp_path / 'out'}"]


def test_batch_refuses_two_inputs_for_one_output_before_any_work(tmp_path):
    for sub, model in (("a", "repvgg"), ("b", "acnet")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "m.onnx").write_bytes((MODELS / f"{model}.train.onnx").read_bytes())
    out = tmp_path / "out"
    result = onnxrep_cmd("optimize", tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx", "-o", out)
    assert result.returncode == 2 and "would both be written to" in result.stderr
    assert not out.exists()  # refused before any work
    same = onnxrep_cmd("optimize", tmp_path / "a" / "m.onnx", tmp_path / "a", "-o", out, "--no-verify")
    assert same.returncode == 0 and "1 of 1 optimized" in same.stdout  # one file named twice is one file


def test_batch_recursive_keeps_relative_paths(tmp_path):
    tree = tmp_path / "tree"
    (tree / "x").mkdir(parents=True)
    (tree / "y").mkdir()
    for sub, model in (("x", "repvgg"), ("y", "acnet")):
        (tree / sub / "m.onnx").write_bytes((MODELS / f"{model}.train.onnx").read_bytes())
    flat = onnxrep_cmd("optimize", tree, "-o", tmp_path / "flat")
    assert flat.returncode == 2 and "-r" in flat.stderr
    out = tree / "out"  # inside the tree: a second run must not take the first run's outputs as inputs
    for _ in range(2):
        result = onnxrep_cmd("optimize", tree, "-r", "-o", out, "-j", "1", "--no-verify")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 of 2 optimized" in result.stdout and result.stderr == ""
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.onnx")) == ["x/m.onnx", "y/m.onnx"]
    assert len(onnx.load(out / "x" / "m.onnx").graph.node) == 19
    assert onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "-r").returncode == 2


@pytest.mark.parametrize("args", [["--help"], ["rules"], ["inspect", SAMPLE], ["optimize", SAMPLE, "OUT"]])
def test_a_terminal_that_cannot_encode_the_arrows_gets_ascii(tmp_path, args):
    exe = shutil.which("onnxrep")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    args = [str(tmp_path / "o.onnx") if a == "OUT" else str(a) for a in args]
    result = subprocess.run([exe, *args], capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode("cp1252")
    out = result.stdout.decode("cp1252")
    assert "Traceback" not in out and result.stderr == b""
    assert "→" not in out and ("->" in out or args[0] == "optimize")  # (its report has no arrow)


@pytest.mark.parametrize("args", [["rules"], ["inspect", Path(__file__).parent / "fixtures/torch/dbb.ts.train.onnx"],
                                  ["--help"]])
def test_a_closed_pipe_ends_quietly_with_0(args):
    process = subprocess.Popen([shutil.which("onnxrep"), *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0 and stderr == b""


def test_help_and_version_import_neither_onnx_nor_onnxruntime():
    exe = shutil.which("python") or shutil.which("python3")
    code = ("import sys, runpy; sys.argv = ['onnxrep', '{}']\n"
            "try: runpy.run_module('onnxrep', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'onnx_graphsurgeon') if m in sys.modules))")
    for args, imported in (("--version", "[]"), ("--help", "[]"),
                           ("rules", "['numpy', 'onnx', 'onnx_graphsurgeon']")):  # the rules are what it lists
        result = subprocess.run([exe, "-c", code.format(args)], capture_output=True, text=True, timeout=60)
        assert result.stdout.splitlines()[-1] == imported, (args, result.stdout, result.stderr)
    version = onnxrep_cmd("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"onnxrep, version {onnxrep.__version__}"


def test_help_says_the_tolerances_replace_the_noise_floor():
    text = " ".join(onnxrep_cmd("optimize", "--help").stdout.split())
    assert "--rtol" in text and "--atol" in text and text.count("noise floor") >= 2


FIXTURES = Path(__file__).parent / "fixtures" / "torch"


def test_inspect_on_a_big_model_counts_first_and_sums_up_housekeeping(tmp_path):
    result = onnxrep_cmd("inspect", FIXTURES / "dbb.ts.train.onnx", "--json", tmp_path / "i.json")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) < 25, result.stdout  # 1,284 lines before
    # merge_parallel ×6: the third block's join merges in two sweeps (its layout is known from shape inference)
    assert lines[1] == "rules fired: fold_bias_pad ×5, fold_conv_affine ×2, fold_sequential ×3, merge_parallel ×6"
    assert lines[2] == "housekeeping: fold_constants ×1265 (nodes of constant arithmetic folded)"
    assert "  merge_parallel: /0/Add_2" in lines  # rewrites by node name, as refusals are
    verbose = onnxrep_cmd("inspect", FIXTURES / "dbb.ts.train.onnx", "-v").stdout.splitlines()
    assert len(verbose) > 1281 and sum(line.startswith("  fold_constants: ") for line in verbose) == 1265
    rewrites = json.loads((tmp_path / "i.json").read_text())["rewrites"]
    assert {"rule": "merge_parallel", "tensor": "/0/Add_2_output_0", "node": "/0/Add_2"} in rewrites


def test_housekeeping_says_what_it_did():
    _, aliases = onnxrep.optimize(FIXTURES / "repvgg.ts_untrained.train.onnx", verify=False)
    assert "housekeeping: fold_constants ×13 (Identity aliases of weights dropped)" in aliases.format()
    _, raw = onnxrep.optimize(FIXTURES / "dbb.dynamo_raw.train.onnx", verify=False)
    assert ("housekeeping: drop_noop_casts ×20 (Casts to their inputs' own types dropped), "
            "fold_constants ×709 (676 nodes of constant arithmetic folded, 33 CastLikes made Casts), "
            "fold_whole_write ×20 (whole-tensor writes replaced by their values)") in raw.format()


def test_refusals_are_grouped_by_reason_unless_verbose(tmp_path):
    for command in (["inspect"], ["optimize", "--no-verify"]):
        args = [*command, FIXTURES / "repvit.ts.train.onnx", *([tmp_path / "o.onnx"] if len(command) > 1 else [])]
        grouped = onnxrep_cmd(*args).stdout
        assert "(6), by reason; -v lists each:" in grouped
        assert "  fold_conv_affine ×2: the conv output is also read by …\n" in grouped
        assert "  fold_sequential ×2: … closes a GELU" in grouped and ", and 1 more" in grouped
        every = onnxrep_cmd(*args, "-v").stdout
        assert every.count("closes a GELU") == 2
        assert "/blocks/blocks.1/channel_mixer/channel_mixer.1/Mul_1 closes" in every
    assert "  merge_parallel: /head/Add" in every  # optimize -v lists the rewrites too


def test_nothing_fired_says_what_would_help(tmp_path):
    from onnxrep.testing import GraphBuilder

    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 4, 8, 8])
    b.output(b.bn(b.conv(x, 4, 3, pads=[1, 1, 1, 1])))
    model = b.model()
    model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)  # an IR 3 export: weights are graph inputs
    onnx.save(model, tmp_path / "m.onnx")
    result = onnxrep_cmd("optimize", tmp_path / "m.onnx", tmp_path / "o.onnx")
    assert result.returncode == 0, result.stderr
    assert "rules fired: none; 1 candidate(s) refused" in result.stdout
    assert "hint: " in result.stdout and "keep_initializers_as_inputs=False" in result.stdout
    deploy = onnxrep_cmd("optimize", MODELS / "repvgg.deploy.onnx", tmp_path / "d.onnx").stdout
    assert "rules fired: none (no training-time branches found" in deploy and "hint" not in deploy
