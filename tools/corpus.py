"""Soak run: ``onnxrep optimize`` on every model of the onnx backend test corpus, each outcome classified.

    python tools/corpus.py                      # the whole corpus, 2 worker processes
    python tools/corpus.py -j 4 --json soak.json --show internal --show "wrong output"
    python tools/corpus.py --random-inputs      # verify on random inputs instead of test_data_set_0
    python tools/corpus.py --no-verify          # every accepted model rewritten and written unchecked

The corpus is what the installed ``onnx`` ships under ``onnx/backend/test/data``
(simple, pytorch-converted, pytorch-operator, real, light; ``real`` has no
models) plus the node tests, which recent onnx wheels no longer ship: they are
generated once from ``onnx.backend.test.case.node`` into a cache directory
(``~/.cache/onnxrep/onnx-VERSION-node``, or ``--node-dir``) as onnx's own
``backend-test-tools generate-data`` writes test data.

Every model runs through the CLI's own entry point in a worker process, with
file descriptors 1 and 2 captured (onnxruntime's C++ logger writes to fd 2
directly), with ``--inputs`` pointing at the model's ``test_data_set_0``.
Classes: ``ok`` (exit 0, checker-valid, outputs equal to the expected outputs
where the original matches them in onnxruntime, else to the original's),
``refusal`` (one ``onnxrep: error:`` line, a documented exit code, nothing
written), ``internal`` (exit 1), ``traceback``, ``multi-line stderr`` (or
anything else on stderr, or a file written on failure), ``wrong output``,
``checker`` (the output fails the ONNX checker where the input passed),
``crash`` (the worker died or hung). Exit status 1 when any model is outside
``ok`` and ``refusal``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator", "real", "light")
CLASSES = ("ok", "refusal", "internal", "traceback", "multi-line stderr", "wrong output", "checker", "crash")
DOCUMENTED = range(2, 11)
TIMEOUT = 300


def data_dir() -> Path:
    import onnx
    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def default_node_dir() -> Path:
    import onnx
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "onnxrep" / f"onnx-{onnx.__version__}-node"


_NODE_CASES: list = []


def node_cases() -> list:
    """onnx's node test cases (collected once: their expected outputs are computed on collection)."""
    if not _NODE_CASES:
        import warnings

        import onnx.backend.test.case.node as node_test

        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _NODE_CASES.extend(node_test.collect_testcases())
    return _NODE_CASES


def write_node_tests(target: Path, names: set[str] | None = None) -> Path:
    """Write the node test cases (all, or those named) as ``target/<name>/model.onnx`` + test_data_set_N,
    with onnx's own writer (``backend-test-tools generate-data``, which in recent onnx writes model cases only)."""
    from onnx.backend.test import cmd_tools

    cases = [c for c in node_cases() if names is None or c.name in names]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".node-", dir=target.parent))
    saved = cmd_tools.model_test
    cmd_tools.model_test = argparse.Namespace(collect_testcases=lambda: cases)
    try:
        cmd_tools.generate_data(argparse.Namespace(output=str(tmp)))
    finally:
        cmd_tools.model_test = saved
    (tmp / "node").mkdir(exist_ok=True)
    os.replace(tmp / "node", target)
    tmp.rmdir()
    return target


def node_dir_installed() -> Path | None:
    root = data_dir() / "node"
    return root if root.is_dir() else None


def corpus(node_dir: Path | None = None) -> list[Path]:
    """Every corpus model directory (one holding model.onnx), sorted by ``kind/name``."""
    dirs = []
    for kind in KINDS:
        root = data_dir() / kind
        if kind == "node" and not root.is_dir():
            root = node_dir or default_node_dir()
            if not root.is_dir():
                write_node_tests(root)
        dirs += [d for d in root.iterdir() if (d / "model.onnx").is_file()] if root.is_dir() else []
    return sorted(dirs, key=label)


def labels() -> list[str]:
    """``kind/name`` of every corpus model, the node tests' from their cases when onnx does not ship them."""
    names = [label(d) for kind in KINDS if (data_dir() / kind).is_dir()
             for d in (data_dir() / kind).iterdir() if (d / "model.onnx").is_file()]
    if node_dir_installed() is None:
        names += [f"node/{c.name}" for c in node_cases()]
    return sorted(names)


def label(model_dir: Path) -> str:
    kind = model_dir.parent.name if model_dir.parent.name in KINDS else "node"
    return f"{kind}/{model_dir.name}"


# ---------------------------------------------------------------- reading test data


def read_value(path: Path, value_type):
    """A .pb file of the test data as onnxruntime takes it: array, list (sequence), dict (map), None."""
    import onnx
    from onnx import numpy_helper

    data = path.read_bytes()
    kind = value_type.WhichOneof("value")
    proto = {"sequence_type": onnx.SequenceProto, "optional_type": onnx.OptionalProto,
             "map_type": onnx.MapProto}.get(kind, onnx.TensorProto)()
    proto.ParseFromString(data)
    if kind == "sequence_type":
        return numpy_helper.to_list(proto)
    if kind == "optional_type":
        return numpy_helper.to_optional(proto)
    if kind == "map_type":
        return numpy_helper.to_dict(proto)
    return numpy_helper.to_array(proto)


def test_data(model_dir: Path, model) -> tuple[dict, list] | None:
    """Inputs (by graph input name) and expected outputs of test_data_set_0, None if there is none."""
    data = model_dir / "test_data_set_0"
    if not data.is_dir():
        return None
    inputs = sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    outputs = sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    feeds = {model.graph.input[i].name: read_value(p, model.graph.input[i].type) for i, p in enumerate(inputs)}
    expected = [read_value(p, model.graph.output[i].type) for i, p in enumerate(outputs)]
    return feeds, expected


def run_ort(model, feeds) -> list | str:
    """The model's outputs in onnxruntime (its own optimizations off), or the error's first line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4
        return session.run(None, feeds, run_options)
    except Exception as error:
        return (str(error).strip().splitlines() or [type(error).__name__])[0]


def close(expected, actual, rtol=1e-3, atol=1e-7, scaled=0.0) -> bool:
    """Equal within tolerance, recursively (sequences, maps, optionals); integers, strings exactly."""
    import numpy as np

    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() == actual.keys() and all(
            close(expected[k], actual[k], rtol, atol, scaled) for k in expected)
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            close(e, a, rtol, atol, scaled) for e, a in zip(expected, actual))
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return False
    if expected.dtype.kind not in "fc" or actual.dtype.kind not in "fc":
        return bool(np.array_equal(expected, actual))
    e, a = expected.astype(np.complex128 if expected.dtype.kind == "c" else np.float64), actual.astype(np.float64)
    finite = np.isfinite(e)
    limit = atol + scaled * float(np.abs(e[finite]).max(initial=0.0))
    return bool(np.array_equal(e[~finite], a[~finite], equal_nan=True)
                and np.allclose(a[finite], e[finite], rtol=rtol, atol=limit))


def checker_ok(model, full: bool) -> bool:
    import onnx
    try:
        onnx.checker.check_model(model, full_check=full)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- one model, in a worker


@contextlib.contextmanager
def captured_fds():
    """fds 1 and 2 into temporary files for the duration; yields a dict that then holds their texts."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    texts = {}
    streams = sys.stdout, sys.stderr  # under pytest these are not fds 1 and 2: write to the fds meanwhile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = (open(fd, "w", closefd=False) for fd in (1, 2))  # noqa: SIM115
        try:
            yield texts
        finally:
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr = streams
            for fd, target in zip(saved, (1, 2)):
                os.dup2(fd, target)
                os.close(fd)
            for key, f in (("stdout", out), ("stderr", err)):
                f.seek(0)
                texts[key] = f.read().decode("utf-8", "replace")


def run_cli(args: list[str]) -> tuple[int, str]:
    """``onnxrep ARGS`` in this process: (exit code, everything written to fd 2)."""
    from onnxrep.cli import main

    with captured_fds() as texts:
        try:
            main.main(args=args, prog_name="onnxrep", standalone_mode=True)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    return code, texts["stderr"]


def examine(model_dir: Path, out_dir: Path, use_inputs: bool, extra: tuple[str, ...] = ()) -> dict:
    out = out_dir / f"{model_dir.name}.onnx"
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    args = ["optimize", str(model_dir / "model.onnx"), str(out)]
    data_set = model_dir / "test_data_set_0"
    if use_inputs and data_set.is_dir():
        args += ["--inputs", str(data_set)]
    args += extra
    code, stderr = run_cli(args)
    lines = stderr.strip().splitlines()
    result = {"model": label(model_dir), "code": code, "stderr": stderr.strip()[:2000]}
    if "Traceback (most recent call last)" in stderr:
        return {**result, "class": "traceback"}
    if code == 1:
        return {**result, "class": "internal"}
    if code != 0:
        one_line = len(lines) == 1 and lines[0].startswith("onnxrep: error: ")
        if not one_line or code not in DOCUMENTED or out.exists():
            why = "wrote a file" if out.exists() else "stderr is not one onnxrep line"
            return {**result, "class": "multi-line stderr", "why": why}
        if code == 7 and "cannot run the original" in stderr:
            result["original_runs_on_test_data"] = _runs_on_test_data(model_dir)
        return {**result, "class": "refusal"}
    if lines or not out.exists():
        return {**result, "class": "multi-line stderr", "why": "exit 0 with stderr" if lines else "no file"}
    return {**result, **_check_output(model_dir, out)}


def _runs_on_test_data(model_dir: Path) -> bool:
    import onnx
    model = onnx.load(model_dir / "model.onnx")
    data = test_data(model_dir, model)
    return data is not None and not isinstance(run_ort(model, data[0]), str)


def _check_output(model_dir: Path, out: Path) -> dict:
    import onnx

    original, optimized = onnx.load(model_dir / "model.onnx"), onnx.load(out)
    for full in (True, False):
        if checker_ok(original, full):
            if not checker_ok(optimized, full):
                return {"class": "checker", "why": f"full_check={full}"}
            break
    data = test_data(model_dir, original)
    if data is None:
        return {"class": "ok", "compared": "no test data"}
    feeds, expected = data
    reference = run_ort(original, feeds)
    actual = run_ort(optimized, feeds)
    if isinstance(reference, str):
        if isinstance(actual, str):
            return {"class": "ok", "compared": "onnxruntime runs neither"}
        return {"class": "ok", "compared": "onnxruntime runs the optimized model only"}
    if isinstance(actual, str):
        return {"class": "wrong output", "why": f"onnxruntime fails on the output: {actual}"}
    matches = len(reference) == len(expected) and close(expected, reference)
    target = expected if matches else reference
    if not (len(actual) == len(target) and close(target, actual, atol=1e-7, scaled=1e-5)):
        return {"class": "wrong output", "why": "differs from the " + ("expected" if matches else "original's")}
    return {"class": "ok", "compared": "expected outputs" if matches else "the original's outputs"}


def worker(use_inputs: bool, extra: tuple[str, ...]) -> None:
    """Read model directories from stdin, one per line; write one JSON result per line to (the real) stdout."""
    channel = os.fdopen(os.dup(1), "w")
    out_dir = Path(tempfile.mkdtemp(prefix="onnxrep-corpus-"))
    try:
        for line in sys.stdin:
            model_dir = Path(line.rstrip("\n"))
            try:
                result = examine(model_dir, out_dir, use_inputs, extra)
            except Exception as error:  # the harness itself failed: show it, do not hide it as ok
                result = {"model": label(model_dir), "class": "crash", "why": f"harness: {error!r}"}
            channel.write(json.dumps(result) + "\n")
            channel.flush()
    finally:
        for f in out_dir.iterdir():
            f.unlink()
        out_dir.rmdir()


# ---------------------------------------------------------------- the parent


def run_all(models: list[Path], jobs: int, flags: list[str], progress: bool) -> list[dict]:
    todo: queue.Queue = queue.Queue()
    for m in models:
        todo.put(m)
    results: list[dict] = []
    lock = threading.Lock()
    command = [sys.executable, __file__, "--worker", *flags]

    def start():
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def drive():
        proc = start()
        while True:
            try:
                model = todo.get_nowait()
            except queue.Empty:
                break
            timer = threading.Timer(TIMEOUT, proc.kill)
            timer.start()
            try:
                proc.stdin.write(f"{model}\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            timer.cancel()
            if line:
                result = json.loads(line)
            else:
                proc.kill()
                proc.wait()
                result = {"model": label(model), "class": "crash",
                          "why": f"worker died (exit {proc.returncode}) or took over {TIMEOUT} s"}
                proc = start()
            with lock:
                results.append(result)
                if progress:
                    print(f"\r{len(results)}/{len(models)} {result['model'][:60]:<60}", end="", file=sys.stderr)
        proc.stdin.close()
        proc.wait()

    threads = [threading.Thread(target=drive) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if progress:
        print(file=sys.stderr)
    return sorted(results, key=lambda r: r["model"])


def summary(results: list[dict]) -> str:
    counts = collections.Counter(r["class"] for r in results)
    lines = [f"{len(results)} models"]
    lines += [f"  {c:<18} {counts[c]:>5}" for c in CLASSES if counts[c] or c in ("ok", "refusal")]
    refusals = collections.Counter(r["code"] for r in results if r["class"] == "refusal")
    lines += [f"    refusal exit {code}: {n}" for code, n in sorted(refusals.items())]
    suspicious = [r for r in results if r.get("original_runs_on_test_data")]
    if suspicious:
        lines.append(f"    exit 7 'cannot run the original' where it runs on its test data: {len(suspicious)}")
    compared = collections.Counter(r.get("compared") for r in results if r["class"] == "ok")
    lines += [f"    ok, compared with {how}: {n}" if how.startswith(("expected", "the")) else f"    ok, {how}: {n}"
              for how, n in sorted(compared.items(), key=lambda kv: -kv[1]) if how]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--random-inputs", action="store_true", help="do not pass --inputs test_data_set_0")
    parser.add_argument("--no-verify", action="store_true", help="pass --no-verify (exercise every rewrite)")
    parser.add_argument("--node-dir", type=Path, help="where the generated node tests live (made if missing)")
    parser.add_argument("--match", action="append", default=[], help="only models whose kind/name contains this")
    parser.add_argument("--json", type=Path, help="write every result as JSON")
    parser.add_argument("--show", action="append", default=[], help="print the models of this class with stderr")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(not args.random_inputs, ("--no-verify",) if args.no_verify else ())
        return 0
    models = [m for m in corpus(args.node_dir) if not args.match or any(s in label(m) for s in args.match)]
    flags = [f for f, on in (("--random-inputs", args.random_inputs), ("--no-verify", args.no_verify)) if on]
    results = run_all(models, args.jobs, flags, sys.stderr.isatty())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    for r in results:
        if r["class"] in args.show or "all" in args.show:
            detail = r.get("why") or r.get("compared") or ""
            print(f"{r['class']}: {r['model']} exit {r.get('code')} {detail}\n    "
                  + r.get("stderr", "").replace("\n", "\n    "))
    print(summary(results))
    return int(any(r["class"] not in ("ok", "refusal") for r in results))


if __name__ == "__main__":
    sys.exit(main())
