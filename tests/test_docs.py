"""The docs are true: every command and Python block in README.md and docs/*.md runs here.

A fenced block says what it is: ```bash (commands, run one by one from a copy of the clone, so that nothing
is written into the clone itself), ```python (run there too), ```text (output, a drawing or a synopsis: not
run; the README's sample report is compared with what the command prints). A fenced block directly after
a line ``<!-- include: PATH -->`` is not run but must equal the text of PATH: a worked example that cannot
go stale. Commands that take a minute or more are marked slow: ``python -m pytest -q -m slow`` runs them
(.ci/run does, after the README's test command).

Not run here: installs (``pip install``: they would change the environment the suite runs in; .ci/run runs
the README's in a fresh venv, and every extra they name must exist), and the commands of NOT_RUN, each with
its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
INCLUDE = re.compile(r"^<!-- include: (\S+) -->$")

#: Commands the suite does not run, and why.
NOT_RUN = {
    "python -m pytest -q": "the test suite itself, which runs this module (.ci/run runs it)",
    "python -m pytest -q -m slow": "the slow tests of the suite, this module's among them (.ci/run runs them)",
    "ONNXREP_FUZZ_EXAMPLES=1000 python -m pytest -q tests/test_fuzz.py tests/test_properties.py":
        "a soak run: 1000 examples per property test where the suite runs tens, each run takes minutes",
}
#: Commands that take a minute or more (or about so on a loaded machine).
SLOW = ("python tools/bench.py", "python tools/bench_throughput.py", "python tools/corpus.py",
        "python tools/fixture_table.py")
#: Files a command reads that an earlier block makes with PyTorch, which the suite does not need: a fixture
#: exported the same way stands in where that block did not run.
STAND_INS = {"model.train.onnx": ROOT / "tests" / "fixtures" / "torch" / "repvgg.ts.train.onnx"}
@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence
    language: str
    text: str
    include: str | None  # the file it must equal

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
            marker = INCLUDE.match(lines[i - 1]) if i else None
            found.append(Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                               marker.group(1) if marker else None))
            i = end
        i += 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]


def commands() -> list:
    params = []
    for block in ALL:
        if block.language != "bash" or block.include:
            continue
        for offset, line in enumerate(block.text.splitlines()):
            for k, command in enumerate(c.strip() for c in line.split(" && ")):
                if not command or command.startswith("#"):
                    continue
                marks = [pytest.mark.slow] if command.startswith(SLOW) else []
                where = f"{block.path.name}:{block.line + 1 + offset}" + (f"#{k + 1}" if k else "")
                params.append(pytest.param(command, id=where, marks=marks))
    return params


@pytest.fixture(scope="module")
def clone_copy(tmp_path_factory) -> Path:
    """A copy of the clone's files (not its .git or caches): commands run there, tools find their paths there."""
    copy = tmp_path_factory.mktemp("clone") / "onnxrep"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist", "*.png"))
    return copy


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of the clone but its caches: what a command must leave as it is."""
    skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(root).parts) and ".egg-info" not in str(p)}


def test_every_block_says_what_it_is():
    assert ALL, "no fenced block found"
    for block in ALL:
        assert block.language in ("bash", "python", "text"), f"{block.name}: ```{block.language}"
    for path in DOCS:  # indented code blocks would be commands nobody runs
        text = path.read_text(encoding="utf-8")
        outside = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
        assert not re.search(r"\n\n {4}\S", outside), f"{path.name}: an indented code block; fence it"


def test_commands_not_run_are_still_in_the_docs():
    assert set(NOT_RUN) <= {c.values[0] for c in commands()}, "NOT_RUN names a command the docs no longer have"


@pytest.mark.parametrize("command", [c for c in commands() if c.values[0] not in NOT_RUN])
def test_command_runs(command, clone_copy):
    if command.startswith("pip install"):
        pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
        extras = re.findall(r"^([\w-]+) = \[", pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0],
                            re.M)
        for extra in re.findall(r"\.\[([\w,-]+)\]", command):
            assert set(extra.split(",")) <= set(extras), command
        assert re.search(r"pip install (-e )?(\.|\"\.\[)", command) or "torch" in command, command
        return
    for name, source in STAND_INS.items():
        if name in command.split() and not (clone_copy / name).exists():
            shutil.copy(source, clone_copy / name)
    before, copied = _files(ROOT), _files(clone_copy)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", command], cwd=clone_copy, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert _files(ROOT) == before, f"{command} wrote into the clone"
    rewritten = [name for name, stat in _files(clone_copy).items() if name in before and copied.get(name) != stat]
    for name in rewritten:  # a tool that makes a committed file (tools/make_samples.py) makes it byte for byte
        assert (clone_copy / name).read_bytes() == (ROOT / name).read_bytes(), f"{command} changed {name}"


def _python_blocks():
    for block in ALL:
        if block.language == "python" and not block.include:
            marks = []
            if "import torch" in block.text:
                marks.append(pytest.mark.slow)
            yield pytest.param(block, id=block.name, marks=marks)


@pytest.mark.parametrize("block", list(_python_blocks()))
def test_python_block_runs(block, clone_copy, monkeypatch, capsys):
    monkeypatch.chdir(clone_copy)
    scope = {"__name__": "__docs__"}
    if "import torch" in block.text:  # the export recipe: a small training-time net stands in for the user's
        torch = pytest.importorskip("torch", reason="the export recipe needs PyTorch")
        sys.path.insert(0, str(clone_copy / "tools"))
        try:
            import torch_blocks
        finally:
            sys.path.remove(str(clone_copy / "tools"))
        def build_model():
            return torch.nn.Sequential(torch_blocks.RepVGGBlock(3, 8), torch_blocks.RepVGGBlock(8, 16, stride=2),
                                       torch_blocks.RepVGGBlock(16, 16))

        torch.save(torch_blocks.randomize_(build_model(), 0).state_dict(), clone_copy / "trained.pth")
        scope["build_model"] = build_model
    exec(compile(block.text, str(block.path), "exec"), scope)
    if "onnxrep.optimize(" in block.text:
        assert "verification: passed" in capsys.readouterr().out
        assert len(onnx.load(clone_copy / "repvgg.onnx").graph.node) == 19
    if "torch.onnx.export" in block.text:
        exported = onnx.load(clone_copy / "model.train.onnx")
        assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_included_blocks_are_their_files():
    for block in (b for b in ALL if b.include):
        assert block.text == (ROOT / block.include).read_text(encoding="utf-8"), \
            f"{block.name} differs from {block.include}: copy the file into the block"


def test_an_include_marker_makes_a_block_a_copy_of_a_file(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Text.\n\n<!-- include: onnxrep/rules/x.py -->\n```python\nRULE = 1\n```\n\n```python\nx = 2\n```\n")
    included, plain = blocks(doc)
    assert (included.include, included.text, included.line) == ("onnxrep/rules/x.py", "RULE = 1\n", 4)
    assert plain.include is None and plain.language == "python"


def test_readme_sample_report_is_what_the_command_prints(tmp_path):
    readme = next(b for b in ALL if b.path.name == "README.md" and "rules fired:" in b.text)
    command = next(c.values[0] for c in commands() if c.values[0].startswith("onnxrep optimize models/"))
    args = command.split()[1:]
    result = subprocess.run([shutil.which("onnxrep"), *args[:-1], str(tmp_path / args[-1])], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    printed = [line for line in result.stdout.splitlines() if not line.startswith(("time:", "wrote "))]
    assert readme.text.strip("\n") == "\n".join(printed).strip("\n")


def test_links_point_at_files():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#]+)\)", path.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name}: {target}"


def test_rules_table_is_in_the_order_they_run():
    from onnxrep.rules import RULES_BY_NAME

    table = re.findall(r"^\| `(\w+)` \|", (ROOT / "docs" / "rules.md").read_text(encoding="utf-8"), re.M)
    assert table == list(RULES_BY_NAME)


def test_fixture_table_counts_the_fixtures():
    fixtures = ROOT / "tests" / "fixtures" / "torch"
    rows = re.findall(r"^\| (\w+) \| (\w+) \| \S+ \| (\d+) \| \d+ \| (\d+) \|", (ROOT / "docs" / "fixtures.md")
                      .read_text(encoding="utf-8"), re.M)
    pairs = {p.name.removesuffix(".train.onnx") for p in fixtures.glob("*.train.onnx")}
    assert {f"{block}.{variant}" for block, variant, _, _ in rows} == pairs and len(rows) == len(pairs) == 129
    for block, variant, train, deploy in rows:
        nodes = [len(onnx.load(fixtures / f"{block}.{variant}.{kind}.onnx", load_external_data=False).graph.node)
                 for kind in ("train", "deploy")]
        assert nodes == [int(train), int(deploy)], (block, variant)


def test_readme_lists_every_exit_code():
    from onnxrep.errors import EXIT_CODES

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Exit codes")[1].split("\n## ")[0]
    assert [int(c) for c in re.findall(r"^\| (\d+) \|", section, re.M)] == [code for code, _ in EXIT_CODES]


def _paths_named(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"`((?:onnxrep|tests|tools|models|docs)/[\w/.*-]+\.(?:py|md|onnx|json))`", text)


@pytest.mark.parametrize("path", [*DOCS, ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_every_file_named_exists(path):
    missing = [name for name in _paths_named(path) if not list(ROOT.glob(name))]
    assert not missing, f"{path.name} names files that do not exist: {missing}"


def test_ci_runs_the_readmes_first_two_commands_as_written():
    script = (ROOT / ".ci" / "run").read_text()
    function = script[script.index("readme_command() {"):script.index("\n}\n", script.index("readme_command() {")) + 2]
    readme = [b.text for b in ALL if b.path.name == "README.md" and b.language == "bash"]
    for n in (1, 2):
        printed = subprocess.run(["bash", "-c", f"{function}\nreadme_command {n}"], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout
        assert printed == readme[n - 1] and f'eval "$(readme_command {n})"' in script
