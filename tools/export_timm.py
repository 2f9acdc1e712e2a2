"""Export real timm networks to ONNX, training-time and deploy (timm's reparameterize_model), both exporters.

    python tools/export_timm.py mobileone_s0 [more names] --out DIR --size 224 [--exporters ts,dynamo]
    python tools/export_timm.py --families --out DIR      # the smallest model of every fused family

For each model (random weights, fixed seed) it calibrates random BatchNorm statistics so activations
stay O(1), and writes, batch 1, float32:

    <out>/<name>.<ts|dynamo>.<train|deploy>.onnx

"ts" is torch.onnx.export(dynamo=False, opset_version=17), "dynamo" torch.onnx.export(dynamo=True) with
its default opset and optimizations: the files users make. "deploy" is timm.utils.reparameterize_model
on a copy of the same model. Both files are checked in onnxruntime (graph optimizations off) against
torch's output. Then `onnxrep optimize` (the one installed beside this Python) runs on each train file
into <out>/onnxrep/, and <out>/manifest.json, <out>/README.txt and <out>/DONE are written.
Files are written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn


# --- timm without torchvision -------------------------------------------------------------------------
# timm imports torchvision (FrozenBatchNorm2d, transforms) and PIL at import time; neither is usable here
# and no model built below needs them. Any attribute of these stub modules is a dummy class (whose own
# attributes are dummy classes too), so `from torchvision.ops.misc import FrozenBatchNorm2d`, isinstance
# checks against it, and `Image.BILINEAR` at module level all work.
class _Dummy(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy(name, (), {})


class _StubModule(types.ModuleType):
    __getattr__ = _Dummy.__getattr__


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    roots = ("torchvision", "PIL")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__, module.__version__ = [], "10.0"   # timm parses PIL.__version__
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())
import timm  # noqa: E402
from timm.utils import reparameterize_model  # noqa: E402

OPSET_TS = 17
RTOL, ATOL = 1e-4, 1e-4      # atol relative to max |y|: float32 rounding through 20+ blocks reaches ~3e-5
ONNXREP = Path(sys.executable).with_name("onnxrep")
# The smallest model of each family reparameterize_model fuses: input size, create_model arguments.
# 128 keeps files and runs small; MobileOne-S0 stays at 224 (issue 12); LeViT's attention biases are
# sized for its img_size; TinyViT's default head is ImageNet-22k's (21841 classes), 1000 here.
FAMILIES = {
    "mobileone_s0": (224, {}), "repvgg_a0": (128, {}), "fastvit_t8": (128, {}),
    "fastvit_mci0": (128, {}), "repghostnet_050": (128, {}), "repvit_m0_9": (128, {}),
    "ghostnetv3_050": (128, {}), "levit_128s": (128, {"img_size": 128}),
    "tiny_vit_5m_224": (128, {"num_classes": 1000}), "efficientvit_m0": (128, {}),
    "efficientvim_m1": (128, {}), "shvit_s1": (128, {}), "iformer_t": (128, {}),
    "lcnetv2_small": (128, {}), "nextvit_small": (128, {}),
}


# --- model ----------------------------------------------------------------------------------------------
def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def build(name: str, seed: int, size: int = 224, **kwargs) -> nn.Module:
    """timm's `name` with random weights and random, calibrated BatchNorm statistics, in eval mode.

    Every BN gets gain U(0.5, 1.5) and bias N(0, 0.1), then its running statistics are measured on
    random inputs (train mode, momentum=None: the cumulative average of the batch statistics), so each
    BN normalizes what really reaches it and activations stay O(1); last the statistics are perturbed
    (mean ± 0.1 std, var × U(0.8, 1.25)) so that no BN is an identity of its batch.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    g = torch.Generator().manual_seed(seed)
    norms = _norms(model)
    with torch.no_grad():
        for bn in norms:
            if bn.affine:
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for _ in range(4):
            model(torch.randn(4, 3, size, size, generator=g))
        for bn in norms:
            bn.momentum = 0.1
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.1 * std * torch.randn(bn.num_features, generator=g))
            bn.running_var.mul_(torch.exp(0.22 * (2 * torch.rand(bn.num_features, generator=g) - 1)))
    return model.eval()


def max_activation(model: nn.Module, x: torch.Tensor) -> float:
    """Largest |value| any leaf module's tensor output takes on x: activations O(1) inside too."""
    seen = [0.0]

    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            seen[0] = max(seen[0], float(output.abs().max()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen[0]


# --- export and checks ------------------------------------------------------------------------------------
def export(model: nn.Module, x: torch.Tensor, path: Path, exporter: str) -> None:
    """Export to a temporary file beside `path`, check it, rename it to `path`."""
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=path.parent)
    os.close(fd)
    try:
        names = {"input_names": ["input"], "output_names": ["output"]}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "ts":
                torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=OPSET_TS, **names)
            else:
                program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, **names)
                program.save(tmp, external_data=False)
        onnx_model = onnx.load(tmp)
        _drop_stack_traces(onnx_model)
        onnx.checker.check_model(onnx_model)
        onnx.save_model(onnx_model, tmp)
        os.chmod(tmp, 0o644)          # mkstemp's 0600 is not what a written file should have
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    """dynamo records each node's Python stack (absolute paths): dropped so files do not depend on the host."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def histogram(path: Path) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in onnx.load(path).graph.node).items()))


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """Max abs error relative to the output's largest magnitude."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def check(label: str, got: np.ndarray, want: np.ndarray) -> float:
    err = rel_error(got, want)
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL * float(np.abs(want).max())):
        print(f"  WARNING {label}: max abs error {err:.2e} of max |y| beyond rtol {RTOL}/atol {ATOL}")
    return err


# --- one model ----------------------------------------------------------------------------------------------
def export_model(name: str, size: int, exporters: list[str], out: Path, seed: int, **kwargs) -> dict:
    """Build, reparameterize, export with each exporter; one manifest entry."""
    model = build(name, seed, size, **kwargs)
    nets = {"train": model, "deploy": reparameterize_model(copy.deepcopy(model))}
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        inner = max_activation(model, x)
        want = {kind: net(x).numpy() for kind, net in nets.items()}
    scale = float(np.abs(want["train"]).max())
    twin = rel_error(want["deploy"], want["train"])
    finite = bool(np.isfinite(want["train"]).all())
    print(f"{name}: {size}x{size}, output max |y| {scale:.3g} (finite: {finite}), inner max {inner:.3g}, "
          f"torch deploy vs train {twin:.2e} of max |y|")
    entry = {"input_shape": [1, 3, size, size], "create_model_kwargs": kwargs, "seed": seed,
             "max_abs_output": scale, "max_abs_activation": inner, "torch_deploy_vs_train": twin, "exporters": {}}
    for exporter in exporters:
        entry["exporters"][exporter] = export_both(name, exporter, nets, x, want["train"], out)
    return entry


def export_both(name: str, exporter: str, nets: dict, x: torch.Tensor, want: np.ndarray, out: Path) -> dict:
    """Train and deploy files of one exporter, checked against torch's train output."""
    rec = {k: {} for k in ("files", "nodes", "ops", "error_vs_torch", "export_seconds", "bytes", "failed")}
    for kind, net in nets.items():
        path = out / f"{name}.{exporter}.{kind}.onnx"
        start = time.perf_counter()
        try:
            export(net, x, path, exporter)
            rec["export_seconds"][kind] = round(time.perf_counter() - start, 2)
            rec["error_vs_torch"][kind] = check(path.name, run_ort(path, x.numpy()), want)
        except Exception as error:    # torch.onnx and onnxruntime raise many types: record, go on
            rec["failed"][kind] = f"{type(error).__name__}: {_first_line(error)}"
            print(f"  {path.name}: FAILED {rec['failed'][kind]}")
            continue
        rec["files"][kind] = path.name
        rec["ops"][kind] = histogram(path)
        rec["nodes"][kind] = sum(rec["ops"][kind].values())
        rec["bytes"][kind] = path.stat().st_size
        print(f"  {path.name:44s} {rec['nodes'][kind]:5d} nodes {rec['bytes'][kind] / 2**20:6.1f} MB "
              f"{rec['export_seconds'][kind]:6.1f} s  ort vs torch {rec['error_vs_torch'][kind]:.2e} of max |y|")
    return rec


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


# --- onnxrep on the train files -----------------------------------------------------------------------------
def run_onnxrep(train: Path, scratch: Path) -> dict:
    """`onnxrep optimize` on one train file: exit code, nodes after, its rolled-back lines, seconds.

    When it writes nothing (verification failed, ...), a second run with --no-verify tells how far the
    rewrites themselves get (`unverified`).
    """
    rec = _onnxrep_once(train, scratch, [])
    if rec["exit_code"]:
        rec["unverified"] = _onnxrep_once(train, scratch, ["--no-verify"])
    return rec


def _onnxrep_once(train: Path, scratch: Path, extra: list[str]) -> dict:
    result_path, report_path = scratch / train.name, scratch / f"{train.stem}.json"
    report_path.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([str(ONNXREP), "optimize", str(train), str(result_path), "--force",
                           "--json", str(report_path), *extra], capture_output=True, text=True, timeout=3600)
    rec = {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - start, 2)}
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    after = report.get("after") or {}
    rec["nodes_after"], rec["ops_after"] = after.get("nodes"), after.get("ops")
    rec["rules_fired"] = report.get("rules_fired")
    rec["rolled_back"] = _rolled_back_lines(proc.stdout)
    rec["verification"] = _verification_line(proc.stdout)
    if proc.returncode:
        rec["error"] = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    return rec


def verify_deploy(train: Path, deploy: Path) -> dict:
    """Does onnxrep's own verification (default tolerances) accept timm's deploy file for the train file?

    Outputs only: the two files are separate exports, so a tensor name both have (dynamo's "relu_28")
    need not be the same tensor; the deploy file's inner tensors are renamed apart first.
    """
    from onnxrep.verify.check import verify_at  # the onnxrep beside this Python; only this check needs it

    result = verify_at(onnx.load(train), _rename_inner(onnx.load(deploy), "deploy/"))
    failing = [o.name for o in result.outputs if not o.passed]
    return {"passed": result.passed, "max_abs_error": result.max_abs_error, "failing": failing}


def _rename_inner(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    graph = model.graph
    keep = {v.name for v in [*graph.input, *graph.output]} | {t.name for t in graph.initializer}
    inner = {name for node in graph.node for name in node.output if name and name not in keep}
    for node in graph.node:
        node.input[:] = [prefix + n if n in inner else n for n in node.input]
        node.output[:] = [prefix + n if n in inner else n for n in node.output]
    for value in graph.value_info:
        if value.name in inner:
            value.name = prefix + value.name
    return model


def _rolled_back_lines(stdout: str) -> list[str]:
    lines, inside = [], False
    for line in stdout.splitlines():
        if line.startswith("rolled back"):
            inside = True
        elif inside and not line.startswith("  "):
            inside = False
        if inside:
            lines.append(line.strip())
    return lines[1:]      # the entries; the header only repeats their count


def _verification_line(stdout: str) -> str | None:
    return next((line for line in stdout.splitlines() if line.startswith("verification:")), None)


def onnxrep_all(manifest: dict, names: list[str], out: Path) -> None:
    scratch = out / "onnxrep"
    scratch.mkdir(exist_ok=True)
    for name in names:
        for rec in manifest["models"].get(name, {}).get("exporters", {}).values():
            if "train" not in rec["files"]:
                continue
            rec["onnxrep"] = run_onnxrep(out / rec["files"]["train"], scratch)
            if "deploy" in rec["files"]:
                rec["onnxrep_verify_of_deploy"] = verify_deploy(out / rec["files"]["train"],
                                                                out / rec["files"]["deploy"])
            r = rec["onnxrep"]
            unverified = f" (--no-verify: {r['unverified']['nodes_after']})" if "unverified" in r else ""
            print(f"  onnxrep {rec['files']['train']:40s} exit {r['exit_code']} nodes "
                  f"{rec['nodes']['train']} -> {r['nodes_after']}{unverified} (deploy {rec['nodes'].get('deploy')}), "
                  f"rolled back {len(r['rolled_back'])}, {r['seconds']:.1f} s")
            write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")



# --- manifest, README, CLI -----------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update({"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "opset": {"ts": OPSET_TS, "dynamo": "default"},
                     "errors": "max abs error of onnxruntime (optimizations off) vs torch's train output, "
                               "divided by max |y|"})
    manifest.setdefault("models", {})
    return manifest


def annotate(manifest: dict) -> None:
    """Per exporter, the ops whose count differs between onnxrep's result (or its --no-verify run) and
    timm's deploy file: {op: [onnxrep, deploy]}."""
    for entry in manifest["models"].values():
        for rec in entry["exporters"].values():
            rep, deploy = rec.get("onnxrep"), rec["ops"].get("deploy")
            if not rep or deploy is None:
                continue
            after = rep["ops_after"] or (rep.get("unverified") or {}).get("ops_after")
            if after is not None:
                rec["ops_onnxrep_vs_deploy"] = {op: [after.get(op, 0), deploy.get(op, 0)]
                                                for op in sorted(set(after) | set(deploy))
                                                if after.get(op, 0) != deploy.get(op, 0)}


def _deploy_verdict(rec: dict) -> str:
    verdict = rec.get("onnxrep_verify_of_deploy")
    return "-" if verdict is None else "ok" if verdict["passed"] else "FAIL"


def _gap(rec: dict) -> str:
    compute = ("BatchNormalization", "Conv", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div")
    gap = rec.get("ops_onnxrep_vs_deploy", {})
    return " ".join(f"{op}:{a}/{d}" for op, (a, d) in gap.items() if op in compute)


def write_readme(out: Path, manifest: dict) -> None:
    rows = []
    for name, entry in manifest["models"].items():
        for exporter, rec in entry["exporters"].items():
            rep = rec.get("onnxrep", {})
            after = rep.get("nodes_after") or "-"
            if "unverified" in rep:     # exit code, then the --no-verify run's node count
                after = f"x{rep['exit_code']}/{rep['unverified'].get('nodes_after')}"
            rows.append(f"{name:18s} {exporter:6s} {'x'.join(map(str, entry['input_shape'])):12s} "
                        f"{rec['nodes'].get('train', '-')!s:>6} {rec['nodes'].get('deploy', '-')!s:>6} "
                        f"{after!s:>8} {len(rep.get('rolled_back', [])):>4} {_deploy_verdict(rec):>4} "
                        f"{_gap(rec)}{'; '.join(f'{k}: {v}' for k, v in rec['failed'].items())}")
    header = (f"{'model':18s} {'export':6s} {'input':12s} {'train':>6} {'deploy':>6} {'onnxrep':>8} "
              f"{'rb':>4} {'dv':>4} onnxrep/deploy counts of compute ops that differ; failures")
    text = f"""Real timm networks, exported as users make them: made by tools/export_timm.py (onnxrep repo).

<name>.<ts|dynamo>.<train|deploy>.onnx, batch 1, float32, input "input", output "output".
  ts      torch.onnx.export(dynamo=False, opset_version={OPSET_TS})
  dynamo  torch.onnx.export(dynamo=True), default opset and optimizations
  train   timm.create_model(name, pretrained=False), random weights, random BatchNorm gains/biases and
          statistics calibrated on random inputs (activations O(1)), eval mode
  deploy  timm.utils.reparameterize_model on a copy of the same model (timm's own fusion)
Versions: torch {manifest['torch']}, timm {manifest['timm']}, onnx {manifest['onnx']}.
manifest.json: per model and exporter the files, node counts, op histograms, errors vs torch
(relative to max |y|), export seconds, sizes, and `onnxrep optimize` on the train file (exit code,
nodes after, rolled-back lines, seconds; outputs in onnxrep/). DONE appears when the set is complete.
Table: node counts; onnxrep = nodes after `onnxrep optimize`, or xCODE/N when it exited with CODE and
wrote nothing (N: nodes after the same run with --no-verify); rb = rewrites it rolled back;
dv = does onnxrep's verification (default rtol/atol, outputs only) accept timm's deploy file against
the train file, i.e. would it accept an exact conversion.

{header}
""" + "\n".join(rows) + "\n"
    write_atomic(out / "README.txt", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="timm model names (default: --families)")
    parser.add_argument("--families", action="store_true", help="the smallest model of each fused family")
    parser.add_argument("--out", type=Path, default=Path("/work/timm_models"))
    parser.add_argument("--size", type=int, help="input size (default: the family's, else 224)")
    parser.add_argument("--exporters", default="ts,dynamo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-onnxrep", action="store_true", help="do not run onnxrep on the train files")
    parser.add_argument("--onnxrep-only", action="store_true",
                        help="no export: run onnxrep on the train files the manifest lists (with "
                             "--skip-onnxrep: only rewrite manifest.json and README.txt)")
    args = parser.parse_args(argv)
    names = args.names or (list(FAMILIES) if args.families else parser.error("give model names or --families"))
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    manifest = load_manifest(args.out)
    for name in [] if args.onnxrep_only else names:
        size, kwargs = FAMILIES.get(name, (224, {}))
        start = time.perf_counter()
        try:
            entry = export_model(name, args.size or size, args.exporters.split(","), args.out, args.seed,
                                 **kwargs)
        except Exception as error:   # a model that does not build: record the reason, go on
            entry = {"failed": f"{type(error).__name__}: {_first_line(error)}", "exporters": {}}
            print(f"{name}: FAILED {entry['failed']}")
        entry["seconds"] = round(time.perf_counter() - start, 1)
        manifest["models"][name] = entry
        write_atomic(args.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    if not args.skip_onnxrep:
        onnxrep_all(manifest, names, args.out)
    annotate(manifest)
    write_atomic(args.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    write_readme(args.out, manifest)
    if set(FAMILIES) <= set(manifest["models"]) and not args.skip_onnxrep:
        (args.out / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


if __name__ == "__main__":
    main()
