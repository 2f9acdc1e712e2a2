"""Check every rewrite where it happens, on the original model's own values.

An exact rewrite can still move a tensor deep in a network by far more than
float rounding: each layer's rounding is amplified by every layer after it.
Comparing deep tensors with a fixed tolerance therefore rejects correct
re-parameterizations, the author's own deploy conversion included. This
module looks at each rewrite on its own instead:

1. :func:`plan` compares the two graphs node by node. A node of the optimized
   graph is *changed* unless the original has the same node (op, inputs,
   outputs, attributes, constant inputs to the bit). Rewrites keep the names of
   the tensors they rewrite, so a changed node's inputs and outputs are, where
   the original also computes them, *anchors*: tensors with a known value.
2. :func:`augmented` adds to the optimized model a copy of every changed node
   that reads the anchors from new graph inputs (fed with the original's
   values) instead of the optimized graph's own values. Upstream drift is then
   out of the picture: each copy sees exactly the inputs the original layer saw.
3. Beside each copy goes its *magnitude twin*: the same op on absolute values
   (``|W| ⊛ |x| + |b|`` for a Conv), computed in float32. A float sum of terms
   loses at most a few units of roundoff of the sum of their magnitudes, so
   the error allowed at each element is ``rounding_factor · u · magnitude``
   with ``u`` the unit roundoff of the tensor's dtype (see onnxrep.verify.tolerance).
4. :func:`compare` checks every anchor the copies recompute, and every tensor
   the original computes that the optimized model holds as a constant.

A failing anchor names the rewrite that wrote it: rollback needs no bisection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxrep.algebra.rounding import unit_roundoff
from onnxrep.verify.tolerance import DEFAULT, Tolerance

_REF, _LOCAL, _MAG, _ABS = "::onnxrep_ref", "::onnxrep_local", "::onnxrep_mag", "::onnxrep_abs"

#: Ops that only move, select or pool their data input(s) (monotone in absolute value): the twin
#: runs the same op on magnitudes. Value: the indices of the data inputs (None: all).
_PASS_THROUGH = {op: (0,) for op in (
    "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Expand", "Tile",
    "Gather", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Relu", "Split",
    "DepthToSpace", "SpaceToDepth")}
_PASS_THROUGH.update({"Pad": (0, 2), "Concat": None})
#: Elementwise activations with a bounded slope L: an error e in their input moves the output by at
#: most L·e, so the twin is ``L · magnitude(input) + |output|`` (HardSigmoid's slope is its alpha).
_SLOPES = {"HardSwish": 1.5, "Sigmoid": 0.25, "Tanh": 1.0, "Erf": 1.13, "Gelu": 1.13, "Softplus": 1.0,
           "Softsign": 1.0, "Elu": 1.0, "Celu": 1.0, "Selu": 1.76, "Mish": 1.1, "LeakyRelu": 1.0,
           "Clip": 1.0, "HardSigmoid": None}
#: Linear ops: the twin runs them on magnitudes (Sub and Neg become Add and Identity).
_LINEAR = {"Conv": "Conv", "Gemm": "Gemm", "MatMul": "MatMul", "Add": "Add", "Sub": "Add", "Sum": "Sum",
           "Mul": "Mul", "Div": "Div", "Neg": "Identity"}


@dataclass(frozen=True)
class LocalCheck:
    """One rewritten tensor: the optimized graph's layer on the original's inputs vs the original's value."""

    tensor: str
    max_abs_error: float
    worst_ratio: float  # largest error / allowed error over the elements: passes when ≤ 1
    passed: bool
    region: tuple[str, ...] = ()  # of a failed check: the original's tensors its rewrites replaced
    scale: float = 0.0  # the largest |value| of the original's tensor
    size: int = 0  # the input size it was checked at: an index into Verification.sizes


@dataclass
class Plan:
    changed: list[onnx.NodeProto] = field(default_factory=list)  # optimized nodes not in the original
    reads: list[str] = field(default_factory=list)  # anchors the changed nodes read
    writes: list[str] = field(default_factory=list)  # anchors the changed nodes write
    folded: list[str] = field(default_factory=list)  # computed in the original, a constant now

    @property
    def needed(self) -> list[str]:
        """The original's tensors the check needs (graph inputs aside: they are the feeds)."""
        return list(dict.fromkeys(self.reads + self.writes + self.folded))


def plan(original: onnx.ModelProto, optimized: onnx.ModelProto) -> Plan:
    """What changed between the two graphs, and which of the original's values check it."""
    old_graph, new_graph = original.graph, optimized.graph
    computed = {o for n in old_graph.node for o in n.output if o}
    inputs = {i.name for i in old_graph.input} - {t.name for t in old_graph.initializer}
    anchors = computed | inputs
    old_nodes = {tuple(n.output): n for n in old_graph.node}
    old_weights = {t.name: t for t in old_graph.initializer}
    new_weights = {t.name: t for t in new_graph.initializer}
    result = Plan()
    for node in new_graph.node:
        old = old_nodes.get(tuple(node.output))
        if old is not None and _same_node(old, node, old_weights, new_weights):
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue  # If, Loop, Scan: their bodies read outer tensors by name; checked end to end only
        result.changed.append(node)
        result.reads += [i for i in node.input if i in anchors and i not in new_weights]
        result.writes += [o for o in node.output if o in computed]
    read_now = {i for n in new_graph.node for i in n.input} | {o.name for o in new_graph.output}
    result.folded = [name for name in new_weights if name in computed and name in read_now]
    result.reads = [r for r in dict.fromkeys(result.reads) if r in computed]
    return result


def _same_node(old: onnx.NodeProto, new: onnx.NodeProto, old_weights: dict, new_weights: dict) -> bool:
    if (old.op_type, old.domain or "", list(old.input)) != (new.op_type, new.domain or "", list(new.input)):
        return False
    if _attributes(old) != _attributes(new):
        return False
    for name in new.input:
        if name in new_weights and not _same_tensor(old_weights.get(name), new_weights[name]):
            return False
    return True


def _attributes(node: onnx.NodeProto) -> dict:
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, TensorProto):
            value = _tensor_key(value)
        elif isinstance(value, onnx.GraphProto | onnx.SparseTensorProto):
            value = value.SerializeToString(deterministic=True)
        elif isinstance(value, list) and value and isinstance(value[0], TensorProto | onnx.GraphProto):
            value = [v.SerializeToString(deterministic=True) for v in value]
        values[attribute.name] = value
    return values


def _tensor_key(tensor: TensorProto) -> tuple:
    return tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes()


def _same_tensor(old: TensorProto | None, new: TensorProto) -> bool:
    if old is None or (old.data_type, tuple(old.dims)) != (new.data_type, tuple(new.dims)):
        return False
    if old.raw_data and new.raw_data:
        return old.raw_data == new.raw_data
    return _tensor_key(old) == _tensor_key(new)


@contextmanager
def augmented(optimized: onnx.ModelProto, checks: Plan, reference: dict[str, np.ndarray]
              ) -> Iterator[tuple[Callable[[dict], dict], list[tuple[str, str, str]]]]:
    """The optimized model with the changed nodes' local copies and their magnitude twins added, for
    the duration of the ``with`` (no copy of the weights). Yields what makes the extra feeds from the
    original's values (at any input size: the new inputs' dims are left open) and, for every anchor
    to check, ``(anchor, local output, magnitude output)``."""
    weights = {t.name: t for t in optimized.graph.initializer}
    copies, magnitudes = _local(checks.changed, checks.reads, weights, reference)
    compared = [(name, name + _LOCAL, magnitudes.of(name + _LOCAL))
                for name in checks.writes if isinstance(reference.get(name), np.ndarray)]
    _, inputs = copies.feeds(reference)
    outputs = [o for c in compared for o in c[1:]]
    with _added(optimized, copies.nodes + magnitudes.nodes, magnitudes.initializers, inputs, outputs):
        yield lambda values: copies.feeds(values)[0], compared


def standalone(optimized: onnx.ModelProto, checks: Plan, reference: dict[str, np.ndarray],
               nodes: list[onnx.NodeProto] | None = None) -> tuple[onnx.ModelProto, dict, list[tuple[str, str, str]]]:
    """The local copies of ``nodes`` (default: every changed node) and their magnitude twins as a model
    of their own, fed with the original's values: the local checks run even when the optimized model
    as a whole does not load (a merge that made one node invalid). Returns the model, its feeds and
    ``(anchor, local output, magnitude output)`` per anchor it checks (``reference`` holds the graph
    inputs' values too)."""
    graph = optimized.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = checks.changed if nodes is None else nodes
    copies, magnitudes = _local(nodes, checks.reads, weights, reference)
    written = {o for n in nodes for o in n.output}
    compared = [(name, name + _LOCAL, magnitudes.of(name + _LOCAL))
                for name in checks.writes if name in written and isinstance(reference.get(name), np.ndarray)]
    feeds, inputs = copies.feeds(reference)
    used = {i for n in copies.nodes + magnitudes.nodes for i in n.input}
    for value in graph.input:  # graph inputs the copies read as they are
        if value.name in used and value.name not in weights and isinstance(reference.get(value.name), np.ndarray):
            feeds[value.name] = reference[value.name]
            inputs.append(value)
    model_graph = helper.make_graph(
        copies.nodes + magnitudes.nodes, "local_checks", inputs,
        [helper.make_empty_tensor_value_info(o) for c in compared for o in c[1:]],
        [weights[w] for w in used if w in weights] + magnitudes.initializers)
    model = helper.make_model(model_graph, opset_imports=optimized.opset_import)
    model.ir_version = optimized.ir_version
    return model, feeds, compared


def components(checks: Plan) -> list[list[onnx.NodeProto]]:
    """The changed nodes in groups that can be checked apart: nodes linked by a tensor the original
    does not compute (a MatMul and the Add of its bias, a merged conv and the partial sum after it)."""
    anchors = set(checks.writes) | set(checks.reads)
    group = {id(n): [n] for n in checks.changed}
    producer = {o: n for n in checks.changed for o in n.output if o and o not in anchors}
    for node in checks.changed:
        for name in node.input:
            source = producer.get(name)
            if source is not None and group[id(source)] is not group[id(node)]:
                merged = group[id(source)] + group[id(node)]
                for member in merged:
                    group[id(member)] = merged
    unique = {id(g): g for g in group.values()}
    return list(unique.values())


def original_magnitudes(original: onnx.ModelProto, checks: Plan, anchors: list[str],
                        reference: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict, dict[str, str]]:
    """A small model computing the magnitudes the original's own sums rounded for ``anchors``: the
    original nodes that compute them (from the tensors the rewrites read, fed with their values) and
    their magnitude twins. Returns the model, its feeds, and each anchor's output name.

    The original's sums round relative to *their* terms: branches whose kernels or
    biases cancel in the merged layer still add large terms here.
    """
    graph = original.graph
    weights = {t.name: t for t in graph.initializer}
    stops = set(checks.reads) | {i.name for i in graph.input}
    region = _ancestors(graph, anchors, stops | set(weights))
    copies, magnitudes = _local(region, stops, weights, reference)
    names = {a: magnitudes.of(a + _LOCAL) for a in anchors if a + _LOCAL in copies.producers}
    feeds, inputs = copies.feeds(reference)
    used = {i for n in copies.nodes + magnitudes.nodes for i in n.input}
    model_graph = helper.make_graph(
        copies.nodes + magnitudes.nodes, "original_magnitudes", inputs,
        [helper.make_empty_tensor_value_info(o) for o in dict.fromkeys(names.values())],
        [weights[w] for w in used if w in weights] + magnitudes.initializers)
    model = helper.make_model(model_graph, opset_imports=original.opset_import)
    model.ir_version = original.ir_version
    return model, feeds, names


def region(original: onnx.ModelProto, checks: Plan, anchor: str) -> tuple[str, ...]:
    """The original's tensors computed between the anchors the rewrites read and ``anchor``: where the
    rewrite that is wrong at ``anchor`` was made, even when it was keyed at a tensor that is gone."""
    graph = original.graph
    stops = set(checks.reads) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    return tuple(o for node in _ancestors(graph, [anchor], stops) for o in node.output if o)


def _ancestors(graph: onnx.GraphProto, names: list[str], stops: set[str]) -> list[onnx.NodeProto]:
    """The nodes that compute ``names`` from ``stops``, in graph order."""
    producers = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    wanted, todo = set(), [n for n in names if n in producers]
    while todo:
        index = producers[todo.pop()]
        if index not in wanted:
            wanted.add(index)
            todo += [i for i in graph.node[index].input if i and i not in stops and i in producers]
    return [graph.node[k] for k in sorted(wanted)]


def _local(nodes, reads, weights, reference) -> tuple[_Copies, _Magnitudes]:
    """Copies of ``nodes`` reading the ``reads`` that have reference values, and their twins."""
    copies = _Copies({r for r in reads if isinstance(reference.get(r), np.ndarray)}, weights)
    for node in nodes:
        copies.copy(node)
    return copies, _Magnitudes(copies.producers, weights)


@contextmanager
def _added(model: onnx.ModelProto, nodes, initializers, inputs, outputs) -> Iterator[None]:
    """``model`` with these nodes, initializers, inputs and outputs appended, for a moment."""
    graph = model.graph
    marks = (len(graph.node), len(graph.initializer), len(graph.input), len(graph.output))
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    graph.output.extend(helper.make_empty_tensor_value_info(o) for o in outputs)
    try:
        yield
    finally:
        del graph.node[marks[0]:], graph.initializer[marks[1]:], graph.input[marks[2]:]
        del graph.output[marks[3]:]


class _Copies:
    """The local copies of the changed nodes: anchors read from new inputs, outputs renamed."""

    def __init__(self, reads: set[str], weights: dict[str, TensorProto]):
        self.reads, self.weights = reads, weights
        self.producers: dict[str, onnx.NodeProto] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.fed: list[str] = []

    def local(self, name: str) -> str:
        """What a local copy reads for ``name``: the original's value, a weight, or another copy's output."""
        if not name or name in self.weights:
            return name
        if name in self.reads:
            if name not in self.fed:
                self.fed.append(name)
            return name + _REF
        return name + _LOCAL if name + _LOCAL in self.producers else name

    def copy(self, node: onnx.NodeProto) -> None:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = node.name + _LOCAL
        clone.ClearField("input")
        clone.input.extend(self.local(i) for i in node.input)
        clone.ClearField("output")
        clone.output.extend(o + _LOCAL if o else "" for o in node.output)
        for output in clone.output:
            self.producers[output] = clone
        self.nodes.append(clone)

    def feeds(self, reference: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list]:
        """The reference values the copies read, and the graph inputs that take them."""
        feeds = {name + _REF: reference[name] for name in self.fed}
        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                [None] * value.ndim) for name, value in feeds.items()]
        return feeds, inputs


class _Magnitudes:
    """Magnitude twins: for a tensor, a float32 tensor bounding element by element the magnitudes
    rounding acts on when ``producers`` compute it (what no producer here writes: its own |value|)."""

    def __init__(self, producers: dict[str, onnx.NodeProto], weights: dict[str, TensorProto]):
        self.producers, self.weights = producers, weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.memo: dict[str, str] = {}

    def of(self, name: str) -> str:
        if name not in self.memo:
            self.memo[name] = self._twin(name)
        return self.memo[name]

    def _twin(self, name: str) -> str:
        node = self.producers.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return self._abs(name)
        if node.op_type == "BatchNormalization":
            return self._batchnorm(node, name)
        if node.op_type in _SLOPES and node.input and node.input[0]:
            return self._activation(node, name)
        if node.op_type not in _LINEAR and node.op_type not in _PASS_THROUGH:
            return self._abs(name)  # an op we do not model: its value's own magnitude
        position = list(node.output).index(name)
        data = _PASS_THROUGH.get(node.op_type)
        inputs = [self.of(i) if i and (data is None or k in data) else i for k, i in enumerate(node.input)]
        outputs = [o + _MAG if o else "" for o in node.output]
        twin = helper.make_node(_LINEAR.get(node.op_type, node.op_type), inputs, outputs, name=node.name + _MAG)
        if node.op_type not in ("Sub", "Neg"):
            twin.attribute.extend(node.attribute)
        if node.op_type == "Gemm":
            _abs_attributes(twin, ("alpha", "beta"))
        self.nodes.append(twin)
        for output in outputs:  # its siblings' magnitudes come with it
            self.memo.setdefault(output.removesuffix(_MAG), output)
        return outputs[position]

    def _activation(self, node: onnx.NodeProto, name: str) -> str:
        slope = _SLOPES[node.op_type]
        if slope is None:  # HardSigmoid: max(0, min(1, alpha·x + beta))
            slope = abs(next((a.f for a in node.attribute if a.name == "alpha"), 0.2))
        if node.op_type in ("Elu", "Celu") or node.op_type == "LeakyRelu":
            slope = max(slope, abs(next((a.f for a in node.attribute if a.name == "alpha"), 1.0)))
        scale = numpy_helper.from_array(np.array(slope, np.float32), f"{name}{_MAG}/slope")
        self.initializers.append(scale)
        scaled = name + _MAG + "/scaled"
        self.nodes.append(helper.make_node("Mul", [self.of(node.input[0]), scale.name], [scaled], name=scaled))
        self.nodes.append(helper.make_node("Add", [scaled, self._abs(name)], [name + _MAG], name=name + _MAG))
        return name + _MAG

    def _batchnorm(self, node: onnx.NodeProto, name: str) -> str:
        """An inference BN is ``s·x + t``: its twin is ``|s|·|x| + |t|``, as a BN of zero mean, unit variance."""
        params = [self.weights.get(i) for i in node.input[1:5]]
        if name != node.output[0] or len(params) != 4 or any(p is None for p in params):
            return self._abs(name)
        scale, bias, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        s = scale / np.sqrt(var + epsilon)
        t = bias - mean * s
        twin_params = []
        for suffix, value in (("scale", np.abs(s)), ("bias", np.abs(t)), ("mean", np.zeros_like(s)),
                              ("var", np.full_like(s, 1.0 - epsilon))):
            tensor = numpy_helper.from_array(value.astype(np.float32), f"{name}{_MAG}/{suffix}")
            self.initializers.append(tensor)
            twin_params.append(tensor.name)
        output = name + _MAG
        self.nodes.append(helper.make_node("BatchNormalization", [self.of(node.input[0]), *twin_params],
                                           [output], name=node.name + _MAG, epsilon=epsilon))
        return output

    def _abs(self, name: str) -> str:
        absolute = name + _ABS
        self.nodes.append(helper.make_node("Abs", [name], [absolute + "/abs"], name=absolute + "/abs"))
        self.nodes.append(helper.make_node("Cast", [absolute + "/abs"], [absolute], name=absolute,
                                           to=TensorProto.FLOAT))
        return absolute


def _abs_attributes(node: onnx.NodeProto, names: tuple[str, ...]) -> None:
    for attribute in node.attribute:
        if attribute.name in names:
            attribute.f = abs(attribute.f)


def compare(anchor: str, reference: np.ndarray, local: np.ndarray, magnitude: np.ndarray,
            tolerance: Tolerance = DEFAULT) -> LocalCheck:
    """``|local − reference| ≤ rounding_factor · u · magnitude`` everywhere (integers: equal).

    ``magnitude``: the rewritten layer's, plus the original's where that was needed. Computed in
    the tensors' own float type (float32 for float16): a difference of two close floats is exact.
    """
    if reference.shape != local.shape:
        return LocalCheck(anchor, float("inf"), float("inf"), False)
    if not np.issubdtype(reference.dtype, np.floating):
        equal = bool(np.array_equal(reference, local))
        return LocalCheck(anchor, 0.0 if equal else float("inf"), 0.0 if equal else float("inf"), equal)
    work = np.float64 if reference.dtype == np.float64 else np.float32
    ref, act = reference.astype(work, copy=False), local.astype(work, copy=False)
    unit = unit_roundoff(reference.dtype)
    allowed = np.broadcast_to(magnitude, ref.shape).astype(work) * work(tolerance.rounding_factor * unit)
    finite = np.isfinite(ref)
    if not finite.all():
        if not np.array_equal(ref[~finite], act[~finite], equal_nan=True):
            return LocalCheck(anchor, float("inf"), float("inf"), False)
        ref, act, allowed = ref[finite], act[finite], allowed[finite]
    error = np.abs(act - ref)
    # an element both sides compute exactly (a zero magnitude) must match exactly
    ratio = np.divide(error, allowed, out=np.where(error > 0, np.inf, 0.0).astype(work), where=allowed > 0)
    worst = float(ratio.max(initial=0.0))
    scale = float(np.abs(ref).max(initial=0.0))
    return LocalCheck(anchor, float(error.max(initial=0.0)), worst, worst <= 1.0, scale=scale)
