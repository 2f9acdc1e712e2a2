"""Loading and saving models, with one clear error per way a file can be wrong.

Saving is atomic: the model (and its external-data file) is written into a
temporary directory beside the target and renamed into place, so a failed
run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

from onnxrep.errors import (
    CorruptModel,
    InputNotFound,
    MissingExternalData,
    NotOnnx,
    OutputError,
    UnsupportedModel,
)

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot be larger
#: Room left under the limit for everything that is not weights (nodes, names, shapes).
STRUCTURE_MARGIN = 64 * 2**20


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, from their dims and types: far cheaper than ByteSize()."""
    return sum(_data_bytes(tensor) for tensor in model.graph.initializer)


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's raw data, from its dims and type (0 for strings, which have no raw form)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return 0
    count = 1
    for d in tensor.dims:
        count *= d
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits:
        return (count * bits + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def too_big_for_protobuf(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) > PROTOBUF_LIMIT - STRUCTURE_MARGIN


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, parse and check a model, with its external data loaded from its own directory."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO or /dev/zero: reading would block
            raise InputNotFound(f"{path}: not a regular file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputNotFound(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputNotFound(f"{path}: is a directory, not a model file") from None
    except OSError as error:
        raise InputNotFound(f"{path}: cannot read: {error.strerror}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        # An ONNX file starts with field 1 (ir_version, a varint): tag byte 0x08. Another message
        # (a TensorProto also starts with 0x08) has well-formed fields but no graph (field 7).
        fields = _top_level_fields(data)
        if data[:1] == b"\x08" and (fields is None or (7, 2) in fields):
            raise CorruptModel(f"{path}: truncated or corrupt ONNX file (protobuf does not parse)") from None
        raise NotOnnx(f"{path}: not an ONNX model (not a protobuf ModelProto)") from None
    del data  # the parsed model holds its own copy: do not keep two
    if not model.HasField("graph") or not model.ir_version:
        raise NotOnnx(f"{path}: not an ONNX model (no graph or IR version in it)")
    _check_opset(model, path)
    external = any(uses_external_data(t) for t in _all_initializers(model))
    if external:
        try:
            _check_external_locations(model, path)
            load_external_data_for_model(model, str(path.parent))
        except FileNotFoundError as error:
            missing = error.filename or str(error)
            raise MissingExternalData(f"{path}: external data file missing: {missing}") from None
        except onnx.checker.ValidationError as error:  # onnx refuses the location (e.g. a symlink)
            raise CorruptModel(f"{path}: external data refused: {_one_line(error)}") from None
        except ValueError as error:  # offset or length beyond the end of the file, or not a number
            raise CorruptModel(f"{path}: truncated or corrupt external data: {_one_line(error)}") from None
        except OSError as error:
            raise MissingExternalData(f"{path}: cannot read external data: {error}") from None
    try:
        _check_weights(model)
        onnx.checker.check_model(_structure(model))
    except onnx.checker.ValidationError as error:
        raise CorruptModel(f"{path}: fails the ONNX checker: {_one_line(error)}") from None
    return model


def _one_line(error: Exception, limit: int = 300) -> str:
    """An error message on one line (onnx's span several), cut to ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _top_level_fields(data: bytes) -> set[tuple[int, int]] | None:
    """(field number, wire type) of each top-level protobuf field, None if ``data`` is not well-formed."""
    fields, pos, end, count = set(), 0, len(data), 0
    while pos < end:
        count += 1
        if count > 100_000:  # a ModelProto has a few dozen top-level fields: do not walk a crafted file forever
            return None
        key, pos = _read_varint(data, pos)
        if key is None or key >> 3 == 0:
            return None
        if key & 7 == 0:
            value, pos = _read_varint(data, pos)
            if value is None:
                return None
        elif key & 7 == 2:
            length, pos = _read_varint(data, pos)
            if length is None:
                return None
            pos += length
        elif key & 7 in (1, 5):
            pos += 8 if key & 7 == 1 else 4
        else:
            return None
        fields.add((key >> 3, key & 7))
    return fields if pos == end else None


def _read_varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


def _check_external_locations(model: onnx.ModelProto, path: Path) -> None:
    """Every external-data file lies in the model's directory (no absolute path, no ``..``) and exists."""
    for tensor in _all_initializers(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        parts = Path(os.path.normpath(location or ".")).parts
        if not location or os.path.isabs(location) or Path(location).drive or parts[:1] == ("..",):
            raise CorruptModel(f"{path}: external data location {location!r} of {tensor.name} is outside "
                               "the model's directory (refused)")
        if not (path.parent / location).is_file():
            raise MissingExternalData(f"{path}: external data file missing: {path.parent / location} "
                                      f"(for {tensor.name})")


def without_weights(model: onnx.ModelProto, keep: frozenset[str] | set[str] = frozenset()) -> onnx.ModelProto:
    """A copy of the model without its initializers (but those named in ``keep``): cheap to copy."""
    light = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(light, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(light.graph, field, value)
    light.graph.initializer.extend(t for t in model.graph.initializer if t.name in keep)
    return light


def _structure(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its weights, for the checker: each initializer becomes a typed graph input.

    The checker would otherwise serialize (or re-read) every weight, which on a
    big model costs more time and memory than all of onnxrep's own work;
    _check_weights checks what it would have checked of them.
    """
    light = without_weights(model)
    declared = {i.name for i in model.graph.input}
    light.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in model.graph.initializer if t.name not in declared)
    return light


def _copy_field(message, field, value) -> None:
    repeated = getattr(field, "is_repeated", None)
    if repeated if repeated is not None else field.label == field.LABEL_REPEATED:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _check_weights(model: onnx.ModelProto) -> None:
    """What onnx.checker checks of an initializer: a known type, and as many bytes as its shape needs."""
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.UNDEFINED:
            raise onnx.checker.ValidationError(f"initializer {tensor.name} has no data type")
        if not tensor.HasField("raw_data") or tensor.data_type == onnx.TensorProto.STRING:
            continue
        expected = _data_bytes(tensor)
        if len(tensor.raw_data) != expected:
            raise onnx.checker.ValidationError(
                f"initializer {tensor.name}: {len(tensor.raw_data)} bytes of data for shape "
                f"{list(tensor.dims)} ({expected} bytes expected)")


def _all_initializers(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= max_opset():
            raise UnsupportedModel(
                f"{path}: opset {opset.version} is outside the supported range "
                f"{MIN_OPSET}..{max_opset()}")


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None,
                      force: bool) -> Path:
    """Fail early, before any work, when the output cannot or must not be written."""
    output = Path(output)
    if input_path is not None and not force and output.exists() and _same_file(output, Path(input_path)):
        raise OutputError(f"{output}: is the input file; pass --force to overwrite it")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    if output.exists() and not output.is_file():  # a device or FIFO: renaming over it would replace it
        raise OutputError(f"{output}: exists and is not a regular file")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{output}: {parent} is not a directory" if parent.exists() else
                          f"{output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: directory {parent} is not writable")
    return output


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths, existing or not, name the same file."""
    return _same_file(Path(a), Path(b))


def write_model(model: onnx.ModelProto, f) -> None:
    """Serialize ``model`` into the open binary file ``f``, one weight at a time.

    ``model.SerializeToString()`` would build a second copy of every weight in
    memory; this writes the same message (fields in another order, which
    protobuf allows) holding at most one weight's bytes at a time. Wire format:
    ModelProto.graph is field 7, GraphProto.initializer field 5 and
    TensorProto.raw_data field 9, each length-delimited (wire type 2).
    """
    head = without_weights(model)
    graph_rest = head.graph.SerializeToString()
    head.ClearField("graph")
    pieces = []  # per initializer: its fields but raw_data, and raw_data's length (None: no raw_data)
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data"):
            meta = onnx.TensorProto()
            for field, value in tensor.ListFields():
                if field.name != "raw_data":
                    _copy_field(meta, field, value)
            pieces.append((meta.SerializeToString(), len(tensor.raw_data)))
        else:
            pieces.append((tensor.SerializeToString(), None))
    sizes = [len(meta) + (0 if raw is None else _field_size(raw)) for meta, raw in pieces]
    f.write(head.SerializeToString())
    f.write(_TAG_GRAPH + _varint(len(graph_rest) + sum(_field_size(n) for n in sizes)))
    f.write(graph_rest)
    for tensor, (meta, raw), size in zip(model.graph.initializer, pieces, sizes):
        f.write(_TAG_INITIALIZER + _varint(size) + meta)
        if raw is not None:
            f.write(_TAG_RAW_DATA + _varint(raw))
            f.write(tensor.raw_data)


_TAG_GRAPH, _TAG_INITIALIZER, _TAG_RAW_DATA = bytes([7 << 3 | 2]), bytes([5 << 3 | 2]), bytes([9 << 3 | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_size(length: int) -> int:
    """Bytes of a one-byte-tag length-delimited field with ``length`` bytes of payload."""
    return 1 + len(_varint(length)) + length


def save_model(model: onnx.ModelProto, output: str | os.PathLike, external_data: bool = False) -> int:
    """Write atomically; external data goes to ``<output>.data``. Returns the bytes written."""
    output = Path(output)
    external_data = external_data or too_big_for_protobuf(model)
    data_name = output.name + ".data"
    try:
        tmp_dir = tempfile.mkdtemp(prefix=".onnxrep-", dir=output.parent)
    except OSError as error:
        raise OutputError(f"{output}: cannot create a file in {output.parent}: {error.strerror}") from None
    try:
        tmp_model = Path(tmp_dir) / output.name
        if external_data:
            onnx.save_model(model, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            with open(tmp_model, "wb") as f:
                write_model(model, f)
                f.flush()
                os.fsync(f.fileno())
        written = sum(p.stat().st_size for p in Path(tmp_dir).iterdir())
        if external_data:  # onnx creates the data file 0600: it gets the mode of OUT, as any new file would
            os.chmod(Path(tmp_dir) / data_name, _new_file_mode())
            _replace_keeping_old(Path(tmp_dir) / data_name, output.parent / data_name, Path(tmp_dir) / "old")
        try:
            os.replace(tmp_model, output)
        except OSError:
            if external_data:  # put back the data file the old output at ``output`` reads
                _undo_replace(output.parent / data_name, Path(tmp_dir) / "old")
            raise
        return written
    except OSError as error:
        raise OutputError(f"{output}: cannot write: {error.strerror or error}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask (read from /proc where it can be)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restored at once
    os.umask(mask)
    return 0o666 & ~mask


def _replace_keeping_old(source: Path, target: Path, backup: Path) -> None:
    """os.replace, with a hard link to the replaced file (if any) kept at ``backup`` for _undo_replace."""
    with contextlib.suppress(OSError):  # nothing to keep (or no hard links: an undo then only removes)
        os.link(target, backup)
    os.replace(source, target)


def _undo_replace(target: Path, backup: Path) -> None:
    with contextlib.suppress(OSError):
        if backup.exists():
            os.replace(backup, target)
        else:
            target.unlink()
