"""Small helpers over an onnx-graphsurgeon graph: constants, consumers, shapes.

Rules read the graph through these and never mutate a tensor that anything
outside their match reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxrep.refusal import Refused

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
    inferred: Inferred | None = None  # ONNX shape inference, run at most once per sweep and rule
    weight_bytes: int | None = None  # the bytes of all the graph's weights, counted when first asked
    notes: list[Refused] = field(default_factory=list)  # refusals recorded by the match being made
    cache: dict = field(default_factory=dict)  # see memo()

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

    def constant(self, tensor: gs.Tensor, what: str) -> np.ndarray:
        """The value of a tensor that is provably constant; raises Refused when it is not."""
        if id(tensor) in self.graph_inputs:
            raise Refused("graph-input", f"{what} '{tensor.name}' is a graph input (it can be overridden at run time)")
        value = constant_value(tensor)
        if value is None:
            raise Refused("not-constant", f"{what} '{tensor.name}' is not a constant")
        return value

    def maybe_constant(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of a tensor that is provably constant, else None."""
        try:
            return self.constant(tensor, "value")
        except Refused:
            return None

    def note(self, refusal: Refused) -> None:
        """Record a refusal without stopping the match (a join merged apart from one operand); the
        engine reports it with the rule's other refusals."""
        self.notes.append(refusal)

    def memo(self, key: str, compute):
        """A value computed once per sweep and rule (the graph changes between sweeps)."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def dims(self, tensor: gs.Tensor) -> list[int | None] | None:
        """A tensor's shape (None for a dim that is not static) as exported, else as ONNX shape
        inference sees it: inference runs only when an export left a shape out, once per sweep.

        An initializer a caller may override has only its rank known: an override may differ in shape.
        """
        if isinstance(tensor, gs.Constant) and id(tensor) in self.graph_inputs:
            return [None] * len(tensor.shape)
        known = dims(tensor)
        if known is None:
            known = dims(tensor, self._inference().shapes)
        return known

    def elem_type(self, tensor: gs.Tensor) -> int | None:
        """A tensor's ONNX element type, known for sure, else None: a constant's own; for a computed
        tensor or a graph input, what ONNX type inference derives from the graph's inputs and weights
        through each op's schema (exports without value_info, TorchScript's, name no type), when the
        type graphsurgeon holds (from value_info) does not contradict it."""
        if isinstance(tensor, gs.Constant):
            return onnx_elem_type(tensor.dtype)
        inferred = self._inference().types.get(tensor.name)
        held = onnx_elem_type(tensor.dtype)
        return inferred if held in (None, inferred) else None

    def _inference(self) -> Inferred:
        if self.inferred is None:
            self.inferred = infer(self.graph, self.overridable())
        return self.inferred

    def overridable(self) -> set[str]:
        """Names of the initializers that are also graph inputs."""
        return {t.name for t in self.graph.tensors().values()
                if isinstance(t, gs.Constant) and id(t) in self.graph_inputs}

    def private(self, tensor: gs.Tensor, reader: gs.Node, *, measured: bool = False) -> bool:
        """True when ``reader`` is the only thing that reads ``tensor``; with ``measured``, Shape and
        Size nodes may read it too (a rewrite that keeps the shape moves them to its result)."""
        readers = [r for r in tensor.outputs if not (measured and is_op(r, "Shape", "Size"))]
        return id(tensor) not in self.graph_outputs and len(readers) == 1 and readers[0] is reader

    def model_bytes(self) -> int:
        """The bytes of the graph's weights (initializers), from their shapes: no weight is loaded."""
        if self.weight_bytes is None:
            self.weight_bytes = sum(nbytes(t) for t in self.graph.tensors().values() if isinstance(t, gs.Constant))
        return self.weight_bytes

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


def evaluate(node: gs.Node, opset: int, values: list) -> list[np.ndarray]:
    """The node's outputs on ``values`` (one per input, None for an empty one), by ONNX's reference
    implementation at the graph's opset (a lone NodeProto would run at the newest: Unsqueeze-11's
    axes attribute, Split-11's split, ... would then fail or mean something else)."""
    from onnx.reference import ReferenceEvaluator
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    proto = OnnxExporter.export_node(node)
    feeds = {name: value for name, value in zip(proto.input, values) if name}
    graph = onnx.helper.make_graph([proto], "evaluate", [onnx.ValueInfoProto(name=n) for n in feeds],
                                   [onnx.ValueInfoProto(name=n) for n in proto.output])
    outputs = ReferenceEvaluator(graph, opsets={"": opset}).run(None, feeds)
    return [np.asarray(v) for v in outputs]


#: A shared weight whose private copy costs at most this fraction of the model's weights is copied.
#: One in a thousand keeps the growth of any real model invisible (a 10 MB model grows by at most
#: 10 KB a copy, the report counts every byte); in the small test graphs no kernel is that small, so a
#: shared kernel there is left, with its reason.
SHARED_COPY_FRACTION = 1 / 1000


def check_sharing(tensor: gs.Tensor, reader: gs.Node, ctx: Context) -> None:
    """Raises Refused when a constant read by ``reader`` is also read by another node or an output,
    and is too big to copy.

    Rewrites never edit a weight: they emit fresh ones, so folding a shared weight is exact and
    leaves the original to its other readers; the cost is the copy (the engine counts the bytes
    that stay, see ``Report.shared_copies``). TorchScript deduplicates equal initializers, so
    untrained models (equal BatchNorm parameters, zero biases) share them everywhere. A copy is
    made of any 1-D weight (biases, BN parameters, per-channel scales: C numbers next to the C·C·k·k
    kernel they fold with) and of any weight under SHARED_COPY_FRACTION of the model's weights.
    """
    while True:
        if not ctx.private(tensor, reader):
            if _cheap_copy(tensor, ctx):
                return
            raise Refused("shared-weight", f"weight '{tensor.name}' is shared with {ctx.readers(tensor, reader)} "
                                           f"({_bytes(nbytes(tensor))}, too big to copy)")
        node = producer(tensor)
        if not is_op(node, "Identity"):
            return
        tensor, reader = node.inputs[0], node


def _cheap_copy(tensor: gs.Tensor, ctx: Context) -> bool:
    if id(tensor) in ctx.graph_outputs:
        return False  # a graph output's value is not ours to duplicate into the weights
    shape = tensor.shape if isinstance(tensor, gs.Constant) else dims(tensor)
    if shape is not None and len(shape) <= 1:
        return True
    size = nbytes(tensor)
    return size is not None and size <= SHARED_COPY_FRACTION * ctx.model_bytes()


def nbytes(tensor: gs.Tensor) -> int | None:
    """A constant's size in bytes from its shape and dtype (None for a tensor that is no initializer)."""
    if not isinstance(tensor, gs.Constant):
        value = constant_value(tensor)
        return None if value is None else int(value.nbytes)
    try:
        itemsize = np.dtype(tensor.dtype).itemsize
    except TypeError:
        itemsize = 4
    return math.prod(tensor.shape) * itemsize


def _bytes(n: int | None) -> str:
    return "size unknown" if n is None else f"{n:,} bytes"


#: A Slice end at least this large keeps every element of any real axis (torch exports ``:`` as INT64_MAX).
WHOLE_END = 2**31 - 1


def selects_all(node: gs.Node | None, ctx: Context) -> bool:
    """Whether ``node`` is a Slice that keeps its whole input (torch's ``t[:, :]``).

    Each sliced axis must start at 0 (or at −dim or below) and end at WHOLE_END
    (or at dim or beyond) with step 1; dims are looked up only when needed.
    """
    if not is_op(node, "Slice") or len(node.inputs) < 3:
        return False
    try:
        values = [None if t.is_empty() else ctx.constant(t, "slice input") for t in node.inputs[1:5]]
    except Refused:
        return False
    starts, ends, axes, steps = (*values, None, None)[:4]
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    shape = None
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step != 1:
            return False
        if start == 0 and end >= WHOLE_END:
            continue
        shape = ctx.dims(node.inputs[0]) if shape is None else shape
        dim = shape[int(axis) % len(shape)] if shape else None
        if dim is None or not (start <= -dim or start == 0) or end < dim:
            return False
    return True


def dims(tensor: gs.Tensor, inferred: dict[str, tuple] | None = None) -> list[int | None] | None:
    """A tensor's shape with None for what is not a static dim; None when even its rank is unknown.

    From the graph (exported value_info, a constant's value), else from ``inferred`` (see infer_shapes).
    """
    value = constant_value(tensor)
    shape = value.shape if value is not None else tensor.shape
    if shape is None and inferred is not None:
        shape = inferred.get(tensor.name)
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


#: Weights larger than this enter shape inference as typed inputs: their values never matter to a shape.
_SHAPE_INFERENCE_VALUE_LIMIT = 4096


@dataclass(frozen=True)
class Inferred:
    """What ONNX shape inference says of a graph's tensors, by name: shapes (None for an unknown dim)
    and element types (only the known ones)."""

    shapes: dict[str, tuple] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)


def onnx_elem_type(dtype) -> int | None:
    """An ONNX element type from a graphsurgeon dtype (a numpy dtype, or an ONNX type numpy lacks)."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype or None
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (KeyError, TypeError, ValueError):
        return None


def infer_shapes(graph: gs.Graph, overridable: Iterable[str] = ()) -> dict[str, tuple]:
    """Every tensor's shape as ONNX shape inference sees it (None for an unknown dim); {} when it fails."""
    return infer(graph, overridable).shapes


def infer(graph: gs.Graph, overridable: Iterable[str] = ()) -> Inferred:
    """Every tensor's shape and element type as ONNX shape inference sees them; nothing when it fails.

    Runs on the graph's structure: big weights enter as typed inputs, so no
    weight is copied. The ``overridable`` initializers enter as inputs of
    unknown dims, so no shape derived from their default value counts as static.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    initializers, typed = [], []
    overridable = set(overridable)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            if tensor.name in overridable:
                elem_type = OnnxExporter.export_value_info_proto(tensor, do_type_check=False).type.tensor_type.elem_type
                typed.append(onnx.helper.make_tensor_value_info(tensor.name, elem_type, [None] * len(tensor.shape)))
            elif math.prod(tensor.shape) <= _SHAPE_INFERENCE_VALUE_LIMIT:
                initializers.append(OnnxExporter.export_tensor_proto(tensor))
            else:
                typed.append(OnnxExporter.export_value_info_proto(tensor, do_type_check=False))
    try:
        onnx_graph = onnx.helper.make_graph(
            [OnnxExporter.export_node(n) for n in graph.nodes], "shapes",
            [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs] + typed,
            [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs],
            initializers)
        opsets = [onnx.helper.make_opsetid(d.domain, d.version) for d in graph.import_domains or ()]
        if not any(o.domain in ("", "ai.onnx") for o in opsets):
            opsets.append(onnx.helper.make_opsetid("", graph.opset))
        model = onnx.helper.make_model(onnx_graph, opset_imports=opsets)
        model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # noqa: BLE001 (shape inference is a bonus: any failure means "unknown")
        return Inferred()
    shapes, types = {}, {}
    for value in (*inferred.value_info, *inferred.output, *inferred.input):
        if not value.type.HasField("tensor_type"):
            continue
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                       for d in value.type.tensor_type.shape.dim)
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return Inferred(shapes, types)
