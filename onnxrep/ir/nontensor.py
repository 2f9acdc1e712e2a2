"""Non-tensor values (sequences, optionals, maps) through graphsurgeon, which keeps only tensor types.

graphsurgeon imports an optional or a map as a tensor whose dtype is a whole
TypeProto, and exports it with an error (or a sequence of sequences as a
sequence of tensors). Before export such values lose their dtype (so
graphsurgeon writes an untyped value info), and afterwards every value info
gets back the exact type the original model gave that name.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

#: graphsurgeon warns (on stderr) about what it skips: types and attributes this module restores.
G_LOGGER.severity = max(G_LOGGER.severity, G_LOGGER.ERROR)

#: Attribute types graphsurgeon imports; it drops the others (TYPE_PROTO of Optional, TENSORS, ...).
_KEPT_ATTRIBUTES = {getattr(onnx.AttributeProto, t) for t in
                    ("FLOAT", "INT", "STRING", "TENSOR", "GRAPH", "FLOATS", "INTS", "STRINGS")}


def untype_non_tensors(graph: gs.Graph) -> None:
    """Drop the dtype of every non-tensor value of ``graph`` and its subgraphs (restore_types puts it back)."""
    for g in (graph, *graph.subgraphs(recursive=True)):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor.type not in (None, "tensor_type"):
                tensor.dtype = None


def restore_types(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Give every non-tensor value info of ``model`` the type it had in ``original`` (same name), and
    every node the attributes graphsurgeon dropped (same op type and outputs as in ``original``)."""
    types = {v.name: v.type for g in _graphs(original.graph) for v in _value_infos(g)
             if v.type.WhichOneof("value") not in (None, "tensor_type")}
    dropped = {(n.op_type, tuple(n.output)): [a for a in n.attribute if a.type not in _KEPT_ATTRIBUTES]
               for g in _graphs(original.graph) for n in g.node}
    for g in _graphs(model.graph):
        for value in _value_infos(g):
            if value.name in types:
                value.type.CopyFrom(types[value.name])
        for node in g.node:
            present = {a.name for a in node.attribute}
            node.attribute.extend(a for a in dropped.get((node.op_type, tuple(node.output)), ())
                                  if a.name not in present)


def _value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.output
    yield from graph.value_info


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)
