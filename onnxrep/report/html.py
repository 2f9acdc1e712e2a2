"""A self-contained HTML page of a run: each rewritten block drawn before → after (inline SVG, no
scripts, nothing fetched), the rules that fired, and every refusal with its reason beside it.

A block is found from a rewrite's output tensor, whose name rewrites keep: walking up from it through
the nodes the run removed (in the original) or added (in the result) until unchanged tensors are
reached. Constant arithmetic (what ``fold_constants`` folds) is not drawn; it is counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape

import onnx

from onnxrep.report.report import HOUSEKEEPING, Report

BOX_W, BOX_H, GAP_X, GAP_Y, MAX_DRAWN = 150, 34, 18, 30, 60
SHORT = {"BatchNormalization": "BN", "GlobalAveragePool": "GlobalAvgPool", "AveragePool": "AvgPool"}


def render(original: onnx.ModelProto, optimized: onnx.ModelProto, report: Report, title: str) -> str:
    """The page, as one string."""
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
    house = Counter(r for r, _ in dict.fromkeys(report.rewrites()) if r in HOUSEKEEPING)
    return _page(title, report, blocks, house)


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


class _Block:
    def __init__(self, graph: _Graph, nodes: list, hidden: int, tensors: set):
        self.graph, self.nodes, self.hidden, self.tensors = graph, nodes, hidden, tensors

    def svg(self) -> str:
        if not self.nodes:
            return "<p class=note>no node drawn</p>"
        if len(self.nodes) > MAX_DRAWN:
            return f"<p class=note>{len(self.nodes)} nodes: too many to draw</p>"
        made = {o: n for n in self.nodes for o in n.output}
        inputs = list(dict.fromkeys(i for n in self.nodes for i in n.input
                                    if i and i not in made and i in self.graph.dynamic))
        depth = {i: 0 for i in inputs}
        for node in self.nodes:  # topological order
            level = 1 + max((depth.get(i, 0) for i in node.input if i in depth), default=0)
            depth.update({o: level for o in node.output})
        rows: dict[int, list[str]] = {}
        for key in inputs + [n.output[0] for n in self.nodes]:
            rows.setdefault(depth[key], []).append(key)
        width = max(len(r) for r in rows.values()) * (BOX_W + GAP_X) + GAP_X
        height = (max(rows) + 1) * (BOX_H + GAP_Y) + GAP_Y
        place = {key: (GAP_X + i * (BOX_W + GAP_X) + (width - len(row) * (BOX_W + GAP_X) - GAP_X) / 2,
                       GAP_Y + level * (BOX_H + GAP_Y))
                 for level, row in rows.items() for i, key in enumerate(row)}
        for node in self.nodes:  # every output of a node sits where its first output is
            place.update({o: place[node.output[0]] for o in node.output})
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
                 f'viewBox="0 0 {width:.0f} {height:.0f}">']
        for node in self.nodes:
            x, y = place[node.output[0]]
            for source in dict.fromkeys(i for i in node.input if i in place):
                sx, sy = place[source]
                parts.append(f'<line x1="{sx + BOX_W / 2:.0f}" y1="{sy + BOX_H:.0f}" x2="{x + BOX_W / 2:.0f}" '
                             f'y2="{y:.0f}" class="edge" />')
        for key in inputs:
            x, y = place[key]
            parts.append(f'<g class="input"><title>{escape(key)}</title><rect x="{x:.0f}" y="{y:.0f}" '
                         f'width="{BOX_W}" height="{BOX_H}" rx="17" />'
                         f'<text x="{x + BOX_W / 2:.0f}" y="{y + 22:.0f}">{escape(_short(key))}</text></g>')
        for node in self.nodes:
            x, y = place[node.output[0]]
            name, label = escape(node.name or node.op_type), escape(_label(node, self.graph))
            parts.append(f'<g class="node {escape(node.op_type)}"><title>{name}</title>'
                         f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="4" />'
                         f'<text x="{x + BOX_W / 2:.0f}" y="{y + 22:.0f}">{label}</text></g>')
        return "".join(parts) + "</svg>"


def _label(node: onnx.NodeProto, graph: _Graph) -> str:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    label = SHORT.get(node.op_type, node.op_type)
    if node.op_type == "Conv":
        dims = graph.dims.get(node.input[1]) if len(node.input) > 1 else None
        kernel = dims[2:] if dims else tuple(attrs.get("kernel_shape", ()))
        label += " " + "x".join(map(str, kernel)) if kernel else ""
        label += f" /{attrs['group']}" if attrs.get("group", 1) > 1 else ""
        label += f" s{attrs['strides'][0]}" if any(s > 1 for s in attrs.get("strides", ())) else ""
    elif node.op_type == "AveragePool" and "kernel_shape" in attrs:
        label += " " + "x".join(map(str, attrs["kernel_shape"]))
    return label


def _nodes(count: int) -> str:
    return f"{count} node" + ("" if count == 1 else "s")


def _short(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}h3{font-size:1em;margin:1.5em 0 .3em}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
.pair{display:flex;align-items:center;gap:1.5em;flex-wrap:wrap;border:1px solid #ddd;padding:.8em;border-radius:6px}
.arrow{font-size:2em;color:#888}.side p{margin:0 0 .3em;color:#666;font-size:.9em}
svg text{font:12px system-ui,sans-serif;text-anchor:middle}
.edge{stroke:#999;stroke-width:1.5}.input rect{fill:#f4f4f4;stroke:#999}
.node rect{fill:#e8f0fe;stroke:#4a76c9}.node.Conv rect,.node.Gemm rect{fill:#dff3e4;stroke:#2e8b57}
.node.Add rect,.node.Sum rect,.node.Sub rect,.node.Concat rect{fill:#fde8e8;stroke:#c94a4a}
.rules{margin:.2em 0;color:#444}.note{color:#888}code{font-size:.95em}
li{margin:.2em 0}.reason{color:#a33}
"""


def _page(title: str, report: Report, blocks: list, house: Counter) -> str:
    out = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>onnxrep: {escape(title)}</title>"
           f"<style>{STYLE}</style></head><body><h1>onnxrep: {escape(title)}</h1>"]
    if report.before and report.after:
        ops = sorted(set(report.before.ops) | set(report.after.ops))
        out.append("<table><tr><th></th><th>before</th><th>after</th></tr>")
        out += [f"<tr><td>{escape(op)}</td><td>{report.before.ops.get(op, 0)}</td><td>{report.after.ops.get(op, 0)}"
                f"</td></tr>" for op in ops]
        out.append(f"<tr><th>nodes</th><th>{report.before.nodes}</th><th>{report.after.nodes}</th></tr></table>")
    out += [f"<p>{escape(line)}</p>" for line in report.fired_lines()]
    out.append(f"<h2>Rewritten blocks ({len(blocks)})</h2>")
    for b in blocks:
        hidden = f"<p>and {_nodes(b.before.hidden)} of constant arithmetic, not drawn</p>" if b.before.hidden else ""
        also = "".join(f"; <code>{escape(r)}</code> ×{n}" for r, n in sorted(b.housekeeping.items()))
        out.append(f"<h3 id=\"{escape(b.tensor, quote=True)}\">{escape(b.name)}</h3>"
                   "<p class=rules>" + "; ".join(f"<code>{escape(r)}</code>: {escape(w)}" for r, w in b.rules)
                   + f"{also}</p><div class=pair><div class=side><p>before: {_nodes(len(b.before.nodes))}</p>"
                   f"{hidden}{b.before.svg()}</div><div class=arrow>→</div><div class=side><p>after: "
                   f"{_nodes(len(b.after.nodes))}</p>{b.after.svg()}</div></div>")
    if house:
        out.append("<p class=note>Housekeeping, not drawn: "
                   + escape(", ".join(f"{r} ×{n}" for r, n in sorted(house.items()))) + "</p>")
    out.append(f"<h2>Left as they were ({len(report.refusals)})</h2><ul>")
    out += [f"<li><code>{escape(f.rule)}</code> at {escape(f.where)}: <span class=reason>{escape(f.reason)}"
            f"</span></li>" for f in report.refusals]
    out.append("</ul>")
    out += [f"<p>{escape(line)}</p>" for line in report.hints()]
    if report.dropped:
        out.append(f"<h2>Rolled back ({len(report.dropped)})</h2><ul>")
        out += [f"<li><code>{escape(f.rule)}</code> at {escape(f.where)}: <span class=reason>{escape(f.reason)}"
                f"</span></li>" for f in report.dropped]
        out.append("</ul>")
    return "".join(out) + "</body></html>\n"
