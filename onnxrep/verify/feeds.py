"""The inputs verification runs on: seeded random ones, or the caller's own (``--inputs DIR``, ``inputs=``).

Random values suit float inputs. An integer input often carries data (a
shape for Expand, the split sizes of SplitToSequence, indices, zero points)
that random values make invalid, and a sequence or optional input cannot be
invented at all: for those the caller passes real inputs, and the error says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxrep.errors import BadInputs, UnsupportedModel

#: Dynamic dims default to these; ``--input-shape`` overrides them.
DEFAULT_BATCH = 1
DEFAULT_DIM = 32

#: What a caller may give: a directory of .pb / .npy files, or input name → value.
Inputs = Mapping[str, object] | str | os.PathLike


def make_inputs(session: ort.InferenceSession, shapes: dict[str, tuple[int, ...]],
                seed: int) -> dict[str, np.ndarray]:
    """Seeded random inputs; dynamic dims take ``shapes`` or the defaults, one value per dim name."""
    rng = np.random.default_rng(seed)
    named_dims: dict[str, int] = {}
    feeds = {}
    for arg in session.get_inputs():
        if not arg.type.startswith("tensor("):
            raise _cannot_invent(arg)
        if arg.name in shapes:
            shape = tuple(shapes[arg.name])
        else:
            shape = tuple(
                d if isinstance(d, int) and d > 0
                else named_dims.setdefault(d, DEFAULT_BATCH if axis == 0 else DEFAULT_DIM)
                if isinstance(d, str) else (DEFAULT_BATCH if axis == 0 else DEFAULT_DIM)
                for axis, d in enumerate(arg.shape))
        dtype = _numpy_dtype(arg.type)
        if dtype is None or dtype.kind not in "biufO":
            raise _cannot_invent(arg)
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "O":  # strings
            feeds[arg.name] = rng.integers(0, 8, shape).astype(str).astype(object)
        elif dtype == np.bool_:
            feeds[arg.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[arg.name] = rng.integers(0, 8, shape).astype(dtype)
    return feeds


def _cannot_invent(arg) -> UnsupportedModel:
    return UnsupportedModel(f"cannot invent a value for input {arg.name!r} of type {arg.type} to verify the "
                            "result: pass --inputs DIR (API: inputs=) with real inputs")


def _ort_type(type_string: str) -> int:
    """'tensor(float16)' → TensorProto.FLOAT16."""
    return onnx.TensorProto.DataType.Value(type_string.removeprefix("tensor(").removesuffix(")").upper())


#: Types numpy only approximates (onnx maps them to other numpy types): never invented.
_NOT_NUMPY = {getattr(onnx.TensorProto, name) for name in (
    "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "UINT4", "INT4",
    "FLOAT4E2M1", "UINT2", "INT2", "FLOAT8E8M0") if hasattr(onnx.TensorProto, name)}


def inputs_for(session: ort.InferenceSession, given: Inputs | None,
               shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, object]:
    """The feeds of a verification: the caller's inputs when given (checked against the model), else random."""
    if given is None:
        return make_inputs(session, shapes, seed)
    args = session.get_inputs()
    feeds = dict(given) if isinstance(given, Mapping) else load_inputs(given, args)
    missing = [a.name for a in args if a.name not in feeds]
    unknown = [n for n in feeds if n not in {a.name for a in args}]
    where = "inputs=" if isinstance(given, Mapping) else f"--inputs {given}"
    if missing or unknown:
        raise BadInputs(f"{where}: " + "; ".join(
            ([f"no value for input(s) {', '.join(map(repr, missing))}"] if missing else [])
            + ([f"no model input named {', '.join(map(repr, unknown))}"] if unknown else []))
            + f" (the model's inputs: {', '.join(repr(a.name) for a in args)})")
    for arg in args:
        value = feeds[arg.name]
        if arg.type.startswith("tensor(") and not isinstance(value, np.ndarray):
            feeds[arg.name] = value = np.asarray(value)
        if isinstance(value, np.ndarray) and arg.type.startswith("tensor("):
            expected = _numpy_dtype(arg.type)
            if expected is not None and expected.kind != "O" and value.dtype != expected:
                raise BadInputs(f"{where}: input {arg.name!r} is {value.dtype}, the model takes {arg.type}")
    return feeds


def _numpy_dtype(type_string: str) -> np.dtype | None:
    """The numpy dtype of an onnxruntime 'tensor(...)' type; None for a type numpy has not exactly."""
    try:
        code = _ort_type(type_string)
        return None if code in _NOT_NUMPY else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, ValueError, TypeError):
        return None


def load_inputs(directory: str | os.PathLike, args) -> dict[str, object]:
    """Read ``.pb`` (TensorProto, or Sequence/Optional/MapProto for such inputs) and ``.npy`` files.

    A file is matched to an input by the name it holds (a .pb's proto name, a
    .npy's file name); the others are taken in order (``input_0.pb``,
    ``input_1.pb``, ... sorted by their number) for the inputs left, in the
    model's order. ``output_N.pb`` files (the expected outputs in onnx's test data layout) are skipped.
    """
    root = Path(directory)
    if not root.is_dir():
        raise BadInputs(f"--inputs {directory}: " + ("not a directory" if root.exists() else "no such directory"))
    files = sorted((p for p in root.iterdir() if p.suffix in (".pb", ".npy") and p.is_file()
                    and not _EXPECTED_OUTPUT.fullmatch(p.name)), key=_natural)
    by_name = {a.name: a for a in args}
    feeds: dict[str, object] = {}
    unmatched = []
    for path in files:
        name, value = _named_value(path, by_name)
        if name is not None and name not in feeds:
            feeds[name] = value
        else:
            unmatched.append(path)
    left = [a for a in args if a.name not in feeds]
    if len(unmatched) > len(left):
        raise BadInputs(f"--inputs {directory}: {len(unmatched)} file(s) match no input by name and only "
                        f"{len(left)} input(s) are left: {', '.join(p.name for p in unmatched[len(left):])}")
    for path, arg in zip(unmatched, left):
        feeds[arg.name] = _read(path, arg.type)
    return feeds


#: The expected outputs beside the inputs in onnx's backend test data layout: not inputs.
_EXPECTED_OUTPUT = re.compile(r"output_\d+\.pb")


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _named_value(path: Path, by_name) -> tuple[str | None, object]:
    """The input a file names (a .npy by its file name, a .pb by the name in its proto) and its value."""
    if path.suffix == ".npy":
        arg = by_name.get(path.stem)
        return (path.stem, _read(path, arg.type)) if arg is not None else (None, None)
    data = path.read_bytes()
    for kind, proto_type in _PROTOS.items():
        proto = proto_type()
        try:
            proto.ParseFromString(data)
        except Exception:  # noqa: BLE001 (protobuf raises several types)
            continue
        arg = by_name.get(getattr(proto, "name", ""))
        if arg is not None and _kind(arg.type) == kind:
            return arg.name, _read(path, arg.type)
    return None, None


_PROTOS = {"tensor": onnx.TensorProto, "seq": onnx.SequenceProto, "optional": onnx.OptionalProto,
           "map": onnx.MapProto}


def _kind(type_string: str) -> str:
    return type_string.split("(", 1)[0]


def _read(path: Path, type_string: str) -> object:
    """One file as onnxruntime takes it: an array, a list (sequence), a dict (map), or None (empty optional)."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        proto = _PROTOS.get(_kind(type_string), onnx.TensorProto)()
        proto.ParseFromString(path.read_bytes())
        if isinstance(proto, onnx.SequenceProto):
            return numpy_helper.to_list(proto)
        if isinstance(proto, onnx.OptionalProto):
            return numpy_helper.to_optional(proto)
        if isinstance(proto, onnx.MapProto):
            return numpy_helper.to_dict(proto)
        return numpy_helper.to_array(proto)
    except Exception as error:  # noqa: BLE001 (protobuf, numpy and onnx raise many types)
        text = " ".join(str(error).split())[:200] or type(error).__name__
        raise BadInputs(f"--inputs: {path}: cannot read it as {type_string}: {text}") from None


def hint(session: ort.InferenceSession, given: Inputs | None, shapes: dict | None = None) -> str:
    """What to do when onnxruntime cannot run the original on the verification inputs, with a leading
    space. At sizes the caller chose (``shapes``: --input-shape) setting them is no advice."""
    if given is not None:
        return " (on the inputs given)"
    other_size = "" if shapes else ", or set --input-shape"
    integers = [a.name for a in session.get_inputs() if _is_integer(a.type)]
    if integers:
        return (f" (random values of integer input(s) {', '.join(map(repr, integers))} may be invalid for this "
                f"model: pass --inputs DIR with real inputs{other_size})")
    return "" if shapes else " (set --input-shape, or pass --inputs DIR with real inputs)"


def _is_integer(type_string: str) -> bool:
    dtype = _numpy_dtype(type_string) if type_string.startswith("tensor(") else None
    return dtype is not None and dtype.kind in "iu"


def describe(value: object) -> str:
    """A non-tensor input in a report: 'sequence of 3', 'map', 'empty optional'."""
    if isinstance(value, list):
        return f"sequence of {len(value)}"
    return "empty optional" if value is None else type(value).__name__


def leaves(outputs) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, reference, actual) of every tensor in the (name, reference, actual) outputs: a sequence's
    elements are ``name[i]``; outputs of different structure (a sequence of other length, an empty
    optional) yield arrays that cannot match."""
    for name, ref, act in outputs:
        yield from _leaves(name, ref, act)


def _leaves(name, ref, act):
    if isinstance(ref, np.ndarray) and isinstance(act, np.ndarray):
        yield name, ref, act
    elif isinstance(ref, list) and isinstance(act, list) and len(ref) == len(act):
        for i, (r, a) in enumerate(zip(ref, act)):
            yield from _leaves(f"{name}[{i}]", r, a)
    elif isinstance(ref, dict) and isinstance(act, dict) and ref.keys() == act.keys():
        for key in ref:
            yield from _leaves(f"{name}[{key!r}]", np.asarray(ref[key]), np.asarray(act[key]))
    elif ref is None and act is None:
        return
    elif not isinstance(ref, (list, dict)) and ref is not None and not isinstance(act, (list, dict)) \
            and act is not None:
        yield name, np.asarray(ref), np.asarray(act)
    else:
        yield name, np.zeros((0,), np.int8), np.zeros((1,), np.int8)  # different structure: a mismatch
