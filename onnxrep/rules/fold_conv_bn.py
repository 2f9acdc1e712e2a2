"""fold_conv_bn: a Conv followed by an inference BatchNormalization becomes one Conv.

Before:  X → Conv(W, b) → T → BatchNormalization(γ, β, μ, σ², ε) → Y
After:   X → Conv(W', b') → Y

Conditions:
  1. T is read by the BatchNormalization only, and is not a graph output.
  2. W (and b) are constants read by this Conv only (see lift.conv).
  3. The BatchNormalization is in inference mode with constant parameters,
     one per output channel of the Conv.

Formula, per output channel c, with s = γ / √(σ² + ε):
  W'[c] = W[c] · s[c]        b'[c] = (b[c] − μ[c]) · s[c] + β[c]
Any kernel rank (1-D, 2-D, 3-D), strides, pads, dilations and groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs

from onnxrep import kernels, lift
from onnxrep.graph import Context, is_op, producer
from onnxrep.rules import Finding, Rule
from onnxrep.spec import Refusal

NAME = "fold_conv_bn"


@dataclass(frozen=True, eq=False)
class ConvBN:
    conv: gs.Node
    bn: gs.Node
    lifted: lift.LiftedConv
    affine: lift.Affine

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        return (self.conv, self.bn)


def find(ctx: Context) -> Iterator[ConvBN | Finding]:
    for bn in ctx.graph.nodes:
        if not is_op(bn, "BatchNormalization") or not bn.inputs:
            continue
        conv = producer(bn.inputs[0])
        if not is_op(conv, "Conv"):
            continue
        where = f"{conv.name} → {bn.name}"
        if not ctx.private(bn.inputs[0], bn):
            yield Finding(NAME, where, f"the conv output is also read by {ctx.readers(bn.inputs[0], bn)}")
            continue
        lifted = lift.conv(conv, ctx)
        affine = lift.batchnorm(bn, ctx)
        refusal = next((r for r in (lifted, affine) if isinstance(r, Refusal)), None)
        if refusal is not None:
            yield Finding(NAME, where, refusal.reason)
        elif affine.scale.size != lifted.spec.out_channels:
            yield Finding(NAME, where, f"BatchNormalization has {affine.scale.size} channels, "
                                       f"the conv {lifted.spec.out_channels}")
        else:
            yield ConvBN(conv, bn, lifted, affine)


def rewrite(ctx: Context, match: ConvBN) -> None:
    spec = match.lifted.spec
    weight, bias = kernels.scale_conv(spec.weight, spec.bias, match.affine.scale, match.affine.shift)
    source, output = match.conv.inputs[0], match.bn.outputs[0]
    ctx.detach(match.nodes)
    ctx.emit_conv(match.conv.name, source, replace(spec, weight=weight, bias=bias), output,
                  match.lifted.dtype)


RULE = Rule(NAME, "Conv → BatchNormalization (inference) folded into one Conv", find, rewrite)
