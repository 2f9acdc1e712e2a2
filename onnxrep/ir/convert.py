"""Model ↔ graph conversion: a ModelProto into an onnx-graphsurgeon graph and back, keeping
everything model-level, and weights held once. graphsurgeon's private names (``_values``,
LazyValues) are used here and nowhere else.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxrep.io import files
from onnxrep.ir import nontensor


def overridable_initializers(model: onnx.ModelProto) -> frozenset[str]:
    """Initializers that are also graph inputs: defaults a caller may override, so not constants."""
    return frozenset({i.name for i in model.graph.input} & {i.name for i in model.graph.initializer})


def _take_arrays(graph: gs.Graph) -> dict[str, np.ndarray]:
    """The top-level weights held as numpy arrays, each replaced by an empty one of its dtype.

    A weight a subgraph also reads stays: the exporter copies it into that subgraph too.
    """
    arrays = {}
    in_subgraphs = {id(t) for g in graph.subgraphs(recursive=True) for t in g.tensors().values()}
    for tensor in graph.tensors().values():
        if (isinstance(tensor, gs.Constant) and id(tensor) not in in_subgraphs
                and isinstance(tensor._values, np.ndarray)
                and tensor._values.dtype.kind in "biuf" and tensor.export_dtype == tensor.dtype
                and tensor.data_location is None):
            arrays[tensor.name] = tensor.values
            tensor.values = np.zeros((0,), tensor.dtype)
    return arrays


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without the weights its graph holds: all that export needs of the original."""
    return files.without_weights(model, keep=overridable_initializers(model))


def release(weights: list[gs.Constant], graph_outputs: set[int]) -> None:
    """Drop the values of weights nothing reads any more (a gigabyte on big models): graphsurgeon
    tensors are reference cycles, which Python frees only at its next cyclic collection."""
    for tensor in weights:
        if isinstance(tensor._values, np.ndarray) and not tensor.outputs and id(tensor) not in graph_outputs:
            tensor.values = np.zeros((0,), tensor.dtype)


def load_weights(graph: gs.Graph) -> None:
    """Read every weight out of the ModelProto the graph came from, so that the proto can be freed.

    graphsurgeon reads weights lazily from the proto it imported; a single lazy
    weight, or any part of the proto it keeps, keeps the whole parsed proto (and
    all its weights) alive.
    """
    for g in (graph, *graph.subgraphs(recursive=True), *graph.functions):
        if g.import_domains:  # graphsurgeon keeps the proto's own opset list, which holds it all
            g.import_domains = [onnx.helper.make_opsetid(d.domain, d.version) for d in g.import_domains]
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant):
                _own_values(tensor)
        for node in g.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Constant):
                    _own_values(value)


def _own_values(tensor: gs.Constant) -> None:
    """Give a lazy weight values of its own: a (read-only) array, or a proto of its own."""
    lazy = tensor._values
    if not isinstance(lazy, LazyValues):
        return
    proto = lazy.tensor
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(proto.data_type)
    except (KeyError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or proto.data_type in _NOT_NUMPY:
        # bfloat16, float8, int4...: graphsurgeon would cast them; keep the bytes as they are.
        own = onnx.TensorProto()
        own.ParseFromString(proto.SerializeToString())
        tensor._values = LazyValues(own)
    elif proto.HasField("raw_data") and proto.data_location != onnx.TensorProto.EXTERNAL:
        tensor.values = np.frombuffer(proto.raw_data, dtype.newbyteorder("<")).reshape(tuple(proto.dims))
    else:
        tensor.values  # noqa: B018 (the property loads them)


#: Types numpy only approximates (stored as wider or packed types): never converted.
_NOT_NUMPY = {getattr(onnx.TensorProto, name) for name in (
    "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "UINT4", "INT4",
    "FLOAT4E2M1", "UINT2", "INT2", "FLOAT8E8M0") if hasattr(onnx.TensorProto, name)}


def export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model, with everything model-level the original had kept as it was.

    ``original`` may be the model without its weights (see skeleton). The graph
    is consumed: each weight's array is dropped as soon as the model holds its
    bytes, so that weights are never held twice in full.
    """
    arrays = _take_arrays(graph)
    nontensor.untype_non_tensors(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    nontensor.restore_types(model, original)
    for tensor in model.graph.initializer:
        array = arrays.pop(tensor.name, None)
        if array is not None:
            del tensor.dims[:]
            tensor.dims.extend(array.shape)
            tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            del array
    # graphsurgeon drops initializers that are also inputs from the input list: restore
    # the interface exactly, and any such initializer that no node read any more.
    del model.graph.input[:]
    model.graph.input.extend(original.graph.input)
    # value_info without a shape says nothing, and IR 3 checkers reject it.
    kept = [v for v in model.graph.value_info if v.type.tensor_type.HasField("shape")]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    # graphsurgeon drops node metadata (exporters put source locations there): nodes that
    # survive under their name and op keep theirs.
    metadata = {(n.name, n.op_type): n.metadata_props for n in original.graph.node if n.metadata_props}
    for node in model.graph.node:
        if (node.name, node.op_type) in metadata:
            node.metadata_props.extend(metadata[node.name, node.op_type])
    missing = overridable_initializers(original) - {i.name for i in model.graph.initializer}
    model.graph.initializer.extend(i for i in original.graph.initializer if i.name in missing)
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    model.ir_version = original.ir_version
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, name, getattr(original, name))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    return model
