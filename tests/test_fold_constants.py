"""fold_constants: Shape of static dims and integer / data-movement / IEEE-basic ops on constants become constants.

What must stay: anything a run-time input can change (dynamic dims, overridable initializers), float
computations whose rounding a runtime chooses, graph outputs, ops outside the default domain or the
whitelist, and results that would grow the model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import histogram, optimize_and_check
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep.api import select_rules
from onnxrep.testing import GraphBuilder

ONLY = {"rules": select_rules(only=["fold_constants"])}
I64 = np.int64
F32 = np.float32
EXACT16 = np.array([1, 0.75, 0.5, 0.25, 0, -0.25])  # float16 holds these exactly: see test_castlike_to_a_known_dtype


def c(b: GraphBuilder, value, dtype=I64) -> str:
    return b.constant(np.array(value, dtype))


def int_output(b: GraphBuilder, name: str, elem_type=TensorProto.INT64) -> None:
    b.outputs.append(helper.make_tensor_value_info(name, elem_type, None))


def stays(model: onnx.ModelProto) -> onnx.ModelProto:
    """Optimize with fold_constants alone and check that nothing was folded."""
    optimized, report = optimize_and_check(model, histogram(model), **ONLY)
    assert not report.fired["fold_constants"] and not report.dropped  # refused, not rolled back
    return optimized


# --- TorchScript: every shape static, indices enumerated at run time -------------------------------------------------

def torchscript(consumer: str = "gather", blocks: int = 1) -> onnx.ModelProto:
    """x[:, :, Range(0, Shape(x)[2], 1)], or a ScatterND of the first 3 rows of x (transposed) by such indices."""
    b = GraphBuilder(seed=90)
    y = b.input("x", [1, 4, 6, 6])
    for _ in range(blocks):
        rows = b.node("Range", [c(b, 0), b.node("Gather", [b.node("Shape", [y]), c(b, 2)], axis=0), c(b, 1)])
        if consumer == "gather":
            y = b.node("Gather", [y, rows], axis=2)
            continue
        t = b.node("Transpose", [y], perm=[2, 0, 1, 3])  # (6, 1, 4, 6)
        rows = b.node("Slice", [rows, c(b, [0]), c(b, [3])])
        indices = (b.node("Unsqueeze", [rows, c(b, [-1])]) if consumer == "unsqueeze"
                   else b.node("Reshape", [rows, c(b, [-1, 1])]))
        written = b.node("ScatterND", [t, indices, b.node("Neg", [b.node("Gather", [t, rows], axis=0)])])
        y = b.node("Transpose", [written], perm=[1, 2, 0, 3])
    b.output(y)
    return b.model()


@pytest.mark.parametrize("consumer,expected,folds", [
    ("gather", {"Gather": 1}, 3),                                                 # Shape, Gather, Range
    ("unsqueeze", {"Transpose": 2, "Gather": 1, "Neg": 1, "ScatterND": 1}, 5),  # + Slice, Unsqueeze
    ("reshape", {"Transpose": 2, "Gather": 1, "Neg": 1, "ScatterND": 1}, 5),    # + Slice, Reshape
])
def test_torchscript_indices_fold(consumer, expected, folds):
    optimized, report = optimize_and_check(torchscript(consumer), expected, **ONLY)
    assert report.fired["fold_constants"] == folds
    # The Gather left reads data (x or its transpose) at constant indices: 0..5, or 0..2 for the partial write.
    gather = next(n for n in optimized.graph.node if n.op_type == "Gather")
    indices = next(i for i in optimized.graph.initializer if i.name == gather.input[1])
    np.testing.assert_array_equal(numpy_helper.to_array(indices), np.arange(6 if consumer == "gather" else 3))


def test_folded_model_is_not_bigger():
    model = torchscript("unsqueeze", blocks=6)
    optimized, report = optimize_and_check(model, {"Transpose": 12, "Gather": 6, "Neg": 6, "ScatterND": 6}, **ONLY)
    assert report.fired["fold_constants"] == 6 * 5
    assert optimized.ByteSize() <= model.ByteSize()


@pytest.mark.parametrize("build", [lambda: torchscript("unsqueeze"), lambda: dynamo(("Gather", 0), ("Gather", 2))],
                         ids=["torchscript", "dynamo"])
def test_second_run_changes_nothing(build):
    once, first = onnxrep.optimize(build())
    assert first.fired["fold_constants"]
    twice, second = onnxrep.optimize(once)
    assert not second.fired
    assert histogram(twice) == histogram(once)


def test_default_rules_still_drop_a_whole_write_with_a_static_batch():
    from test_fold_whole_write import whole_write

    optimized, report = optimize_and_check(whole_write(batch=1))
    assert "ScatterND" not in histogram(optimized), dict(report.fired)


# --- dynamo: a dynamic batch, static spatial dims --------------------------------------------------------------------

def dynamo(*selects) -> onnx.ModelProto:
    """Reshape(x, [-1, *dims]) with dims picked out of Shape(x) by each of ``selects``; x is (N, 4, 6, 6)."""
    b = GraphBuilder(seed=91)
    x = b.input("x", ["N", 4, 6, 6])
    parts = [c(b, [-1])]
    for op, *args in selects:
        if op == "Shape":
            dims = b.node("Shape", [x], **args[0])
        elif op == "Gather":
            dims = b.node("Gather", [b.node("Shape", [x]), c(b, args[0])], axis=0)
            if np.ndim(args[0]) == 0:
                dims = b.node("Unsqueeze", [dims, c(b, [0])])
        else:
            start, end, step = args
            dims = b.node("Slice", [b.node("Shape", [x]), c(b, [start]), c(b, [end]), c(b, [0]), c(b, [step])])
        parts.append(dims)
    b.output(b.node("Reshape", [x, b.node("Concat", parts, axis=0)]))
    return b.model()


@pytest.mark.parametrize("select", [
    ("Gather", 2), ("Gather", -1), ("Gather", [3, 1]),
    ("Slice", 2, 4, 1), ("Slice", -1, 1, -1), ("Slice", 1, 2**62, 2),
    ("Shape", {"start": 2}), ("Shape", {"start": -2}), ("Shape", {"start": 1, "end": -1}),
    ("Shape", {"start": 3, "end": 9}),
], ids=str)
def test_static_dims_of_a_dynamic_shape_fold(select):
    _, report = optimize_and_check(dynamo(select), {"Reshape": 1}, **ONLY)
    assert report.fired["fold_constants"] >= 2  # the selection, then the Concat


@pytest.mark.parametrize("select", [
    ("Gather", 0), ("Gather", -4), ("Gather", [2, 0]),
    ("Slice", 0, 2, 1), ("Slice", -1, -10, -1),
    ("Shape", {}), ("Shape", {"end": 1}), ("Shape", {"start": -9, "end": 2}),
], ids=str)
def test_a_selected_dynamic_dim_stays(select):
    stays(dynamo(select))


@pytest.mark.parametrize("static", [True, False])
def test_size(static):
    b = GraphBuilder(seed=92)
    x = b.input("x", [1 if static else "N", 4, 6, 6])
    b.output(b.node("Add", [x, b.node("Cast", [b.node("Size", [x])], to=TensorProto.FLOAT)]))
    if static:
        optimize_and_check(b.model(), {"Add": 1}, **ONLY)
    else:
        stays(b.model())


# --- integer arithmetic, shapes known only to shape inference --------------------------------------------------------

def test_integer_chain_folds_into_a_reshape_shape():
    b = GraphBuilder(seed=93)
    x = b.input("x", [1, 4, 6, 6])
    two = b.node("Constant", [], value=numpy_helper.from_array(np.array(2, I64)))
    six = b.node("Add", [two, c(b, 4)])
    area = b.node("ReduceProd", [b.node("Concat", [b.node("Unsqueeze", [six, c(b, [0])]), c(b, [6])], axis=0)],
                  keepdims=1)                                                                    # [36]
    dims = b.node("Concat", [c(b, [1]), b.node("Sub", [c(b, [9]), c(b, [5])]), area], axis=0)  # [1, 4, 36]
    ones = b.node("ConstantOfShape", [c(b, [3])], value=numpy_helper.from_array(np.array([1], I64)))
    dims = b.node("Where", [b.node("Equal", [dims, ones]), ones, b.node("Mul", [dims, ones])])
    dims = b.node("Expand", [b.node("Reshape", [dims, c(b, [1, 3])]), c(b, [2, 1])])           # two rows
    dims = b.node("Gather", [dims, c(b, 1)], axis=0)
    dims = b.node("Cast", [b.node("Cast", [dims], to=TensorProto.INT32)], to=TensorProto.INT64)
    b.output(b.node("Reshape", [x, dims]))
    model = b.model()
    _, report = optimize_and_check(model, {"Reshape": 1}, **ONLY)
    assert report.fired["fold_constants"] == len(model.graph.node) - 2  # all but the Constant and the last Reshape


def test_shapes_known_only_to_shape_inference_fold_over_sweeps():
    """No value_info: each Pad's output shape needs its pads folded first, then inference on the new graph."""
    b = GraphBuilder(seed=94)
    x = b.input("x", [1, 4, 6, 6])
    padded = b.node("Pad", [x, b.node("Tile", [c(b, [0, 0, 1, 1]), c(b, [2])])])          # (1, 4, 8, 8)
    width = b.node("Gather", [b.node("Shape", [padded]), c(b, [3])], axis=0)              # [8]
    pads = b.node("Tile", [b.node("Concat", [c(b, [0, 0, 0]), b.node("Sub", [width, c(b, [7])])], axis=0),
                           c(b, [2])])                                                         # [0, 0, 0, 1] × 2
    padded = b.node("Pad", [padded, pads])                                                     # (1, 4, 8, 10)
    tail = b.node("Slice", [b.node("Shape", [padded]), c(b, [2]), c(b, [4])])
    b.output(b.node("Reshape", [padded, b.node("Concat", [c(b, [-1]), tail], axis=0)]))
    model = b.model()
    assert not any(v.name == padded for v in model.graph.value_info)
    _, report = optimize_and_check(model, {"Pad": 2, "Reshape": 1}, **ONLY)
    assert report.sweeps >= 3  # the second Pad's shape is inferred in a later sweep than the first's


# --- float computations ----------------------------------------------------------------------------------------------

def test_ieee_basic_float_ops_fold_to_the_same_bits():
    b = GraphBuilder(seed=95)
    x = b.input("x", [1, 4, 6, 6])
    w, v = (c(b, b.rng.standard_normal(4).reshape(1, 4, 1, 1) + 2, F32) for _ in range(2))
    value = b.node("Div", [b.node("Mul", [b.node("Add", [w, v]), b.node("Sqrt", [w])]),
                           b.node("Sub", [v, b.node("Reciprocal", [b.node("Neg", [w])])])])
    b.output(b.node("Add", [x, value]))
    _, report = optimize_and_check(b.model(), {"Add": 1}, rtol=0, atol=0, **ONLY)
    assert report.fired["fold_constants"] == 7


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Exp", [[0.5, 1.5]], {}),                        # transcendental
    ("Erf", [[0.5, 1.5]], {}),
    ("Sum", [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], {}),  # the order of additions varies
    ("ReduceSum", [[0.1, 0.2, 0.3]], {"keepdims": 0}),
    ("ReduceProd", [[0.1, 0.2, 0.3]], {"keepdims": 0}),
    ("Range", [0.0, 3.0, 1.5], {}),
])
def test_other_float_computations_stay(op, inputs, attrs):
    b = GraphBuilder(seed=96)
    x = b.input("x", [1, 4, 6, 2])
    b.output(b.node("Add", [x, b.node(op, [c(b, i, F32) for i in inputs], **attrs)]))
    stays(b.model())


# --- must not fold ---------------------------------------------------------------------------------------------------

def integer_op(op, inputs, domain=None):
    """x + Cast(op(*int64 constants)): the op stays unless it may be folded."""
    b = GraphBuilder(seed=97)
    x = b.input("x", [1, 4, 6, 2])
    value = b.node(op, [c(b, i) for i in inputs], domain=domain)
    b.output(b.node("Add", [x, b.node("Cast", [value], to=TensorProto.FLOAT)]), [1, 4, 6, 2])
    if domain is None:
        return b.model()
    graph = helper.make_graph(b.nodes, "g", b.inputs, b.outputs, b.initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


@pytest.mark.parametrize("op,inputs,domain", [
    ("Div", [[6, 7], [3, 2]], None),            # integer division: by zero undefined
    ("Mod", [[6, 7], [4, 3]], None),            # not whitelisted
    ("Pow", [[2, 3], [2, 2]], None),
    ("Range", [0, 2, 1], "com.microsoft"),      # a whitelisted name, in another domain
], ids=lambda v: v if isinstance(v, str) else None)
def test_integer_ops_outside_the_whitelist_stay(op, inputs, domain):
    stays(integer_op(op, inputs, domain))


@pytest.mark.parametrize("op", ["Size", "Shape"])
def test_a_size_of_another_domain_stays(op):
    """local.Size (local.Shape), a model function computing Size(X) + 1: folding it as a Size would be wrong."""
    b = GraphBuilder(seed=97)
    x = b.input("x", [1, 4, 6, 6])
    total = b.node(op, [x], domain="local")
    if op == "Shape":
        total = b.node("ReduceSum", [total], keepdims=0)
    b.output(b.node("Add", [x, b.node("Cast", [total], to=TensorProto.FLOAT)]), [1, 4, 6, 6])
    body = [helper.make_node(op, ["X"], ["S"]),
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, I64))),
            helper.make_node("Add", ["S", "one"], ["Y"])]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    function = helper.make_function("local", op, ["X"], ["Y"], body, opsets[:1])
    graph = helper.make_graph(b.nodes, "g", b.inputs, b.outputs, b.initializers)
    stays(helper.make_model(graph, opset_imports=opsets, functions=[function], ir_version=10))


def test_graph_outputs_stay():
    b = GraphBuilder(seed=98)
    x = b.input("x", [1, 4, 6, 6])
    shape = b.node("Shape", [x])
    int_output(b, shape)
    int_output(b, b.node("Add", [c(b, [1, 2]), c(b, [3, 4])]))
    b.output(b.node("Reshape", [x, b.node("Concat", [c(b, [-1]), b.node("Slice", [shape, c(b, [3]), c(b, [4])])],
                                          axis=0)]))
    _, report = optimize_and_check(b.model(), {"Shape": 1, "Add": 1, "Reshape": 1}, **ONLY)
    assert report.fired["fold_constants"] == 2  # the Slice and the Concat


def overridable(read: str, declared) -> onnx.ModelProto:
    """Reshape(x, Concat([1], Shape(w)...)) for an initializer w (4, 36) that is also a graph input."""
    b = GraphBuilder(seed=99)
    x = b.input("x", [1, 4, 6, 6])
    w = b.constant(np.ones((4, 36), F32), "w")
    source = b.node("Relu", [w]) if read == "relu" else w
    if read == "size":
        b.output(b.node("Add", [x, b.node("Cast", [b.node("Size", [w])], to=TensorProto.FLOAT)]))
    else:
        dims = b.node("Shape", [source]) if read != "gather" else b.node("Gather", [b.node("Shape", [w]), c(b, [1])])
        b.output(b.node("Reshape", [x, b.node("Concat", [c(b, [1, -1]), dims], axis=0)]))
    model = b.model()
    if declared is not None:
        model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, declared))
    return model


@pytest.mark.parametrize("read", ["shape", "gather"])
@pytest.mark.parametrize("declared", [[4, 36], ["a", "b"]])
def test_shape_of_an_overridable_initializer_stays(read, declared):
    stays(overridable(read, declared))


@pytest.mark.parametrize("read", ["shape", "gather", "relu", "size"])
def test_shape_of_a_plain_initializer_folds(read):
    # The Relu is not folded (not whitelisted), but nothing reads it once its Shape is a constant.
    optimize_and_check(overridable(read, None), {"Add": 1} if read == "size" else {"Reshape": 1}, **ONLY)


@pytest.mark.parametrize("read", ["size", "relu"])
def test_what_an_overridable_initializer_shapes_stays(read):
    stays(overridable(read, ["a", "b"]))


# --- the model must not grow -----------------------------------------------------------------------------------------

def sized(case: str) -> onnx.ModelProto:
    b = GraphBuilder(seed=100)
    if case.startswith("expand"):  # int64 Expand then Cast: 65536 int64 are 512 KiB
        count = int(case.split("-")[1])
        x = b.input("x", [count])
        value = b.node("Cast", [b.node("Expand", [c(b, [7]), c(b, [count])])], to=TensorProto.FLOAT)
    elif case == "cast16":  # float16 weights made float32: twice the bytes
        x = b.input("x", [140_000])
        value = b.node("Cast", [c(b, np.linspace(-1, 1, 140_000), np.float16)], to=TensorProto.FLOAT)
    else:  # transpose of a weight bigger than 512 KiB: as many bytes, unless the weight is also read elsewhere
        w = c(b, np.linspace(-1, 1, 140_000).reshape(2, 70_000), F32)
        x = b.input("x", [70_000, 2])
        value = b.node("Transpose", [w])
        if case == "transpose-shared":
            b.output(b.node("Add", [b.input("y", [2, 70_000]), w]))
    b.output(b.node("Add", [x, value]))
    return b.model()


@pytest.mark.parametrize("case,expected", [
    ("expand-65536", {"Add": 1}),
    ("transpose-private", {"Add": 1}),
    ("expand-65537", None),
    ("cast16", None),
    ("transpose-shared", None),
])
def test_size_limit(case, expected):
    model = sized(case)
    if expected is None:
        optimized = stays(model)
        assert optimized.ByteSize() <= model.ByteSize() + 1024
    else:
        optimize_and_check(model, expected, **ONLY)


# --- CastLike --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("constant", [False, True])
def test_castlike_to_a_known_dtype(constant):
    """CastLike(a, h) with h float16: a Cast to float16, or a float16 constant when a is one.

    The constant's values are exact in float16: onnxruntime's CPU computes CastLike(float32 → float16)
    then a float16 Add as one float32 Add rounded once, so a folded (rounded) constant would not match
    it and verification would roll the fold back.
    """
    b = GraphBuilder(seed=101)
    x = b.input("x", [1, 4, 6, 6])
    b.inputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT16, [1, 4, 6, 6]))
    source = c(b, EXACT16, F32) if constant else x
    halved = b.node("Add", [b.node("CastLike", [source, "h"]), "h"])
    b.output(b.node("Add", [x, b.node("Cast", [halved], to=TensorProto.FLOAT)]))
    optimized, report = optimize_and_check(b.model(), {"Add": 2, "Cast": 1 if constant else 2}, **ONLY)
    assert report.fired["fold_constants"] == 1
    nodes = optimized.graph.node
    if constant:
        add = next(n for n in nodes if n.op_type == "Add" and "h" in n.input)
        value = next(i for i in optimized.graph.initializer if i.name in add.input)
        np.testing.assert_array_equal(numpy_helper.to_array(value), EXACT16.astype(np.float16))
    else:
        cast = next(n for n in nodes if n.op_type == "Cast" and n.input[0] == x)
        assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT16
