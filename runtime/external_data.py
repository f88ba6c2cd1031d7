"""Tensors stored outside the .onnx file ("external data"), vetted before anything reads them.

torch >= 2.9 writes a model's weights to ``model.onnx.data`` beside ``model.onnx``; each
such tensor names its file in ``external_data`` (``location``, ``offset``, ``length``), relative
to the model's folder. onnxruntime and the onnx package open whatever a location names, so a
file from elsewhere could make them read ``/etc/shadow``, ``../../secret`` or a symlink to it.
``check_external_data(path)`` walks the file's tensors without the onnx package (the graph is
walked field by field, weights stored inside are skipped, not read) and refuses, in one line,
a location that leaves the model's folder (absolute, ``..``, a symlink pointing outside), a
data file that is missing or shorter than its tensors, before any byte of one is read.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from edgecnn.errors import BadInput
from edgecnn.runtime.files import file_kind
from edgecnn.runtime.model_file import MAX_PROTOBUF_NESTING, check_model_file, fields, read_varint

# Message -> (field -> what it holds): the parts of an ONNX model that can hold tensors.
_GRAPH_FIELDS = {"model": {7: "graph", 20: "training", 25: "function"},
                 "training": {1: "graph", 2: "graph"},
                 "function": {7: "node", 11: "attribute"},  # 11: attribute defaults
                 "graph": {1: "node", 5: "tensor", 15: "sparse"},
                 "node": {5: "attribute"},
                 "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                               23: "sparse"},
                 "sparse": {1: "tensor", 2: "tensor"}}
# The fields above that hold one message, not a list: protobuf merges all the occurrences of
# such a field into one message (as if their bytes were one), so they are walked together.
_SINGULAR = {("model", 7), ("training", 1), ("training", 2), ("attribute", 5),
             ("attribute", 6), ("attribute", 22), ("sparse", 1), ("sparse", 2)}
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME = 1, 2, 8
_TENSOR_EXTERNAL_DATA, _TENSOR_LOCATION = 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# TensorProto.DataType -> bytes per element (the types external data can hold).
_ITEM_SIZES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
               14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1}


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor whose bytes live in another file."""

    name: str
    entries: dict[str, str]  # location, offset, length (and checksum) as written
    nbytes: int | None  # from its dims and type (None for a type of unknown size)


def external_tensors(model: str | os.PathLike | bytes) -> list[ExternalTensor]:
    """The tensors of ``model`` (a path or serialized bytes) stored as external data; BadInput
    for a file that is not protobuf (a walk that gave up could miss a tensor onnxruntime
    reads)."""
    try:
        with io.BytesIO(model) if isinstance(model, bytes) else open(model, "rb") as stream:
            return list(_walk(stream, "model", [(0, None)], 0))
    except ValueError as error:
        name = "the model" if isinstance(model, bytes) else str(model)
        raise BadInput(f"cannot load {name} as an ONNX model: not protobuf ({error})") from None


Ranges = list[tuple[int, int | None]]  # the (start, end) of each occurrence of one message


def _walk(stream: BinaryIO, message: str, ranges: Ranges,
          depth: int) -> Iterator[ExternalTensor]:
    """The external tensors of one message, written as the occurrences ``ranges``."""
    if depth > MAX_PROTOBUF_NESTING:  # what protobuf parsers refuse (and Python's recursion limit)
        raise ValueError(f"messages nested more than {MAX_PROTOBUF_NESTING} deep")
    nested = _GRAPH_FIELDS[message]
    singular: dict[int, Ranges] = {}
    for start, end in ranges:
        stream.seek(start)
        for field, wire, value in fields(stream, end):
            if wire != 2 or field not in nested:
                continue
            offset, length = value
            if (message, field) in _SINGULAR:
                singular.setdefault(field, []).append((offset, offset + length))
            else:
                yield from _child(stream, nested[field], [(offset, offset + length)], depth)
    for field, occurrences in singular.items():
        yield from _child(stream, nested[field], occurrences, depth)


def _child(stream: BinaryIO, message: str, ranges: Ranges,
           depth: int) -> Iterator[ExternalTensor]:
    if message != "tensor":
        yield from _walk(stream, message, ranges, depth + 1)
    elif (tensor := _tensor(stream, ranges)) is not None:
        yield tensor


def _tensor(stream: BinaryIO, ranges: Ranges) -> ExternalTensor | None:
    """The tensor the occurrences ``ranges`` merge into, when it is external: the last of a
    single value, every element of a list (the location entries too: the last one counts)."""
    name, entries, dims, data_type, location = "", {}, [], None, 0
    for start, end in ranges:
        stream.seek(start)
        for field, wire, value in fields(stream, end):
            if field == _TENSOR_LOCATION and wire == 0:
                location = value
            elif field == _TENSOR_TYPE and wire == 0:
                data_type = value
            elif field == _TENSOR_DIMS and wire == 0:
                dims.append(value)
            elif field == _TENSOR_DIMS and wire == 2:  # packed
                dims.extend(_packed_varints(stream, *value))
            elif field == _TENSOR_NAME and wire == 2:
                name = _text(stream, value)
            elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
                key, text = _entry(stream, value)
                entries[key] = text
    if location != _EXTERNAL:
        return None
    size = _ITEM_SIZES.get(data_type)
    return ExternalTensor(name, entries, None if size is None else math.prod(dims) * size)


def _text(stream: BinaryIO, where: tuple[int, int]) -> str:
    """Text as written; bytes that are not UTF-8 read as U+FFFD (a location holding one is
    refused: the file it names is not the one the check would look at)."""
    offset, length = where
    stream.seek(offset)
    return stream.read(length).decode("utf-8", "replace")


def _entry(stream: BinaryIO, where: tuple[int, int]) -> tuple[str, str]:
    """A StringStringEntryProto's (key, value)."""
    offset, length = where
    stream.seek(offset)
    parts = {1: "", 2: ""}
    for field, wire, value in fields(stream, offset + length):
        if field in parts and wire == 2:
            parts[field] = _text(stream, value)
    return parts[1], parts[2]


def _packed_varints(stream: BinaryIO, offset: int, length: int) -> list[int]:
    stream.seek(offset)
    payload = io.BytesIO(stream.read(length))
    values = []
    while (value := read_varint(payload)) is not None:
        values.append(value)
    return values


def check_external_data(model: str | os.PathLike | bytes) -> dict[str, Path]:
    """The data files ``model`` reads its external tensors from, as {location as written: the
    file} (none: {}), each checked: its
    location stays inside the model's folder (no absolute path, no ``..`` out of it, no symlink
    pointing outside) and the file holds every tensor's bytes. BadInput in one line otherwise,
    before any data file is opened. Serialized bytes have no folder: external data is refused."""
    path = None if isinstance(model, bytes) else check_model_file(model)  # a FIFO blocks a read
    tensors = external_tensors(model)
    if not tensors:
        return {}
    if path is None:
        raise BadInput(f"the model refers to external data ({tensors[0].entries.get('location')!r}"
                       "); open it from its file so the data is found beside it")
    folder = path.parent.resolve()
    files: dict[str, Path] = {}
    needed: dict[Path, int] = {}
    for tensor in tensors:
        data = files[tensor.entries.get("location", "")] = _data_file(path, folder, tensor)
        needed[data] = max(needed.get(data, 0), _end(path, tensor))
    for data, end in needed.items():
        size = data.stat().st_size
        if size < end:
            raise BadInput(f"{path}: external data file {data.name} is truncated ({size:,} bytes, "
                           f"its tensors need {end:,})")
    return files


def refuse_overwriting(model: str | os.PathLike, targets: list[Path]) -> None:
    """BadInput when writing ``targets`` (an output model and the files written with it)
    would replace ``model`` or a data file it reads: the weights being read."""
    data_files = check_external_data(model).values()
    read = {Path(model).resolve(), *(data.resolve() for data in data_files)}
    for target in targets:
        if target.resolve() in read:
            what = "model" if target.resolve() == Path(model).resolve() else "model's data file"
            raise BadInput(f"the output would overwrite the input {what} {target}; give "
                           "another output path")


def model_size(path: str | os.PathLike) -> int:
    """Bytes of the model at ``path`` and of the external data files it reads (checked)."""
    data_files = set(check_external_data(path).values())
    return Path(path).stat().st_size + sum(data.stat().st_size for data in data_files)


def _data_file(path: Path, folder: Path, tensor: ExternalTensor) -> Path:
    location = tensor.entries.get("location", "")
    shown = location if len(location) <= 200 else f"{location[:200]}..."
    where = f"{path}: tensor {tensor.name!r} has its data at {shown!r}"
    if not location or "\x00" in location or "\ufffd" in location:
        raise BadInput(f"{path}: tensor {tensor.name!r} has external data without a usable "
                       "location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:2]:
        raise BadInput(f"{where}, an absolute path; external data must be beside the model "
                       "(a path inside its folder)")
    if ".." in Path(location.replace("\\", "/")).parts:
        raise BadInput(f"{where}, which goes up out of the model's folder; external data must "
                       "be beside the model")
    try:
        target = (path.parent / location).resolve()  # follows symlinks
        regular = target.is_file()
    except OSError as error:  # a name too long for the file system, a loop of links...
        raise BadInput(f"{where}, which cannot be opened ({error.strerror})") from None
    if not target.is_relative_to(folder):
        raise BadInput(f"{where}, a link to {target} outside the model's folder; external "
                       "data must be beside the model")
    if not regular:
        if target.exists():  # a folder, a FIFO, a device
            raise BadInput(f"{where}, which is {file_kind(target.stat().st_mode)}, not a regular "
                           "file")
        raise BadInput(f"{where}, which is missing (copy it beside the model)")
    return target


def _end(path: Path, tensor: ExternalTensor) -> int:
    """Where the tensor's bytes end in its data file."""
    try:
        offset = int(tensor.entries.get("offset") or 0)
        length = int(tensor.entries["length"]) if "length" in tensor.entries else tensor.nbytes
    except ValueError:
        raise BadInput(f"{path}: tensor {tensor.name!r} has a malformed external-data offset or "
                       "length") from None
    if offset < 0 or (length is not None and length < 0):
        raise BadInput(f"{path}: tensor {tensor.name!r} has a negative external-data offset or "
                       "length")
    return offset + (length or 0)
