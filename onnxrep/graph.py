"""Small helpers over an onnx-graphsurgeon graph: constants, consumers, emitting convs.

Rules read the graph through these and never mutate a tensor that anything
outside their match reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep import kernels
from onnxrep.spec import ConvSpec, Refusal

DEFAULT_DOMAINS = ("", "ai.onnx", None)


def is_op(node: gs.Node | None, *ops: str) -> bool:
    return node is not None and node.op in ops and node.domain in DEFAULT_DOMAINS


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


@dataclass
class Context:
    """One sweep's view of the graph. Graph outputs and names are indexed once."""

    graph: gs.Graph
    graph_outputs: set[int] = field(default_factory=set)
    graph_inputs: set[int] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, graph: gs.Graph, overridable: frozenset[str] = frozenset()) -> Context:
        """``overridable``: initializers that are also graph inputs (which graphsurgeon hides)."""
        tensors = graph.tensors()
        inputs = {id(t) for t in graph.inputs} | {id(tensors[n]) for n in overridable if n in tensors}
        names = set(tensors) | {n.name for n in graph.nodes}
        return cls(graph, {id(t) for t in graph.outputs}, inputs, names)

    def nodes(self) -> Iterator[gs.Node]:
        """The graph's nodes as the sweep began, less those a rewrite has cut out since."""
        for node in list(self.graph.nodes):
            if node.outputs:
                yield node

    def constant(self, tensor: gs.Tensor, what: str) -> np.ndarray | Refusal:
        """The value of a tensor that is provably constant, or why it is not."""
        if id(tensor) in self.graph_inputs:
            return Refusal(f"{what} '{tensor.name}' is a graph input (it can be overridden at run time)")
        value = constant_value(tensor)
        if value is None:
            return Refusal(f"{what} '{tensor.name}' is not a constant")
        return value

    def private(self, tensor: gs.Tensor, reader: gs.Node) -> bool:
        """True when ``reader`` is the only thing that reads ``tensor``."""
        return (id(tensor) not in self.graph_outputs
                and len(tensor.outputs) == 1 and tensor.outputs[0] is reader)

    def readers(self, tensor: gs.Tensor, besides: gs.Node | None = None) -> str:
        """Who reads ``tensor`` (other than ``besides``), for refusal messages."""
        names = [n.name or n.op for n in tensor.outputs if n is not besides]
        if id(tensor) in self.graph_outputs:
            names.append("a graph output")
        return ", ".join(names)

    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.names:
            candidate, i = f"{name}_{i}", i + 1
        self.names.add(candidate)
        return candidate

    def detach(self, nodes: Iterable[gs.Node]) -> None:
        """Cut nodes out of the graph; cleanup() later drops them and their dangling tensors."""
        for node in nodes:
            self.names.discard(node.name)
            node.inputs.clear()
            node.outputs.clear()

    def emit_conv(self, name: str, source: gs.Tensor, spec: ConvSpec, output: gs.Tensor,
                  dtype: np.dtype, with_bias: bool = True) -> gs.Node:
        """Add one Conv node computing ``spec`` of ``source`` into ``output``, with fresh weights.

        A spec with no spatial axes is emitted as a Gemm (weight (out, in), transB=1).
        """
        name = self.unique(name)
        weight = kernels.regroup(spec.weight, spec.group, 1) if not spec.spatial_dims else spec.weight
        inputs = [source, gs.Constant(self.unique(f"{name}.weight"), weight.astype(dtype))]
        if with_bias:
            inputs.append(gs.Constant(self.unique(f"{name}.bias"), spec.bias.astype(dtype)))
        output.inputs.clear()
        if not spec.spatial_dims:
            node = gs.Node("Gemm", name=name, attrs={"transB": 1}, inputs=inputs, outputs=[output])
            self.graph.nodes.append(node)
            return node
        attrs = {
            "kernel_shape": list(spec.kernel_shape),
            "strides": list(spec.strides),
            "pads": list(spec.pads),
            "dilations": list(spec.dilations),
            "group": spec.group,
        }
        node = gs.Node("Conv", name=name, attrs=attrs, inputs=inputs, outputs=[output])
        self.graph.nodes.append(node)
        return node


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor: an initializer, a Constant node, or either behind Identity."""
    seen = 0
    while isinstance(tensor, gs.Variable) and seen < 16:
        node = producer(tensor)
        if is_op(node, "Identity") and node.inputs:
            tensor, seen = node.inputs[0], seen + 1
            continue
        if is_op(node, "Constant"):
            return _constant_node_value(node)
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], np.int64)
    return None


def sharing(tensor: gs.Tensor, reader: gs.Node, ctx: Context) -> Refusal | None:
    """A refusal when a constant read by ``reader`` is also read by another node or an output.

    Rewrites always emit fresh weights, but folding a shared weight would keep
    both copies in the model, so a shared weight is left as it is.
    """
    while True:
        if not ctx.private(tensor, reader):
            return Refusal(f"weight '{tensor.name}' is shared with {ctx.readers(tensor, reader)}")
        node = producer(tensor)
        if not is_op(node, "Identity"):
            return None
        tensor, reader = node.inputs[0], node
