"""Multiply-adds of a model's Conv, Gemm and MatMul nodes at given input sizes: the cost a merge must not
raise, as the HTML page and tools/bench.py show it."""

from __future__ import annotations

import math

import onnx

from onnxrep.io.files import without_weights

#: The sizes verification gives dynamic dims when none are set (onnxrep/verify/feeds.py; a test holds them equal).
DEFAULT_BATCH, DEFAULT_DIM = 1, 32
#: Initializers up to this many elements keep their values for shape inference (Reshape targets, pads).
SMALL = 4096


def input_sizes(model: onnx.ModelProto, shapes: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor input's size: ``shapes`` where given, else its static dims, dynamic ones at the defaults."""
    weights = {t.name for t in model.graph.initializer}
    sizes = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if value.name in weights or tensor is None:
            continue
        given = (shapes or {}).get(value.name)
        if isinstance(given, tuple | list):
            sizes[value.name] = tuple(given)
        else:
            sizes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                      else DEFAULT_BATCH if axis == 0 else DEFAULT_DIM
                                      for axis, d in enumerate(tensor.shape.dim))
    return sizes


def multiply_adds(model: onnx.ModelProto, sizes: dict[str, tuple[int, ...]]) -> int | None:
    """The multiply-adds of one run at input ``sizes``; None when a shape stays unknown."""
    light = without_weights(model, keep={t.name for t in model.graph.initializer if math.prod(t.dims) <= SMALL})
    declared = {i.name for i in model.graph.input}
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer
                             if math.prod(t.dims) > SMALL and t.name not in declared)
    for value in light.graph.input:
        if value.name in sizes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in sizes[value.name]:
                dims.add().dim_value = size
    try:
        graph = onnx.shape_inference.infer_shapes(light).graph
    except Exception:  # noqa: BLE001 (a model shape inference cannot follow: no count, not an error)
        return None
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    total = 0
    for node in (n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")):
        a, b, out = (shapes.get(name) for name in (node.input[0], node.input[1], node.output[0]))
        if a is None or b is None or out is None:
            return None
        if node.op_type == "Conv":  # N·Cout·prod(output spatial) × Cin/group·prod(kernel)
            total += math.prod(out) * math.prod(b[1:])
        else:  # Gemm (A is K x M with transA) or MatMul
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            total += math.prod(out) * (a[0] if trans_a else a[-1])
    return total
