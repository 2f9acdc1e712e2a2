"""merge_parallel: parallel branches of one tensor, summed, become one Conv.

Before:  Y = Conv_a(X) + Conv_b(X) + BatchNormalization(X) + X  (Add chains, Sum, Sub)
After:   Y = Conv(X)                                   (RepVGG, ACNet, MobileOne, ...)

The join is the whole tree of Add / Sum / Sub nodes whose intermediate
results nothing else reads, so ``Add(Add(a, b), c)`` is one join; Sub gives
its second operand the sign −1. Each operand is lifted to a ConvSpec of its
source tensor: a Conv with constant weights, an inference BatchNormalization
(a depthwise 1x1 conv), or the source itself (the identity). Branches of one
source are merged by spec.merge_parallel (taps aligned, kernels padded,
groups and dilations reconciled, cost never higher), greedily from the most
expensive branch so that an incompatible branch stays out instead of
spoiling the rest. Operands that do not merge stay in a smaller join.

Conditions:
  1. Every merged branch's output is read by the join only (no graph output).
     When that leaves operands unmerged, a tensor read by several nodes of
     the join's own region (the nodes only the join's result depends on) may
     be followed back too, by each branch that reads it (DoRA:
     ``base + (c − 1)·(base − b) + c·s·B(A(x))`` reads base twice, and each
     branch becomes a spec of x), provided nothing left outside the rewrite
     reads what it removes and the merged convs cost no more than the ops
     they replace, each counted once. The cost is judged for the whole join:
     a rank-r LoRA chain, costlier as one matrix on its own, costs nothing
     summed into W.
  2. Weights are constants read by that branch only.
  3. The branches' output shapes are equal for every input size (so the join
     never broadcasts among them) and their taps line up.
  4. The merged conv costs no more multiply-adds per pixel than the branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxrep.algebra import spec
from onnxrep.algebra.spec import ConvSpec
from onnxrep.ir import lower
from onnxrep.ir.branches import Branch, layouts, lift_branch
from onnxrep.ir.graph import Context, constant_value, is_op, producer
from onnxrep.ir.lift import LIFTERS
from onnxrep.refusal import Refused
from onnxrep.rewrite.contract import Builder, Replacement, Rule

NAME = "merge_parallel"
JOIN_OPS = ("Add", "Sum", "Sub")


@dataclass(frozen=True, eq=False)
class Join:
    root: gs.Node
    joins: tuple[gs.Node, ...]
    merges: tuple[tuple[ConvSpec, tuple[Branch, ...]], ...]
    rest: tuple[tuple[gs.Tensor, int], ...]  # operands left as they are, with their signs

    @property
    def output(self) -> str:
        return self.root.outputs[0].name

    @property
    def nodes(self) -> tuple[gs.Node, ...]:
        # a node inside the join (DoRA's base Linear) may be part of several branches: listed once
        nodes = self.joins + tuple(n for _, branches in self.merges for b in branches for n in b.nodes)
        return tuple({id(n): n for n in nodes}.values())


def _is_join(node: gs.Node | None) -> bool:
    return is_op(node, *JOIN_OPS) and len(node.outputs) == 1 and (
        len(node.inputs) == 2 or node.op == "Sum")


def _inner(tensor: gs.Tensor, reader: gs.Node, ctx: Context) -> gs.Node | None:
    """The join that produces ``tensor`` when it folds into ``reader``'s join."""
    node = producer(tensor)
    return node if _is_join(node) and ctx.private(tensor, reader) else None


def _is_inner(node: gs.Node, ctx: Context) -> bool:
    """A join whose result only an enclosing join reads: part of that bigger join."""
    return any(_is_join(r) and _inner(node.outputs[0], r, ctx) for r in node.outputs[0].outputs)


def _flatten(node: gs.Node, sign: int, ctx: Context, operands: list, joins: list) -> None:
    joins.append(node)
    signs = (1, -1) if node.op == "Sub" else (1,) * len(node.inputs)
    for tensor, s in zip(node.inputs, signs):
        inner = _inner(tensor, node, ctx)
        if inner is not None:
            _flatten(inner, sign * s, ctx, operands, joins)
        else:
            operands.append((tensor, sign * s, node))


def _greedy_merge(branches: list[Branch]) -> tuple[ConvSpec | None, list[Branch], list[tuple[Branch, Refused]]]:
    """All at once when that works (the usual case); else from the costliest branch down,
    keeping each branch that still merges exactly."""
    ordered = sorted(branches, key=lambda b: -b.spec.cost)
    try:
        return spec.merge_parallel([b.spec for b in ordered]), ordered, []
    except Refused:
        pass
    kept, left_out, merged = [ordered[0]], [], None
    for branch in ordered[1:]:
        try:
            merged = spec.merge_parallel([b.spec for b in kept + [branch]])
        except Refused as refusal:
            left_out.append((branch, refusal))
        else:
            kept.append(branch)
    return merged, kept, left_out


def _lift(tensor, sign, reader, ctx: Context, ranks, region) -> tuple[Branch | None, Refused | None]:
    """An operand as a branch of its source, or its refusal (reported only when it shares a source)."""
    try:
        return lift_branch(tensor, sign, reader, ctx, ranks, region), None
    except Refused as refusal:
        return None, refusal


#: Ops a join's region is followed back through: the joins and every op the lifter knows.
REGION_OPS = (*JOIN_OPS, *LIFTERS)


def _region(root: gs.Node, ctx: Context) -> dict[int, gs.Node]:
    """The nodes (by id) whose results only ``root``'s result depends on, as far back as another join:
    the root's join tree, and back from it every liftable op whose outputs are read by nodes of the
    region only (no graph output). Another join of computed tensors (the block before's residual Add)
    bounds it: a join's region is its own branches, not the network before it."""
    operands, joins = [], []
    _flatten(root, 1, ctx, operands, joins)
    own = {id(j) for j in joins}
    region, todo = {id(root): root}, [producer(t) for t in root.inputs]
    while todo:
        node = todo.pop()
        if node is None or id(node) in region or not is_op(node, *REGION_OPS):
            continue
        if id(node) not in own and _is_join(node) and sum(constant_value(t) is None for t in node.inputs) > 1:
            continue
        if any(id(t) in ctx.graph_outputs or not t.outputs or any(id(r) not in region for r in t.outputs)
               for t in node.outputs):
            continue  # read outside (so far): looked at again when another of its readers joins
        region[id(node)] = node
        todo.extend(producer(t) for t in node.inputs)
    return region


def _read_twice_inside(region: dict[int, gs.Node], ctx: Context) -> bool:
    """Whether some tensor a node of the region computes is read more than once, by nodes of the region
    only: the one thing the region changes (else matching again would find what the first match found)."""
    return any(len(t.outputs) > 1 and id(producer(t)) in region and id(t) not in ctx.graph_outputs
               and all(id(r) in region for r in t.outputs)
               for node in region.values() for t in node.inputs)


def _self_contained(join: Join, ctx: Context) -> bool:
    """Whether the rewrite leaves nothing reading what it removes (the tensors it rewires aside): with a
    region, a branch may pass through a tensor another operand, left as it is, still needs."""
    removed = {id(n) for n in join.nodes}
    kept = {id(t) for t, _ in join.rest}
    for node in join.nodes:
        for tensor in node.outputs:
            if node is join.root:
                continue
            if id(tensor) in kept or id(tensor) in ctx.graph_outputs or any(id(r) not in removed
                                                                              for r in tensor.outputs):
                return False
    return True


def _not_costlier(join: Join) -> bool:
    """Whether the merged convs cost no more than the ops they replace, each op counted once: branches
    that follow one tensor back all hold its producer, and the merge's own check counts it per branch
    (a 3x3 bottleneck read by two 1x1 convs would pass as two 3x3 convs)."""
    replaced = {node: cost for _, branches in join.merges for b in branches for node, cost in b.costs}
    return sum(merged.cost for merged, _ in join.merges) <= sum(replaced.values())


def match(ctx: Context, root: gs.Node) -> Join | None:
    """The join with each operand followed back through tensors read by it alone; when that leaves
    operands unmerged, also through tensors only the join's own nodes read (DoRA's
    ``base + (c − 1)·(base − b) + c·s·lora(x)`` reads base twice): that one when it merges more."""
    if not _is_join(root) or _is_inner(root, ctx):
        return None
    mark = len(ctx.notes)
    strict = _match(ctx, root, None)
    if strict is not None and not strict.rest:
        return strict
    region = _region(root, ctx)
    if not _read_twice_inside(region, ctx):
        return strict
    notes = ctx.notes[mark:]
    del ctx.notes[mark:]
    wide = _match(ctx, root, region)
    if (wide is not None and _self_contained(wide, ctx) and _not_costlier(wide)
            and (strict is None or len(wide.rest) < len(strict.rest))):
        return wide
    ctx.notes[mark:] = notes
    return strict


def _match(ctx: Context, root: gs.Node, region: dict[int, gs.Node] | None) -> Join | None:
    operands, joins = [], []
    _flatten(root, 1, ctx, operands, joins)
    where = f"{root.op} {root.name}"
    ranks = layouts([t for t, _, _ in operands])
    lifted = [_lift(t, s, reader, ctx, ranks, region) for t, s, reader in operands]
    branches_of = {}
    for b, _ in lifted:
        if b is not None:
            branches_of.setdefault(id(b.source), b)

    groups: dict[int, list[Branch]] = {}
    rest: list[tuple[gs.Tensor, int]] = []
    for (tensor, sign, _), (branch, refusal) in zip(operands, lifted):
        sibling = branches_of.get(id(tensor))
        if branch is None and sibling is not None:
            # The source itself is an operand: the identity branch.
            identity = spec.identity(sibling.spec.in_channels, sibling.spec.spatial_dims)
            branch = Branch(tensor, sign, tensor, identity if sign > 0 else identity.negated(),
                            sibling.layout, (), tensor.name, None, False)
        if branch is not None:
            groups.setdefault(id(branch.source), []).append(branch)
            continue
        if refusal is not None and _shares_source(tensor, operands):
            refusal.where = where
            ctx.note(refusal)
        rest.append((tensor, sign))

    merges = []
    for branches in groups.values():
        if len(branches) < 2 or all(not b.nodes for b in branches):
            rest.extend((b.operand, b.sign) for b in branches)
            continue
        merged, kept, left_out = _greedy_merge(branches)
        for branch, refusal in left_out:
            refusal.where = f"{where}: {branch.name}"
            ctx.note(refusal)
            rest.append((branch.operand, branch.sign))
        if merged is None:
            rest.extend((b.operand, b.sign) for b in kept)
        else:
            merges.append((merged, tuple(kept)))
    return Join(root, tuple(joins), tuple(merges), tuple(rest)) if merges else None


def _shares_source(tensor: gs.Tensor, operands) -> bool:
    """Whether a refused operand reads a tensor that another operand is or reads."""
    node = producer(tensor)
    if node is None or not node.inputs:
        return False
    # The data input: Mul(c, X) reads X as its second input.
    source = next((t for t in node.inputs if constant_value(t) is None), node.inputs[0])
    for other, _, _ in operands:
        other_node = producer(other)
        if other is source or (other is not tensor and other_node is not None
                               and any(t is source for t in other_node.inputs)):
            return True
    return False


def build(b: Builder, m: Join) -> Replacement:
    output = m.root.outputs[0]
    dtype = output.dtype
    operands: list[tuple[gs.Tensor, int]] = []
    alone = not m.rest and len(m.merges) == 1
    for merged, branches in m.merges:
        anchor = max(branches, key=lambda br: br.spec.cost)
        weight_dtype = next((br.dtype for br in branches if br.dtype is not None), dtype)
        target = output if alone else b.tensor(f"{anchor.name}_merged", dtype)
        # Branches that all entered negated (a Sub's right side) stay a Sub of a positive conv.
        sign = -1 if not alone and all(br.sign < 0 for br in branches) else 1
        lower.emit(b, anchor.name, branches[0].source, merged if sign > 0 else merged.negated(),
                   branches[0].layout, target, np.dtype(weight_dtype), with_bias=any(br.has_bias for br in branches))
        operands.append((target, sign))
    if alone:
        return b.replacement(m.nodes)
    operands = sorted(operands + list(m.rest), key=lambda o: -o[1])  # a positive operand first
    if m.root.op == "Sum" and all(sign > 0 for _, sign in operands):
        b.node("Sum", m.root.name or "Sum", [t for t, _ in operands], [output])
        return b.replacement(m.nodes)
    accumulated = operands[0][0]
    for i, (tensor, sign) in enumerate(operands[1:], start=1):
        last = i == len(operands) - 1
        target = output if last else b.tensor(f"{m.root.name}_partial", dtype)
        op = "Add" if sign > 0 else "Sub"
        b.node(op, m.root.name or op, [accumulated, tensor], [target])
        accumulated = target
    return b.replacement(m.nodes)


RULE = Rule(NAME, "Add/Sum/Sub of conv, BatchNormalization and identity branches of one tensor "
                  "merged into one Conv", JOIN_OPS, match, build)
