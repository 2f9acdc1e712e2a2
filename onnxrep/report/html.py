"""A self-contained HTML page of a run (inline SVG, no scripts, nothing fetched): the verification result
and the totals first, then each rewritten block drawn before → after with an index to them, a legend,
and every refusal with its reason.

A block is found from a rewrite's output tensor, whose name rewrites keep: walking up from it through
the nodes the run removed (in the original) or added (in the result) until unchanged tensors are
reached. Constant arithmetic (what ``fold_constants`` folds) is not drawn; it is counted.

A drawing is layered top to bottom: a node sits one row below the lowest node it reads, and an edge
that skips rows passes through a slot of its own in each row it crosses, so no edge is drawn through a
box (each piece of an edge stays in the gap between two rows).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape

import onnx

from onnxrep.report import macs
from onnxrep.report.report import HOUSEKEEPING, ModelStats, Report, _size, _verification_line

BOX_W, BOX_H, GAP_X, GAP_Y, MAX_DRAWN = 150, 34, 18, 34, 60
PASS_W = 0  # the width of an edge's slot in a row it crosses (GAP_X keeps it apart from its neighbours)
SHORT = {"BatchNormalization": "BN", "GlobalAveragePool": "GlobalAvgPool", "AveragePool": "AvgPool"}
JOINS = ("Add", "Sum", "Sub", "Concat")
CONVS = ("Conv", "Gemm", "MatMul")


def render(original: onnx.ModelProto, optimized: onnx.ModelProto, report: Report, title: str,
           verified: bool = True) -> str:
    """The page, as one string. ``verified=False``: a run that does not verify (``inspect``)."""
    before, after = _Graph(original), _Graph(optimized)
    removed = before.signatures - after.signatures
    added = after.signatures - before.signatures
    applied = [(r.rule, r.anchor, r.node) for r in report.applied]
    anchors = [t for t in dict.fromkeys(t for r, t, _ in applied if r not in HOUSEKEEPING)
               if t in after.producer and t in before.producer]  # the others are inside a bigger block
    blocks = []
    for tensor in anchors:
        stop = set(anchors) - {tensor}  # the output of another block, read by this one
        old, new = before.block(tensor, removed, stop), after.block(tensor, added, stop)
        inside = list(dict.fromkeys((r, w) for r, t, w in applied if t == tensor or t in old.tensors))
        name = next(w for r, t, w in reversed(applied) if t == tensor)
        blocks.append(_Rewritten(tensor, name, old, new, [(r, w) for r, w in inside if r not in HOUSEKEEPING],
                                 Counter(r for r, _ in inside if r in HOUSEKEEPING)))
    shapes = getattr(report.verification, "input_shapes", None)
    sizes = macs.input_sizes(original, shapes)
    cost = (macs.multiply_adds(original, sizes), macs.multiply_adds(optimized, sizes))
    verification = (_verification_line(report.verification) if verified or report.verification is not None
                    else "verification: not run (inspect writes nothing; optimize verifies what it writes)")
    return _page(title, report, blocks, verification, cost, sizes)


@dataclass
class _Rewritten:
    """One block: its output tensor, the node that names it, the drawings, the rewrites inside it."""

    tensor: str
    name: str
    before: _Block
    after: _Block
    rules: list[tuple[str, str]]  # (rule, node), housekeeping aside
    housekeeping: Counter


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.dims = {t.name: tuple(t.dims) for t in graph.initializer}
        self.constant = set(self.dims) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.signatures = {_signature(n) for n in graph.node}
        # A node is "dynamic" when some input data (not only shapes of it) reaches it: the rest is constant
        # arithmetic, not drawn.
        dynamic = {i.name for i in graph.input} - self.constant
        for node in graph.node:
            if node.op_type not in ("Shape", "Size") and any(i in dynamic for i in node.input):
                dynamic.update(node.output)
        self.dynamic = dynamic

    def block(self, tensor: str, changed: set, stop: set) -> _Block:
        """The changed nodes computing ``tensor``, up to unchanged tensors, in topological order."""
        seen, stack, nodes = set(), [tensor], []
        while stack:
            name = stack.pop()
            node = self.producer.get(name)
            if name in seen or name in stop or node is None or _signature(node) not in changed:
                continue
            seen.add(name)
            nodes.append(node)
            stack += [i for i in node.input if i]
        order = {id(n): i for i, n in enumerate(self.producer.values())}
        nodes = sorted({id(n): n for n in nodes}.values(), key=lambda n: order[id(n)])
        drawn = [n for n in nodes if any(o in self.dynamic for o in n.output)]
        return _Block(self, drawn, len(nodes) - len(drawn), {o for n in nodes for o in n.output})


def _signature(node: onnx.NodeProto) -> bytes:
    return node.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class _Pass:
    """An edge's slot in a row it crosses."""

    edge: int
    row: int


class _Block:
    def __init__(self, graph: _Graph, nodes: list, hidden: int, tensors: set):
        self.graph, self.nodes, self.hidden, self.tensors = graph, nodes, hidden, tensors

    def svg(self) -> str:
        if not self.nodes:
            return "<p class=note>no node drawn</p>"
        if len(self.nodes) > MAX_DRAWN:
            return f"<p class=note>{len(self.nodes)} nodes: too many to draw</p>"
        layout = _Layout(self.graph, self.nodes)
        width, height = layout.size
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
                 f'viewBox="0 0 {width:.0f} {height:.0f}">']
        parts += [f'<path d="{d}" class="edge" />' for d in layout.edge_paths()]
        for key in layout.inputs:
            x, y = layout.corner(key)
            parts.append(f'<g class="input"><title>{escape(key)}</title><rect x="{x:.0f}" y="{y:.0f}" '
                         f'width="{BOX_W}" height="{BOX_H}" rx="17" />'
                         f'<text x="{x + BOX_W / 2:.0f}" y="{y + 22:.0f}">{escape(_short(key))}</text></g>')
        for node in self.nodes:
            x, y = layout.corner(node.output[0])
            name, label = escape(node.name or node.op_type), escape(_label(node, self.graph))
            kind = "conv" if node.op_type in CONVS else "join" if node.op_type in JOINS else "op"
            parts.append(f'<g class="node {kind}"><title>{escape(node.op_type)} {name}</title>'
                         f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="4" />'
                         f'<text x="{x + BOX_W / 2:.0f}" y="{y + 22:.0f}">{label}</text></g>')
        return "".join(parts) + "</svg>"


class _Layout:
    """Rows, the order within each row (fewer crossings), x positions, and the edges through their slots."""

    def __init__(self, graph: _Graph, nodes: list):
        made = {o: n.output[0] for n in nodes for o in n.output}  # any output → its node's key (first output)
        self.inputs = list(dict.fromkeys(i for n in nodes for i in n.input
                                         if i and i not in made and i in graph.dynamic))
        key_of = {**{i: i for i in self.inputs}, **made}
        row = self.row = {i: 0 for i in self.inputs}
        for node in nodes:  # topological order
            row[node.output[0]] = 1 + max((row[key_of[i]] for i in node.input if i in key_of), default=0)
        self.edges = [(key_of[i], node.output[0]) for node in nodes
                      for i in dict.fromkeys(node.input) if i in key_of]
        self.rows: dict[int, list] = {}
        for key in self.inputs + [n.output[0] for n in nodes]:
            self.rows.setdefault(row[key], []).append(key)
        self.chains = []  # per edge: source, its slots in the rows between, target
        for e, (source, target) in enumerate(self.edges):
            slots = [_Pass(e, r) for r in range(row[source] + 1, row[target])]
            for slot in slots:
                self.rows[slot.row].append(slot)
            self.chains.append([source, *slots, target])
        self.above: dict = {k: [] for r in self.rows.values() for k in r}
        self.below: dict = {k: [] for r in self.rows.values() for k in r}
        for chain in self.chains:
            for upper, lower in zip(chain, chain[1:]):
                self.above[lower].append(upper)
                self.below[upper].append(lower)
        self._order()
        self._place()

    def _order(self) -> None:
        """Each row sorted by the mean position of its neighbours, sweeping down and up (barycenters)."""
        for sweep in range(6):
            down = sweep % 2 == 0
            for r in sorted(self.rows, reverse=not down):
                position = {k: i for row in self.rows.values() for i, k in enumerate(row)}
                near = self.above if down else self.below
                here = self.rows[r]
                self.rows[r] = sorted(here, key=lambda k: (
                    sum(position[n] for n in near[k]) / len(near[k]) if near[k] else position[k], position[k]))

    def _place(self) -> None:
        """x of every box and slot: each pulled towards its neighbours' mean, rows kept in order and apart."""
        self.x: dict = {}
        for row in self.rows.values():
            left = 0.0
            for key in row:
                self.x[key] = left + _width(key) / 2
                left += _width(key) + GAP_X
        for sweep in range(8):
            near = self.above if sweep % 2 == 0 else self.below
            for r in sorted(self.rows, reverse=sweep % 2 == 1):
                row = self.rows[r]
                want = [sum(self.x[n] for n in near[k]) / len(near[k]) if near[k] else self.x[k] for k in row]
                gaps = [(_width(a) + _width(b)) / 2 + GAP_X for a, b in zip(row, row[1:])]
                forward, backward = list(want), list(want)
                for i in range(1, len(row)):  # the closest placement keeping order, from the left ...
                    forward[i] = max(want[i], forward[i - 1] + gaps[i - 1])
                for i in range(len(row) - 2, -1, -1):  # ... and from the right; their mean keeps both gaps
                    backward[i] = min(want[i], backward[i + 1] - gaps[i])
                for key, a, b in zip(row, forward, backward):
                    self.x[key] = (a + b) / 2
        shift = GAP_X - min(self.x[k] - _width(k) / 2 for k in self.x)
        self.x = {k: v + shift for k, v in self.x.items()}
        width = max(self.x[k] + _width(k) / 2 for k in self.x) + GAP_X
        self.size = (width, (max(self.rows) + 1) * (BOX_H + GAP_Y) + GAP_Y)

    def top(self, key) -> float:
        return GAP_Y + (key.row if isinstance(key, _Pass) else self.row[key]) * (BOX_H + GAP_Y)

    def corner(self, key) -> tuple[float, float]:
        return self.x[key] - BOX_W / 2, self.top(key)

    def edge_paths(self) -> list[str]:
        """SVG path data of each edge: from the bottom of its source to the top of its target, through its
        slots; edges leaving (entering) one box spread along its bottom (top) edge, ordered by where they go."""
        def ports(edges_at, end) -> dict:
            spread = {}
            for key, edges in edges_at.items():
                edges.sort(key=lambda e: self.x[self.chains[e][end]])
                step = min(16.0, BOX_W / (len(edges) + 1))
                spread.update({(e, key): (i - (len(edges) - 1) / 2) * step for i, e in enumerate(edges)})
            return spread

        leaving, entering = {}, {}
        for e, chain in enumerate(self.chains):
            leaving.setdefault(chain[0], []).append(e)
            entering.setdefault(chain[-1], []).append(e)
        out_port, in_port = ports(leaving, 1), ports(entering, -2)
        paths = []
        for e, chain in enumerate(self.chains):
            source, target = chain[0], chain[-1]
            x, y = self.x[source] + out_port[(e, source)], self.top(source) + BOX_H
            d = f"M{x:.1f},{y:.1f}"
            for slot in chain[1:-1]:
                top = self.top(slot)
                d += _curve(x, y, self.x[slot], top) + f" L{self.x[slot]:.1f},{top + BOX_H:.1f}"
                x, y = self.x[slot], top + BOX_H
            d += _curve(x, y, self.x[target] + in_port[(e, target)], self.top(target))
            paths.append(d)
        return paths


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    """A cubic from (x1, y1) down to (x2, y2), vertical at both ends: it stays between y1 and y2."""
    middle = (y1 + y2) / 2
    return f" C{x1:.1f},{middle:.1f} {x2:.1f},{middle:.1f} {x2:.1f},{y2:.1f}"


def _width(key) -> float:
    return PASS_W if isinstance(key, _Pass) else BOX_W


def _label(node: onnx.NodeProto, graph: _Graph) -> str:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    label = SHORT.get(node.op_type, node.op_type)
    if node.op_type == "Conv":
        dims = graph.dims.get(node.input[1]) if len(node.input) > 1 else None
        kernel = dims[2:] if dims else tuple(attrs.get("kernel_shape", ()))
        label += " " + "x".join(map(str, kernel)) if kernel else ""
        label += f" /{attrs['group']}" if attrs.get("group", 1) > 1 else ""
        label += f" s{attrs['strides'][0]}" if any(s > 1 for s in attrs.get("strides", ())) else ""
        label += f" d{attrs['dilations'][0]}" if any(d > 1 for d in attrs.get("dilations", ())) else ""
    elif node.op_type == "AveragePool" and "kernel_shape" in attrs:
        label += " " + "x".join(map(str, attrs["kernel_shape"]))
    return label


def _nodes(count: int) -> str:
    return f"{count} node" + ("" if count == 1 else "s")


def _short(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em;margin-bottom:.4em}h2{font-size:1.15em;margin-top:2em}h3{font-size:1em;margin:1.5em 0 .3em}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
.verdict{padding:.6em .9em;border-radius:6px;border:1px solid}
.verdict.passed{background:#e9f7ee;border-color:#2e8b57}.verdict.failed{background:#fdecec;border-color:#c94a4a}
.verdict.skipped{background:#f4f4f4;border-color:#999}
.summary{display:flex;gap:3em;flex-wrap:wrap;align-items:flex-start}.summary caption{text-align:left;font-weight:bold}
.totals tr:first-child th{border-bottom:1px solid #ccc}
.legend{border-left:3px solid #ddd;padding:.2em 1em;color:#444;font-size:.92em}.legend p{margin:.3em 0}
.index ol{columns:3 22em;padding-left:2em}.index li{margin:.1em 0;break-inside:avoid}
.pair{display:flex;align-items:center;gap:1.5em;flex-wrap:wrap;border:1px solid #ddd;padding:.8em;border-radius:6px}
.arrow{font-size:2em;color:#888}.side p{margin:0 0 .3em;color:#666;font-size:.9em}
svg text{font:12px system-ui,sans-serif;text-anchor:middle}
.edge{stroke:#999;stroke-width:1.5;fill:none}.input rect{fill:#f4f4f4;stroke:#999}
.node rect{fill:#e8f0fe;stroke:#4a76c9}.node.conv rect{fill:#dff3e4;stroke:#2e8b57}
.node.join rect{fill:#fde8e8;stroke:#c94a4a}
.key{display:inline-block;width:1.6em;height:.9em;border:1px solid;border-radius:3px;vertical-align:-1px}
.key.conv{background:#dff3e4;border-color:#2e8b57}.key.join{background:#fde8e8;border-color:#c94a4a}
.key.op{background:#e8f0fe;border-color:#4a76c9}.key.input{background:#f4f4f4;border-color:#999;border-radius:8px}
.rules{margin:.2em 0;color:#444}.note{color:#888}code{font-size:.95em}
li{margin:.2em 0}.reason{color:#a33}
"""

LEGEND = """<div class=legend><p><strong>Reading the drawings.</strong> Each block is drawn before → after, data
flowing top to bottom. <span class="key input"></span> a tensor the block reads;
<span class="key conv"></span> Conv, Gemm, MatMul; <span class="key join"></span> a join (Add, Sum, Sub, Concat);
<span class="key op"></span> any other op. Hover a box for its node's name.</p>
<p><code>Conv 3x3 /48 s2 d2</code>: kernel height x width; <code>/48</code> 48 groups (a depthwise conv has one
group per channel); <code>s2</code> stride 2; <code>d2</code> dilation 2 (omitted when 1).
<code>BN</code> BatchNormalization, <code>AvgPool</code> AveragePool.
Constant arithmetic (shapes, indices: what <code>fold_constants</code> folds) is counted, not drawn.</p></div>"""


def _change(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return ""
    return "0" if before == after else f"{(after - before) / before:+.1%}".replace("-", "−")


def _totals(report: Report, cost: tuple[int | None, int | None], sizes: dict) -> str:
    b, a = report.before, report.after
    at = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in sizes.items())

    def row(name, before, after, show):
        return (f"<tr><td>{name}</td><td>{show(before)}</td><td>{show(after)}</td>"
                f"<td>{_change(before, after)}</td></tr>")

    def count(n):
        return "-" if n is None else f"{n:,}"

    return ("<table class=totals><tr><th></th><th>before</th><th>after</th><th>change</th></tr>"
            + row("nodes", b.nodes, a.nodes, count) + row("parameters", b.params, a.params, count)
            + row("file size", b.size_bytes, a.size_bytes, _size)
            + row("multiply-adds" + (f" <span class=note>at {escape(at)}</span>" if at else ""), *cost,
                  lambda n: "-" if n is None else f"{n / 1e6:,.2f} M")
            + "</table>")


def _ops(before: ModelStats, after: ModelStats) -> str:
    ops = sorted(set(before.ops) | set(after.ops))
    return ("<table class=ops><tr><th>op</th><th>before</th><th>after</th></tr>"
            + "".join(f"<tr><td>{escape(op)}</td><td>{before.ops.get(op, 0)}</td><td>{after.ops.get(op, 0)}"
                      f"</td></tr>" for op in ops) + "</table>")


def _page(title: str, report: Report, blocks: list, verification: str, cost, sizes) -> str:
    status = verification.split(",")[0].removeprefix("verification: ").split()[0]
    kind = {"passed": "passed", "FAILED": "failed"}.get(status, "skipped")
    head, sep, rest = verification.partition(",")
    out = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>onnxrep: {escape(title)}</title>"
           f"<style>{STYLE}</style></head><body><h1>onnxrep: {escape(title)}</h1>"
           f"<p class=\"verdict {kind}\"><strong>{escape(head)}</strong>{escape(sep + rest)}"
           + (f"<br>{len(report.dropped)} rewrite(s) rolled back, the model verifies without them: "
              f"<a href=\"#rolled-back\">which, and why</a>" if report.dropped else "") + "</p>"]
    if report.before and report.after:
        out.append(f"<div class=summary>{_totals(report, cost, sizes)}{_ops(report.before, report.after)}</div>")
    out += [f"<p>{escape(line)}</p>" for line in report.fired_lines()]
    out.append(LEGEND)
    out.append(f"<nav class=index><h2 id=blocks>Rewritten blocks ({len(blocks)})</h2>")
    if len(blocks) > 1:
        out.append("<ol>" + "".join(
            f"<li><a href=\"#block-{i}\">{escape(b.name)}</a> <span class=note>{len(b.before.nodes)} → "
            f"{_nodes(len(b.after.nodes))}</span></li>" for i, b in enumerate(blocks, 1)) + "</ol>")
    sections = [("refusals", f"left as they were ({len(report.refusals)})")]
    if report.dropped:
        sections.append(("rolled-back", f"rolled back ({len(report.dropped)})"))
    out.append("<p>Also: " + ", ".join(f"<a href=\"#{a}\">{t}</a>" for a, t in sections) + "</p></nav>")
    for i, b in enumerate(blocks, 1):
        hidden = f"<p>and {_nodes(b.before.hidden)} of constant arithmetic, not drawn</p>" if b.before.hidden else ""
        also = "".join(f"; <code>{escape(r)}</code> ×{n}" for r, n in sorted(b.housekeeping.items()))
        out.append(f"<h3 id=\"block-{i}\">{escape(b.name)}</h3>"
                   "<p class=rules>" + "; ".join(f"<code>{escape(r)}</code>: {escape(w)}" for r, w in b.rules)
                   + f"{also}</p><div class=pair><div class=side><p>before: {_nodes(len(b.before.nodes))}</p>"
                   f"{hidden}{b.before.svg()}</div><div class=arrow>→</div><div class=side><p>after: "
                   f"{_nodes(len(b.after.nodes))}</p>{b.after.svg()}</div></div>")
    out.append(f"<h2 id=refusals>Left as they were ({len(report.refusals)})</h2><ul>")
    out += [f"<li><code>{escape(f.rule)}</code> at {escape(f.where)}: <span class=reason>{escape(f.reason)}"
            f"</span></li>" for f in report.refusals]
    out.append("</ul>")
    out += [f"<p>{escape(line)}</p>" for line in report.hints()]
    if report.dropped:
        out.append(f"<h2 id=rolled-back>Rolled back ({len(report.dropped)})</h2><ul>")
        out += [f"<li><code>{escape(f.rule)}</code> at {escape(f.where)}: <span class=reason>{escape(f.reason)}"
                f"</span></li>" for f in report.dropped]
        out.append("</ul>")
    return "".join(out) + "</body></html>\n"
