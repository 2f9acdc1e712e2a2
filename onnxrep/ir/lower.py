"""The one lowering step: a ConvSpec written back into the graph as the op its layout calls for.

  spatial axes (channels on axis 1)      → Conv
  no spatial axes, rank-2 input          → Gemm (weight (out, in), transB=1)
  no spatial axes, channels-last input   → MatMul (weight (in, out)), + Add of the bias

Weights are fresh initializers named after ``name``, cast to the model's dtype.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir.affine import Layout
from onnxrep.ir.graph import Context


def emit(ctx: Context, name: str, source: gs.Tensor, spec: ConvSpec, layout: Layout, output: gs.Tensor,
         dtype: np.dtype, with_bias: bool = True) -> gs.Node:
    """Add the nodes computing ``spec`` of ``source`` into ``output``; the last one is returned."""
    name = ctx.unique(name)
    output.inputs.clear()
    if spec.spatial_dims:
        return _add(ctx, "Conv", name, [source, _constant(ctx, name, "weight", spec.weight, dtype)]
                    + ([_constant(ctx, name, "bias", spec.bias, dtype)] if with_bias else []), output,
                    kernel_shape=list(spec.kernel_shape), strides=list(spec.strides), pads=list(spec.pads),
                    dilations=list(spec.dilations), group=spec.group)
    dense = kernels.regroup(spec.weight, spec.group, 1)
    if layout.rank == 2:
        return _add(ctx, "Gemm", name, [source, _constant(ctx, name, "weight", dense, dtype)]
                    + ([_constant(ctx, name, "bias", spec.bias, dtype)] if with_bias else []), output, transB=1)
    weight = _constant(ctx, name, "weight", dense.T, dtype)
    if not with_bias:
        return _add(ctx, "MatMul", name, [source, weight], output)
    product = gs.Variable(ctx.unique(f"{name}_matmul"), dtype=output.dtype)
    _add(ctx, "MatMul", name, [source, weight], product)
    return _add(ctx, "Add", ctx.unique(f"{name}_bias"), [product, _constant(ctx, name, "bias", spec.bias, dtype)],
                output)


def node_count(layout: Layout, spec: ConvSpec, with_bias: bool) -> int:
    """How many nodes :func:`emit` writes for ``spec``."""
    return 2 if with_bias and not spec.spatial_dims and layout.rank != 2 else 1


def _constant(ctx: Context, name: str, what: str, value: np.ndarray, dtype: np.dtype) -> gs.Constant:
    return gs.Constant(ctx.unique(f"{name}.{what}"), np.ascontiguousarray(value.astype(dtype)))


def _add(ctx: Context, op: str, name: str, inputs: list, output: gs.Tensor, **attrs) -> gs.Node:
    node = gs.Node(op, name=name, attrs=attrs, inputs=inputs, outputs=[output])
    ctx.graph.nodes.append(node)
    return node
