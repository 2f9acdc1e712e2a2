"""The package's layout holds: imports go down the layers only, no module imports itself back through
others, and the commands that need no verification do not load onnxruntime (a comment says so in
api.py and cli.py; this checks it).

Layers, lowest first (docs/internals.md draws them):
  errors, refusal, testing        what everything may raise or use
  algebra, io                     pure numpy math; model files
  ir, verify                      the graph IR (lifting, lowering, replacements); verification
  rewrite                         the rule contract, the engine, the ledger
  rules                           one module per rule, and the registry
  report, options                 what a run did; what a run does
  api → cli                       the entry points
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnxrep"
MODELS = Path(__file__).resolve().parent.parent / "models"

LAYER = {
    "onnxrep.errors": 0, "onnxrep.refusal": 0, "onnxrep.testing": 0,
    "onnxrep.algebra": 1, "onnxrep.io": 1,
    "onnxrep.ir": 2, "onnxrep.verify": 2,
    "onnxrep.rewrite": 3,
    "onnxrep.rules": 4,
    "onnxrep.report": 5, "onnxrep.options": 5,
    "onnxrep.api": 6,
    "onnxrep.cli": 7,
    "onnxrep.__main__": 8,
    # the package root: as an importer it is the top (its lazy attributes load the API); imported, it
    # gives __version__ and nothing else, like errors
    "onnxrep": 0,
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str, importer: bool = False) -> int:
    if importer and module == "onnxrep":
        return max(LAYER.values())
    while module not in LAYER:
        module = module.rpartition(".")[0]
    return LAYER[module]


def _imports(tree: ast.AST, module: str) -> list[tuple[str, bool]]:
    """(imported onnxrep module, at module level) for every import in the file."""
    found = []
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onnxrep"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(n if (PACKAGE.parent / n.replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE.parent / n.replace(".", "/")).is_dir() else node.module, id(node) in top)
                      for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("onnxrep")]
    return found


MODULES = {_module(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    layer = _layer(module, importer=True)
    upward = [name for name, _ in _imports(MODULES[module], module) if _layer(name) > layer]
    assert not upward, f"{module} (layer {layer}) imports {upward} from above"


def test_no_import_cycles():
    graph = {m: {n for n, top in _imports(tree, m) if top and n in MODULES and n != m} for m, tree in MODULES.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in graph[module]:
            if state.get(other) == 1:
                raise AssertionError(" → ".join([*path, module, other]))
            if other not in state:
                visit(other, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_report_does_not_import_the_rules():
    for module, tree in MODULES.items():
        if module.startswith("onnxrep.report"):
            assert not [n for n, _ in _imports(tree, module) if n.startswith("onnxrep.rules")], module


@pytest.mark.parametrize("argv", [
    None, ["--help"], ["rules"], ["inspect", str(MODELS / "repvgg.train.onnx")],
], ids=["import", "help", "rules", "inspect"])
def test_no_onnxruntime_without_verification(argv):
    """``import onnxrep`` (and the API module), ``onnxrep --help``, ``rules`` and ``inspect`` never load
    onnxruntime: it costs a second and is only needed to verify."""
    run = "import onnxrep, onnxrep.api, onnxrep.report.report" if argv is None else (
        "from onnxrep.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    assert not exit.code, exit.code")
    code = f"import sys\n{run}\nprint('onnxruntime' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"

