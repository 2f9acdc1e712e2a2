"""``--html``: a self-contained page drawing each rewritten block before → after, through the console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_cli import MODELS, SAMPLE, onnxrep_cmd

FIXTURES = Path(__file__).parent / "fixtures" / "torch"
VOID = {"meta", "br", "img", "input", "link", "hr"}
SVG_VOID = {"rect", "line", "path", "circle", "ellipse", "polyline", "polygon"}  # written self-closed


class Checker(HTMLParser):
    """Every element closed, in order; nothing fetched from anywhere."""

    def __init__(self):
        super().__init__()
        self.stack, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        assert not any(name in ("src", "href") for name, _ in attrs), (tag, attrs)
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
    for svg in page.split("<svg")[1:]:
        ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")  # each drawing is well-formed XML
    return page


def test_optimize_html_draws_every_rewritten_block(tmp_path):
    result = onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--html", tmp_path / "r.html")
    assert result.returncode == 0, result.stderr
    page = check_page(tmp_path / "r.html")
    rewrites = json.loads(onnxrep_cmd("inspect", SAMPLE, "--json", tmp_path / "i.json").stdout and
                          (tmp_path / "i.json").read_text())["rewrites"]
    assert len(rewrites) == 24 and all(r["node"] in page for r in rewrites)
    assert page.count("<h3") == 8 and page.count("<svg") == 16  # 8 blocks, before and after
    assert "Conv 3x3 s2" in page and page.count(">BN<") == 21  # every BN drawn before, none after


def test_inspect_html_on_dbb_names_every_rewrite_and_explains_refusals(tmp_path):
    result = onnxrep_cmd("inspect", FIXTURES / "dbb.ts.train.onnx", "--html", tmp_path / "d.html",
                         "--json", tmp_path / "d.json")
    assert result.returncode == 0, result.stderr
    page = check_page(tmp_path / "d.html")
    rewrites = json.loads((tmp_path / "d.json").read_text())["rewrites"]
    assert all(r["node"] in page for r in rewrites if r["rule"] != "fold_constants")
    assert page.count("<h3") == 3 and "fold_constants</code> ×506" in page and len(page) < 200_000
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


@pytest.mark.skipif(not shutil.which("chromium"), reason="no headless chromium")
def test_page_renders_in_a_headless_browser(tmp_path):
    onnxrep_cmd("optimize", SAMPLE, tmp_path / "o.onnx", "--html", tmp_path / "r.html")
    shot = tmp_path / "r.png"
    subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", (tmp_path / "r.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
