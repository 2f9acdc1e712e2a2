"""The one lowering step: a ConvSpec written back as the op its layout calls for.

  spatial axes (channels on axis 1)      → Conv
  no spatial axes, rank-2 input          → Gemm (weight (out, in), transB=1)
  no spatial axes, channels-last input   → MatMul (weight (in, out)), + Add of the bias

Weights are fresh initializers named after ``name``, cast to the model's dtype.
The nodes go into a replacement (onnxrep.ir.replacement.Builder), not the graph.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import kernels
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir.affine import Layout
from onnxrep.ir.replacement import Builder


def emit(b: Builder, name: str, source: gs.Tensor, spec: ConvSpec, layout: Layout, output: gs.Tensor,
         dtype: np.dtype, with_bias: bool = True) -> None:
    """Make the nodes computing ``spec`` of ``source`` into ``output``."""
    name = b.name(name)

    def constant(what: str, value: np.ndarray) -> gs.Constant:
        return b.constant(f"{name}.{what}", value.astype(dtype))

    if spec.spatial_dims:
        b.node("Conv", name, [source, constant("weight", spec.weight)]
               + ([constant("bias", spec.bias)] if with_bias else []), [output],
               dict(kernel_shape=list(spec.kernel_shape), strides=list(spec.strides), pads=list(spec.pads),
                    dilations=list(spec.dilations), group=spec.group), named=True)
        return
    dense = kernels.regroup(spec.weight, spec.group, 1)
    if layout.rank == 2:
        b.node("Gemm", name, [source, constant("weight", dense)]
               + ([constant("bias", spec.bias)] if with_bias else []), [output], dict(transB=1), named=True)
        return
    weight = constant("weight", dense.T)
    if not with_bias:
        b.node("MatMul", name, [source, weight], [output], named=True)
        return
    product = b.tensor(f"{name}_matmul", output.dtype)
    b.node("MatMul", name, [source, weight], [product], named=True)
    b.node("Add", f"{name}_bias", [product, constant("bias", spec.bias)], [output])


def node_count(layout: Layout, spec: ConvSpec, with_bias: bool) -> int:
    """How many nodes :func:`emit` writes for ``spec``."""
    return 2 if with_bias and not spec.spatial_dims and layout.rank != 2 else 1
