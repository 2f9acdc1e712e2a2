"""A model's graph inputs, read from its file without parsing its weights, and ``--input-shape`` checked
against them: an unknown name, a rank that does not match or a static dim contradicted is a usage error
(it would otherwise be ignored, and the verification would run at the default shape and pass).

The file is scanned in protobuf's wire format (ModelProto.graph is field 7; GraphProto.initializer field 5,
GraphProto.input field 11; TensorProto.name field 8), jumping over every weight, so the check costs
milliseconds on a model of gigabytes.
"""

from __future__ import annotations

import mmap
import numbers
import os
from collections.abc import Iterator

Dim = int | str | None  # a static size, a named dynamic dim, or an unnamed one
_GRAPH, _INITIALIZER, _INPUT, _TENSOR_NAME = 7, 5, 11, 8


def graph_inputs(path: str | os.PathLike) -> dict[str, tuple[Dim, ...] | None] | None:
    """The inputs that are not initializers, each with its dims (None: rank unknown), in order.

    None when the file cannot be read as a model: loading it reports that, with its own exit code.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            graph = next((span for number, span in _fields(data, 0, len(data)) if number == _GRAPH), None)
            if graph is None:
                return None
            inputs, weights = [], set()
            for number, (start, end) in _fields(data, *graph):
                if number == _INPUT:
                    inputs.append(bytes(data[start:end]))
                elif number == _INITIALIZER:
                    weights |= {bytes(data[s:e]).decode("utf-8", "replace")
                                for n, (s, e) in _fields(data, start, end) if n == _TENSOR_NAME}
    except (OSError, ValueError):  # unreadable, empty (mmap of 0 bytes), or not protobuf
        return None
    import onnx  # here: --help and --version do not need it

    return _dims([onnx.ValueInfoProto.FromString(raw) for raw in inputs], weights)


def _fields(data, start: int, end: int) -> Iterator[tuple[int, tuple[int, int]]]:
    """(field number, (start, end) of its bytes) of the length-delimited fields of one message."""
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos)
        kind = tag & 7
        if kind == 0:
            _, pos = _varint(data, pos)
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        elif kind == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("truncated")
            yield tag >> 3, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"wire type {kind}")


def _varint(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def model_inputs(model) -> dict[str, tuple[Dim, ...] | None]:
    """:func:`graph_inputs` of a loaded ModelProto."""
    return _dims(model.graph.input, {t.name for t in model.graph.initializer})


def _dims(infos, weights: set[str]) -> dict[str, tuple[Dim, ...] | None]:
    result = {}
    for info in infos:
        if info.name not in weights:
            tensor = info.type.tensor_type
            result[info.name] = (tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in tensor.shape.dim) if tensor.HasField("shape") else None)
    return result


def shape_problem(name: str, shape: tuple, inputs: dict[str, tuple[Dim, ...] | None]) -> str | None:
    """Why ``--input-shape name:shape`` does not fit the model, naming its inputs; None if it fits."""
    given = f"{name}:{'x'.join(map(str, shape))}"
    bad = [i for i, d in enumerate(shape) if not isinstance(d, numbers.Integral) or isinstance(d, bool) or d < 1]
    if bad:
        return f"{given}: " + ", ".join(f"dim {i} is {shape[i]!r}" for i in bad) + "; every dim must be ≥ 1"
    if name not in inputs:
        return f"{given}: the model has no input {name!r}; its inputs: {describe(inputs)}"
    dims = inputs[name]
    if dims is None:
        return None
    if len(dims) != len(shape):
        return f"{given}: the model's input is {describe({name: dims})}: {len(dims)} dims, not {len(shape)}"
    wrong = [i for i, (d, s) in enumerate(zip(dims, shape)) if isinstance(d, int) and d > 0 and d != s]
    if wrong:
        fixed = "; ".join(f"dim {i} is a static {dims[i]}, not {shape[i]}" for i in wrong)
        return f"{given}: the model's input is {describe({name: dims})}: its {fixed}"
    return None


def describe(inputs: dict[str, tuple[Dim, ...] | None]) -> str:
    """``input [1, 3, H, W]``, one per input; dims without a name show as ``?``."""
    def dims(shape):
        return "[rank unknown]" if shape is None else "[" + ", ".join(
            str(d) if isinstance(d, int) and d > 0 else (d or "?") for d in shape) + "]"
    return ", ".join(f"{n} {dims(s)}" for n, s in inputs.items()) or "none"
