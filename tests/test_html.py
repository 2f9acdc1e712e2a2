"""``--html``: a self-contained page, through the console script: the verification and the totals first, each
rewritten block drawn before → after (no edge through a box), an index, a legend; shown in a real browser."""

from __future__ import annotations

import html
import json
import re
import struct
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import integration
import pytest
from test_cli import MODELS, SAMPLE, onnxrep_cmd

FIXTURES = Path(__file__).parent / "fixtures" / "torch"
VOID = {"meta", "br", "img", "input", "link", "hr"}
SVG_VOID = {"rect", "line", "path", "circle", "ellipse", "polyline", "polygon"}  # written self-closed


class Checker(HTMLParser):
    """Every element closed, in order; nothing fetched from anywhere (links only to anchors of the page)."""

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.links, self.ids = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        assert "src" not in attrs and attrs.get("href", "#").startswith("#"), (tag, attrs)
        self.links += [attrs["href"][1:]] if "href" in attrs else []
        self.ids += [attrs["id"]] if "id" in attrs else []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        assert tag in SVG_VOID, tag

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, (tag, self.stack[-3:])


def check_page(path: Path) -> str:
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert "script" not in checker.tags and "url(" not in page and "@import" not in page
    assert set(checker.links) <= set(checker.ids) and len(set(checker.ids)) == len(checker.ids)
    for svg in page.split("<svg")[1:]:
        edges_avoid_boxes(ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>"))  # well-formed XML too
    return page


def edges_avoid_boxes(svg: ET.Element) -> None:
    """No point of any edge (sampled along its curves) lies inside a box."""
    ns = "{http://www.w3.org/2000/svg}"
    boxes = [tuple(float(r.get(k)) for k in ("x", "y", "width", "height")) for r in svg.iter(f"{ns}rect")]
    for path in svg.iter(f"{ns}path"):
        for px, py in _points(path.get("d")):
            for x, y, w, h in boxes:
                assert not (x + 1 < px < x + w - 1 and y + 1 < py < y + h - 1), (path.get("d"), (x, y, w, h))


def _points(d: str):
    """Points along an SVG path of absolute M, L and C commands."""
    here = None
    for command, numbers in re.findall(r"([MLC])([^MLC]*)", d):
        values = [float(v) for v in re.findall(r"-?[\d.]+", numbers)]
        points = list(zip(values[::2], values[1::2]))
        if command == "C":
            (ax, ay), (bx, by), (cx, cy) = points
            for t in (i / 40 for i in range(41)):
                u = 1 - t
                yield (u**3 * here[0] + 3 * u * u * t * ax + 3 * u * t * t * bx + t**3 * cx,
                       u**3 * here[1] + 3 * u * u * t * ay + 3 * u * t * t * by + t**3 * cy)
        elif command == "L":
            for t in (i / 40 for i in range(41)):
                yield here[0] + t * (points[0][0] - here[0]), here[1] + t * (points[0][1] - here[1])
        here = points[-1]


def test_optimize_html_draws_every_rewritten_block(tmp_path):
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--html", tmp_path / "r.html")
    assert result.returncode == 0, result.stderr
    page = check_page(tmp_path / "r.html")
    rewrites = json.loads(onnxrep_cmd("inspect", SAMPLE, "--json", tmp_path / "i.json").stdout and
                          (tmp_path / "i.json").read_text())["rewrites"]
    assert len(rewrites) == 24 and all(r["node"] in page for r in rewrites)
    assert page.count("<h3") == 8 and page.count("<svg") == 16  # 8 blocks, before and after
    assert "Conv 3x3 s2" in page and page.count(">BN</text>") == 21  # every BN drawn before, none after
    line = next(x for x in result.stdout.splitlines() if x.startswith("verification: passed"))
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<(td|th|p|li|h\d|div)\b", r" <\1", page))).split())
    assert text.index(line) < text.index("nodes 61 19") < text.index("Rewritten blocks")  # the result first
    for row in ("nodes 61 19 −68.9%", "parameters 96,682 84,346 −12.8%", "file size 385.2 KB 331.9 KB",
                "multiply-adds at input=1x3x32x32 3.07 M 2.77 M −10.0%"):  # the MMACs of docs/benchmarks.md
        assert row in text, row
    assert "/48 48 groups" in text and "s2 stride 2" in text  # the legend
    assert page.count('<li><a href="#block-') == 8  # the index


def test_identity_branch_is_drawn_around_the_boxes(tmp_path):
    """RepVGG's identity BN skips two rows to its Add: drawn straight, it would cross a BN and the first Add."""
    onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--html", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    drawing = page.split('<h3 id="block-2">add37</h3>')[1].split("</svg>")[0].split("<svg", 1)[1]
    svg = ET.fromstring("<svg" + drawing + "</svg>")
    ns = "{http://www.w3.org/2000/svg}"
    boxes = [(g.find(f"{ns}text").text, g.find(f"{ns}rect")) for g in svg.iter(f"{ns}g")]
    rows = sorted({float(r.get("y")) for _, r in boxes})
    assert len(rows) == 5 and len(boxes) == 8  # input; two convs and the identity BN; two BNs; Add; Add
    edges_avoid_boxes(svg)
    (identity,), (last,) = ([r for label, r in boxes if label == name and float(r.get("y")) == rows[row]]
                            for name, row in (("BN", 1), ("Add", 4)))
    x1, y1 = float(identity.get("x")) + 75, float(identity.get("y")) + 34
    x2, y2 = float(last.get("x")) + 75, float(last.get("y"))
    ET.SubElement(svg, f"{ns}path", d=f"M{x1},{y1} L{x2},{y2}")  # the edge as it was drawn before
    with pytest.raises(AssertionError):
        edges_avoid_boxes(svg)


def test_inspect_html_on_dbb_names_every_rewrite_and_explains_refusals(tmp_path):
    result = onnxrep_cmd("inspect", FIXTURES / "dbb.ts.train.onnx", "--html", tmp_path / "d.html",
                         "--json", tmp_path / "d.json")
    assert result.returncode == 0, result.stderr
    page = check_page(tmp_path / "d.html")
    rewrites = json.loads((tmp_path / "d.json").read_text())["rewrites"]
    assert all(r["node"] in page for r in rewrites if r["rule"] != "fold_constants")
    assert page.count("<h3") == 3 and "fold_constants</code> ×506" in page and len(page) < 200_000
    assert "verification: not run (inspect writes nothing" in page
    refused = onnxrep_cmd("inspect", FIXTURES / "repvit.ts.train.onnx", "--html", tmp_path / "v.html")
    page = check_page(tmp_path / "v.html")
    assert refused.returncode == 0 and "Left as they were (6)" in page
    assert page.count("class=reason>") == 6 and "closes a GELU" in page


def test_html_usage_errors(tmp_path):
    batch = onnxrep_cmd("optimize", SAMPLE, MODELS / "acnet.train.onnx", "-o", tmp_path / "out", "--html",
                        tmp_path / "r.html")
    assert batch.returncode == 2 and "--html" in batch.stderr and not (tmp_path / "out").exists()
    same = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--html", tmp_path / "o.onnx")
    assert same.returncode == 8 and same.stderr.startswith("onnxrep: error: --html")
    assert list(tmp_path.iterdir()) == []


def chromium(tmp_path: Path, *args) -> None:
    """Headless chromium, as the environment's notes run it: no network, a fresh profile."""
    profile = tmp_path / "profile"
    subprocess.run([integration.program("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={profile}", *map(str, args)],
                   capture_output=True, timeout=120, check=True)


@pytest.mark.parametrize("model", [SAMPLE, FIXTURES / "mobileone.ts.train.onnx"], ids=lambda p: p.name)
def test_a_real_browser_shows_the_verification_first(model, tmp_path):
    result = onnxrep_cmd("optimize", model, tmp_path / "o.onnx", "--html", tmp_path / "r.html")
    line = next(x for x in result.stdout.splitlines() if x.startswith("verification: passed"))
    shot = tmp_path / "r.png"
    chromium(tmp_path, "--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}",
             (tmp_path / "r.html").as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1200, 900)
    assert len(png) > 20_000  # drawn, not blank
    pdf = tmp_path / "r.pdf"  # the text as laid out and shown: printed, then read back
    chromium(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", (tmp_path / "r.html").as_uri())
    text = subprocess.run([integration.program("pdftotext"), pdf, "-"], capture_output=True, text=True,
                          check=True).stdout
    shown = " ".join(text.split())
    assert shown.startswith(f"onnxrep: {model.name} {line} ")  # the first thing on the page
    assert "Rewritten blocks" in shown and "multiply-adds" in shown


def test_multiply_adds_count_at_the_sizes_verification_defaults_to():
    from onnxrep.report import macs
    from onnxrep.verify import feeds

    assert (macs.DEFAULT_BATCH, macs.DEFAULT_DIM) == (feeds.DEFAULT_BATCH, feeds.DEFAULT_DIM)
    import onnx
    model = onnx.load(FIXTURES / "mobileone.ts_hw.train.onnx")  # batch, height and width dynamic
    sizes = macs.input_sizes(model)
    assert list(sizes.values()) == [(1, 8, 32, 32)]
    assert macs.multiply_adds(model, sizes) * 4 == macs.multiply_adds(model, {k: (2, 8, 64, 32) for k in sizes})


def test_rolled_back_rewrites_are_named_under_the_verification(tmp_path):
    import onnx
    from helpers import broken_rule

    from onnxrep import api
    from onnxrep.report import html as page_of
    from onnxrep.rules import RULES_BY_NAME

    model = onnx.load(SAMPLE)
    optimized, report = api.optimize(model, rules=(RULES_BY_NAME["fold_conv_affine"], broken_rule()))
    (tmp_path / "r.html").write_text(page_of.render(model, optimized, report, "r"), encoding="utf-8")
    page = check_page(tmp_path / "r.html")
    verdict = page.split('<p class="verdict passed">')[1].split("</p>")[0]
    assert '8 rewrite(s) rolled back, the model verifies without them: <a href="#rolled-back">' in verdict
    assert page.count("rolled back: the local check of") == 8 and "Rolled back (8)" in page
