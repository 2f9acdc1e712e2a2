"""The input sizes verification runs at, chosen so that every tap of every rewritten conv meets data.

A conv's border taps read padding, not data, where its input is small: at 32x32 a
model's stride-32 level is 1x1, and a 7x7 kernel there multiplies data with its
centre tap only. A merge that puts the other 48 taps in the wrong place then
passes every check (issue 22: YOLOv10n's RepVGGDW with only the centre tap kept
errs by 3e-8 at 32x32, as the exact merge does, and by 196 at 640x640). So
verification counts, for every rewritten Conv (:class:`Window`), whether each
tap multiplied data at some output position at the sizes it ran (the shapes its
input had in the run); where some did not and the model's dims are dynamic and
were not given, it adds the smallest size of the model's own family (multiples
of its largest total stride, see :func:`family_step`) at which every tap meets
data, by ONNX shape inference or, where inference cannot size the input, by
scaling the sizes the runs saw (:func:`larger_size`). What no size exercises is
reported by name.

The second, odd size (batch 2, odd spatial dims: a pad or stride that lines up
only for even sizes shows there) is drawn from the same family when the plain
odd sizes do not run (a detector's stride-32 Concat takes multiples of 32 only).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxrep.errors import UnsupportedModel
from onnxrep.verify.feeds import DEFAULT_BATCH, DEFAULT_DIM

Shapes = dict[str, tuple[int, ...]]

#: Dynamic dims at the second size: batch 2, then odd sizes (a pad or stride that lines up only for
#: even sizes, or a reshape that mixes the batch in, shows there), one value per dim name.
SECOND_BATCH = 2
SECOND_DIMS = (37, 53, 29, 43, 31, 47)
#: In a model that takes only multiples of its stride T, the second size's dims are these multiples
#: of T: odd at the deepest level, and not square.
SECOND_MULTIPLES = (3, 5, 7, 9)
#: The larger size for taps no other size exercised is looked for up to this size (or the size the
#: model declares in its metadata, if larger); its batch stays the first size's.
LARGEST_SIZE = 1024
#: The size at which the largest total stride is measured: divisible by every power of two up to 1024.
_PROBE = 1024
#: Weights larger than this enter shape inference as typed inputs: their values never matter to a shape.
_VALUE_LIMIT = 4096


@dataclass(frozen=True)
class Window:
    """A rewritten Conv's sliding window along its spatial axes (ONNX attribute semantics)."""

    node: str
    output: str  # the tensor it writes: names the rewrite
    input: str
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begins, then ends
    auto_pad: str = "NOTSET"

    def exercised(self, shape: tuple | None) -> bool | None:
        """Whether every tap multiplies input data at some output position, for an input of ``shape``
        (N, C, spatial...); None when its spatial dims are not known."""
        rank = len(self.kernel)
        if shape is None or len(shape) < rank or any(not isinstance(d, int) or d < 0 for d in shape[-rank:]):
            return None
        return all(_axis_exercised(n, *self._axis(axis, n)) for axis, n in enumerate(shape[-rank:]))

    def smallest_input(self) -> tuple[int, ...]:
        """The smallest spatial input at which every tap meets data, per axis."""
        return tuple(next(n for n in itertools.count(1) if _axis_exercised(n, *self._axis(axis, n)))
                     for axis in range(len(self.kernel)))

    def _axis(self, axis: int, n: int) -> tuple[int, int, int, int, int]:
        k, s, d = self.kernel[axis], self.strides[axis], self.dilations[axis]
        rank = len(self.kernel)
        begin, end = self.pads[axis], self.pads[axis + rank]
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if self.auto_pad == "SAME_UPPER" else (large, small)
        elif self.auto_pad == "VALID":
            begin = end = 0
        return k, s, d, begin, end


def _axis_exercised(n: int, k: int, s: int, d: int, begin: int, end: int) -> bool:
    """Whether each tap j of a kernel of k taps (stride s, dilation d, pads begin/end) reads a row
    ``o·s − begin + j·d`` inside [0, n) for some output position o."""
    outputs = (n + begin + end - d * (k - 1) - 1) // s + 1
    for j in range(k):
        low = begin - j * d  # o·s must lie in [low, low + n − 1]
        first = max(0, -(-low // s))
        if first > outputs - 1 or first * s > low + n - 1:
            return False
    return True


def windows(optimized: onnx.ModelProto, changed: list[onnx.NodeProto]) -> list[Window]:
    """The windows of the changed Conv nodes whose taps could miss data (not 1x1 unpadded ones)."""
    weights = {t.name: tuple(t.dims) for t in optimized.graph.initializer}
    found = []
    for node in changed:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = tuple(attrs.get("kernel_shape") or weights.get(node.input[1], ())[2:])
        if not kernel:
            continue
        rank = len(kernel)
        pads = tuple(attrs.get("pads") or (0,) * 2 * rank)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if all(k == 1 for k in kernel) and not any(pads) and auto_pad in ("NOTSET", "VALID"):
            continue  # one tap, no padding: it meets data wherever there is an output
        found.append(Window(node.name or node.output[0], node.output[0], node.input[0], kernel,
                            tuple(attrs.get("strides") or (1,) * rank), tuple(attrs.get("dilations") or (1,) * rank),
                            pads, auto_pad or "NOTSET"))
    return found


def dynamic_dims(model: onnx.ModelProto) -> dict[str, list[tuple[int, str]]]:
    """Each data input's dynamic dims: (axis, name), the name shared by dims of one dim_param."""
    weights = {t.name for t in model.graph.initializer}
    found = {}
    for value in model.graph.input:
        if value.name in weights or not value.type.HasField("tensor_type"):
            continue
        dims = [(axis, dim.dim_param or f"{value.name}:{axis}")
                for axis, dim in enumerate(value.type.tensor_type.shape.dim)
                if not (dim.HasField("dim_value") and dim.dim_value > 0)]
        if dims:
            found[value.name] = dims
    return found


def declared(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Each data input's declared dims (None: dynamic)."""
    weights = {t.name for t in model.graph.initializer}
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                          for d in v.type.tensor_type.shape.dim)
            for v in model.graph.input if v.name not in weights and v.type.HasField("tensor_type")}


def sized(model: onnx.ModelProto, batch: int, size, base: Shapes | None = None) -> Shapes:
    """Input shapes with every dynamic batch dim (axis 0) at ``batch`` and every other dynamic dim at
    ``size`` (an int, or an iterator giving one value per dim name); ``base``'s inputs are kept."""
    values = size if not isinstance(size, int) else itertools.repeat(size)
    named: dict[str, int] = {}
    shapes = {}
    for name, dims in declared(model).items():
        if base and name in base:
            shapes[name] = tuple(base[name])
            continue
        key_of = {axis: key for axis, key in dynamic_dims(model).get(name, [])}
        shapes[name] = tuple(
            d if d is not None else named.setdefault(key_of[axis], batch if axis == 0 else next(values))
            for axis, d in enumerate(dims))
    return shapes


def second_size(model: onnx.ModelProto, step: int = 1) -> Shapes | None:
    """Shapes for a second verification of a model with dynamic input dims (None: all static): batch 2
    and odd dims; for a model of stride ``step`` > 1, odd multiples of it."""
    if not dynamic_dims(model):
        return None
    odd = SECOND_DIMS if step <= 1 else tuple(step * m for m in SECOND_MULTIPLES)
    return sized(model, SECOND_BATCH, itertools.cycle(odd))


def first_size(model: onnx.ModelProto, given: Shapes | None) -> Shapes:
    """The first size: the given shapes, the defaults for the rest (as feeds.make_inputs picks them)."""
    return sized(model, DEFAULT_BATCH, DEFAULT_DIM, given)


def hints(model: onnx.ModelProto) -> tuple[int | None, list[int]]:
    """What the model's metadata says of its sizes: (its stride, its image sizes), as Ultralytics
    writes them (``stride: 32``, ``imgsz: [640, 640]``)."""
    stride, sizes = None, []
    for prop in model.metadata_props:
        numbers = [int(n) for n in re.findall(r"\d+", prop.value)] if len(prop.value) < 64 else []
        if prop.key == "stride" and numbers:
            stride = max(numbers)
        elif prop.key in ("imgsz", "image_size", "img_size") and numbers:
            sizes = numbers
    return stride, sizes


class ShapeInference:
    """ONNX shape inference (data-propagating) of a model's structure at given input shapes. The big
    weights enter as typed inputs: none is copied, and their values never decide a shape."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.model = model
        self.weights = {t.name for t in graph.initializer}
        small = [t for t in graph.initializer if math.prod(t.dims) <= _VALUE_LIMIT and not t.external_data]
        big = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
               for t in graph.initializer if math.prod(t.dims) > _VALUE_LIMIT or t.external_data]
        self.skeleton = onnx.ModelProto()
        self.skeleton.ir_version = model.ir_version
        self.skeleton.opset_import.extend(model.opset_import)
        self.skeleton.functions.extend(model.functions)
        self.skeleton.graph.node.extend(graph.node)
        self.skeleton.graph.output.extend(graph.output)
        self.skeleton.graph.initializer.extend(small)
        self.inputs = [i for i in graph.input if i.name not in {t.name for t in small}] + big
        self.cache: dict[str, dict[str, tuple]] = {}

    def at(self, shapes: Shapes) -> dict[str, tuple]:
        """Every tensor's shape (None for an unknown dim) with the data inputs at ``shapes``; {} when
        inference fails."""
        key = json.dumps(sorted((k, list(v)) for k, v in shapes.items()))
        if key not in self.cache:
            self.cache[key] = self._infer(shapes)
        return self.cache[key]

    def _infer(self, shapes: Shapes) -> dict[str, tuple]:
        graph = self.skeleton.graph
        del graph.input[:]
        for value in self.inputs:
            if value.name in shapes and value.type.HasField("tensor_type"):
                value = helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type,
                                                      list(shapes[value.name]))
            graph.input.append(value)
        try:
            inferred = onnx.shape_inference.infer_shapes(self.skeleton, check_type=False, strict_mode=False,
                                                         data_prop=True).graph
        except Exception:  # noqa: BLE001 (inference is a prediction: a failure means "unknown")
            return {}
        found = {}
        for value in (*inferred.value_info, *inferred.output, *inferred.input):
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                found[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                          for d in value.type.tensor_type.shape.dim)
        return found


def family_step(model: onnx.ModelProto, inference: ShapeInference) -> int:
    """The model's largest total stride: from its metadata, else the largest ratio of the input size
    to a Conv or pooling operand's spatial size (at a probe size that every power of two divides)."""
    stride, _ = hints(model)
    if stride:
        return stride
    inferred = inference.at(sized(model, DEFAULT_BATCH, _PROBE))
    ratios = [1]
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool", "ConvTranspose"):
            continue
        for name in (node.input[0], node.output[0]):
            shape = inferred.get(name)
            if shape is None or len(shape) < 3:
                continue
            ratios += [_PROBE // n for n in shape[2:] if isinstance(n, int) and 1 < n <= _PROBE and _PROBE % n == 0]
    return max(ratios)


def larger_size(model: onnx.ModelProto, inference: ShapeInference, missed: list[Window], first: Shapes,
                step: int, sights=()) -> tuple[Shapes | None, list[Window]]:
    """The smallest size of the model's family (every dynamic dim but the batch at a multiple of
    ``step``, above the first size's) at which every ``missed`` window that such a size exercises is
    exercised; and the windows none exercises. Found by shape inference (no run); for a window whose
    input inference cannot size (a TorchScript C2f's Slice of a computed length), by scaling what the
    runs so far saw (``sights``: (input shapes fed, shapes seen)) of its input."""
    batch = next((s[0] for s in first.values() if s), DEFAULT_BATCH)
    _, declared_sizes = hints(model)
    top = max([LARGEST_SIZE, *declared_sizes])
    smallest = max((d for name, dims in dynamic_dims(model).items() for axis, _ in dims if axis > 0
                    for d in [first[name][axis]]), default=0)
    candidates = sorted({step * m for m in range(1, top // step + 1)} | set(declared_sizes))
    candidates = [c for c in candidates if smallest < c <= top]
    if not candidates or not missed:
        return None, missed

    def status(size: int, among: list[Window]) -> list[bool | None]:
        inferred = inference.at(sized(model, batch, size))
        return [w.exercised(inferred.get(w.input)) for w in among]

    at_top = status(candidates[-1], missed)
    target = [w for w, ok in zip(missed, at_top) if ok]
    floor, never = 0, [w for w, ok in zip(missed, at_top) if ok is False]
    for window in (w for w, ok in zip(missed, at_top) if ok is None):
        needed = _scaled(window, model, sights)
        if needed is None or needed > top:
            never.append(window)
        else:
            floor = max(floor, needed)
    candidates = [c for c in candidates if c >= floor]
    if not candidates or len(never) == len(missed):
        return None, missed
    low, high = -1, len(candidates) - 1  # every target window is exercised at candidates[high]
    while target and high - low > 1:
        middle = (low + high) // 2
        if all(status(candidates[middle], target)):
            high = middle
        else:
            low = middle
    return sized(model, batch, candidates[0 if not target else high]), never


def _scaled(window: Window, model: onnx.ModelProto, sights) -> int | None:
    """The input size at which ``window``'s input should reach its smallest exercised size, from the
    ratio of input size to the window's input size seen in a run (the largest seen, per axis). Only
    for one data input of the rank of the window's input, whose last dims map to its spatial axes."""
    rank = len(window.kernel)
    best: dict[int, tuple[int, int]] = {}
    for fed, seen in sights:
        shape = seen.get(window.input)
        inputs = [s for s in fed.values() if shape is not None and len(s) == len(shape)]
        if shape is None or len(inputs) != 1:
            continue
        for axis in range(rank):
            dim, size = shape[-rank + axis], inputs[0][-rank + axis]
            if isinstance(dim, int) and dim > 0 and dim > best.get(axis, (0, 0))[0]:
                best[axis] = (dim, size)
    if len(best) != rank:
        return None
    needs = window.smallest_input()
    return max(math.ceil(needs[axis] * size / dim) for axis, (dim, size) in best.items())


@dataclass(frozen=True)
class Unexercised:
    """A rewritten conv some of whose taps never multiplied input data at the sizes checked."""

    node: str
    tensor: str  # the tensor it writes: names the rewrite
    kernel: tuple[int, ...]
    input: tuple[int | None, ...] | None  # its input's spatial dims at the largest size checked (None: unknown)
    needs: tuple[int, ...]  # the smallest spatial input at which every tap meets data


#: ``run(shapes)``: verify at ``shapes`` (None: the first size, as the caller gave it); returns the
#: result, the input shapes fed, and the shapes seen of the tensors asked for. Raises UnsupportedModel
#: where the original does not run.
Run = Callable[[Shapes | None], tuple[object, Shapes, dict[str, tuple]]]


@dataclass
class Checked:
    runs: list[tuple[object, Shapes, str]]  # (result, input shapes, why this size), the first size first
    skipped: str | None  # why no second size was checked
    unexercised: list[Unexercised]


def check_sizes(original: onnx.ModelProto, optimized: onnx.ModelProto, changed: list[onnx.NodeProto],
                run: Run, given_shapes: bool, given_inputs: bool) -> Checked:
    """Runs ``run`` at the first size, then, for a model with dynamic dims and random inputs, at a
    second, odd size and, where some rewritten conv's taps did not all meet data, at a larger size
    (not when the first size was given: its rewrites are reported instead)."""
    found = windows(optimized, changed)
    inference = _Lazy(lambda: ShapeInference(optimized))
    result, shapes, seen = run(None)
    first = "as given" if given_shapes else "the inputs given" if given_inputs else \
        "default" if dynamic_dims(original) else "as declared"
    checked = Checked([(result, shapes, first)], None, [])
    sights = [(shapes, seen)]
    step = _Lazy(lambda: family_step(optimized, inference()))
    if not given_inputs and dynamic_dims(original):
        failures = []
        for candidate in _second_sizes(original, step):
            try:
                result, fed, seen = run(candidate)
            except UnsupportedModel as error:
                failures.append(f"{_describe(candidate)}: {error}")
                continue
            why = f"multiples of {step()}: {failures[0].split(': ')[0]} does not run" if failures else "second size"
            checked.runs.append((result, fed, why))
            sights.append((fed, seen))
            break
        else:
            checked.skipped = "; ".join(failures) or None
    missed = _missed(found, sights, inference)
    if missed and not given_shapes and not given_inputs and dynamic_dims(original):
        larger, _ = larger_size(original, inference(), missed, shapes, step(), sights)
        if larger is not None:
            try:
                result, fed, seen = run(larger)
                checked.runs.append((result, fed, f"every tap of {len(missed)} rewritten conv(s) meets data"))
                sights.append((fed, seen))
                missed = _missed(missed, sights[-1:], inference)
            except UnsupportedModel as error:
                note = f"{_describe(larger)}, for the taps of {len(missed)} rewritten conv(s): {error}"
                checked.skipped = f"{checked.skipped}; {note}" if checked.skipped else note
    checked.unexercised = [_unexercised(w, sights, inference) for w in missed]
    return checked


def _second_sizes(model: onnx.ModelProto, step: _Lazy):
    """The second sizes to try, in order: plain odd dims, then odd multiples of the model's stride."""
    plain = second_size(model)
    yield plain
    family = second_size(model, step())
    if family != plain:
        yield family


def _missed(found: list[Window], sights, inference: _Lazy) -> list[Window]:
    """The windows exercised at none of the sizes seen."""
    return [w for w in found if not any(w.exercised(_input_shape(w, fed, seen, inference)) for fed, seen in sights)]


def _input_shape(window: Window, fed: Shapes, seen: dict, inference: _Lazy) -> tuple | None:
    """A window's input shape at a size run: as seen in the run, else as shape inference has it."""
    if window.input in seen:
        return seen[window.input]
    return inference().at(fed).get(window.input)


def _unexercised(window: Window, sights, inference: _Lazy) -> Unexercised:
    rank = len(window.kernel)
    dims = [_input_shape(window, fed, seen, inference) for fed, seen in sights]
    known = [tuple(d[-rank:]) for d in dims if d is not None and len(d) >= rank]
    largest = max(known, key=lambda d: math.prod(x or 0 for x in d), default=None)
    return Unexercised(window.node, window.output, window.kernel, largest, window.smallest_input())


def _describe(shapes: Shapes) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in shapes.items())


class _Lazy:
    """A value computed when first asked for."""

    def __init__(self, make: Callable[[], object]):
        self.make, self.done, self.value = make, False, None

    def __call__(self):
        if not self.done:
            self.value, self.done = self.make(), True
        return self.value
