"""Any valid ONNX model in, one clean line or a correct model out: onnx's own backend test corpus.

A fixed sample (every EVERY-th model by sorted ``kind/name``, plus the models
that once failed) goes through ``onnxrep optimize IN OUT --inputs
test_data_set_0``, in this process through the CLI's entry point with file
descriptors 1 and 2 captured (onnxruntime's C++ logger writes to fd 2), as the
soak run ``python tools/corpus.py`` does for the whole corpus. Every model
must end one of two ways: exit 0 with a model that passes the ONNX checker and
whose outputs equal the expected ones (where the original's do in
onnxruntime, else the original's), or exit 2..10 with exactly one
``onnxrep: error:`` line on stderr and nothing written. A few models also run
through the real console script, in a fresh process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import corpus  # noqa: E402

EVERY = 10
#: Models of issue 16, each of which once failed in its own way.
NAMED = (
    "node/test_identity_opt", "node/test_if_opt", "node/test_loop16_seq_none", "node/test_if_seq",
    "node/test_identity_sequence", "node/test_loop13_seq", "node/test_optional_get_element_optional_sequence",
    "node/test_optional_get_element_tensor", "node/test_optional_has_element_empty_optional_input",
    "node/test_optional_has_element_optional_input", "node/test_sequence_insert_at_back",
    "node/test_sequence_map_add_2_sequences_expanded", "node/test_split_to_sequence_nokeepdims",
    "node/test_expand_dim_changed", "simple/test_sequence_model8", "node/test_convinteger_with_padding",
    "node/test_affine_grid_3d_expanded", "node/test_affine_grid_3d_align_corners_expanded",
    "node/test_gather_elements_negative_indices", "node/test_gru_batchwise", "node/test_constant",
    "node/test_equal_string", "simple/test_strnorm_model_monday_empty_output",
)


def _sample() -> list[str]:
    every = corpus.labels()
    return sorted(set(every[::EVERY]) | {n for n in NAMED if n in every})


SAMPLE = _sample()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """kind/name → model directory: the installed ones, the node tests written for the sample."""
    dirs = {corpus.label(d): d for kind in corpus.KINDS if (corpus.data_dir() / kind).is_dir()
            for d in (corpus.data_dir() / kind).iterdir()}
    if corpus.node_dir_installed() is None:
        names = {label.split("/", 1)[1] for label in SAMPLE if label.startswith("node/")}
        root = corpus.write_node_tests(tmp_path_factory.mktemp("corpus") / "node", names)
        dirs.update({f"node/{d.name}": d for d in root.iterdir()})
    return dirs


@pytest.mark.parametrize("label", SAMPLE)
def test_one_clean_line_or_a_correct_model(label, model_dirs, tmp_path):
    result = corpus.examine(model_dirs[label], tmp_path, use_inputs=True)
    assert result["class"] in ("ok", "refusal"), (
        f"{label}: {result['class']} (exit {result.get('code')}) {result.get('why', '')}\n{result['stderr']}")
    assert not list(tmp_path.iterdir()) or result["class"] == "ok"  # a refusal writes nothing


def onnxrep_cmd(*args):
    exe = shutil.which("onnxrep")
    assert exe, "the onnxrep console script is not installed"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("label, inputs, code", [
    ("node/test_expand_dim_changed", False, 7),  # onnxruntime fails while running: it logged to stderr
    ("node/test_gru_batchwise", True, 7),  # onnxruntime fails creating the session: it logged twice
    ("node/test_identity_opt", False, 7),  # an optional input cannot be invented
    ("node/test_identity_opt", True, 0),
    ("node/test_split_to_sequence_nokeepdims", True, 0),
])
def test_console_script_in_a_fresh_process(label, inputs, code, model_dirs, tmp_path):
    model_dir = model_dirs[label]
    args = ["optimize", model_dir / "model.onnx", tmp_path / "out.onnx"]
    result = onnxrep_cmd(*args, *(["--inputs", model_dir / "test_data_set_0"] if inputs else []))
    assert result.returncode == code, result.stderr
    if code:
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("onnxrep: error: "), result.stderr
        assert not (tmp_path / "out.onnx").exists()
    else:
        assert result.stderr == "" and (tmp_path / "out.onnx").exists()


def test_random_integer_inputs_point_to_inputs(model_dirs, tmp_path):
    """Random values for Expand's shape input make the original fail: the error says what to do."""
    model_dir = model_dirs["node/test_expand_dim_changed"]
    code, stderr = corpus.run_cli(["optimize", str(model_dir / "model.onnx"), str(tmp_path / "out.onnx")])
    assert code == 7 and "random values of integer input(s) 'new_shape'" in stderr and "--inputs DIR" in stderr
