"""An .onnx file on disk, without the onnx package: is it there, which operator domains it
imports, what one of its metadata entries says, whether its output is a Softmax's or a
Sigmoid's (``probability_op``), and what it computes in (``graph_precision``: int8 with one of
``QUANTIZED_OPS``, fp16 with fp16 weights).

An ONNX file is a protobuf ``ModelProto``. Its top-level ``opset_import`` entries (field 8) name
every operator domain the graph uses, so the Engine can tell whether a model needs the
``ai.edgecnn`` custom op by walking the top-level fields and skipping the (large) graph,
instead of loading the whole model (the onnx package costs ~40 MB of memory to import).
"""

from __future__ import annotations

import io
import os
from collections import deque
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from edgecnn.errors import BadInput
from edgecnn.runtime.files import check_input_file
from edgecnn.runtime.postprocess import is_class_vector

_GRAPH_FIELD = 7  # ModelProto.graph
_OPSET_IMPORT_FIELD = 8  # ModelProto.opset_import
_NODE_FIELD = 1  # GraphProto.node
_INPUT_FIELD, _OUTPUT_FIELD, _OP_TYPE_FIELD, _ATTRIBUTE_FIELD = 1, 2, 4, 5  # NodeProto
_NAME_FIELD, _INT_FIELD = 1, 3  # AttributeProto.name, .i
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_DATA_TYPE_FIELD, _FLOAT16 = 2, 10  # TensorProto.data_type, TensorProto.FLOAT16
# Operators of a quantized graph: QDQ (static int8), the dynamic quantizer's, the QOperator ones.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                           "QGemm", "QLinearAdd", "DynamicQuantizeMatMul", "MatMulNBits"})
_MAX_NAME = 4096  # bytes of a tensor name or op type read; no real graph has longer ones
# Ops between a Softmax (or Sigmoid) and the graph output that keep its values probabilities
# (a QDQ model quantizes the Softmax's output: QuantizeLinear -> DequantizeLinear).
_KEEPS_PROBABILITIES = {"Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "Reshape",
                        "Flatten", "Squeeze"}
_MAX_HOPS = 8  # nodes walked back from the output
# Nodes read looking for them, from the last one back: a sorted graph writes each before the
# one that reads it, so a real file needs a few (an unsorted one of 100,000 nodes took 17 s)
_MAX_NODES_READ = 4096
_DOMAIN_FIELD = 1  # OperatorSetIdProto.domain
_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props
_KEY_FIELD, _VALUE_FIELD = 1, 2  # StringStringEntryProto
_FIXED_SIZES = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit)
MAX_PROTOBUF_NESTING = 100  # protobuf's default recursion limit (messages and groups)
_MAX_LENGTH = 2**31 - 1  # protobuf's limit on a serialized message


def read_varint(stream: BinaryIO) -> int | None:
    """The next base-128 varint, or None at the end of the stream."""
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def fields(stream: BinaryIO, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of each field of the message from the stream's position
    up to ``end`` (default: the end of the stream). The value is a varint's number, or for a
    length-delimited field its (offset, length): the caller may read or walk the payload (a
    nested message: ``fields(stream, offset + length)`` after seeking to ``offset``), and the
    walk then resumes after it. Fixed-size fields and groups are skipped, as protobuf parsers
    skip them (a checker that gave up on a group would see less than onnxruntime reads)."""
    while end is None or stream.tell() < end:
        if (key := read_varint(stream)) is None:
            return
        field, wire = _key(key)
        if wire == 3:
            _skip_group(stream, field)
            continue
        value = _value(stream, wire)
        if wire == 2 and value is None:  # cut short
            return
        if wire in (0, 2):
            yield field, wire, value
        if wire == 2:  # the caller may have read the payload
            stream.seek(value[0] + value[1])


def _key(key: int) -> tuple[int, int]:
    """(field number, wire type); ValueError for field number 0, which protobuf does not have
    (a file of zeros would otherwise be walked one byte at a time)."""
    if key >> 3 == 0:
        raise ValueError("protobuf field number 0")
    return key >> 3, key & 7


def _value(stream: BinaryIO, wire: int) -> int | tuple[int, int] | None:
    """A field's value after its key (see ``fields``: None for fixed-size ones), leaving the
    stream after it. ValueError for a wire type that starts no value (an end of group without
    its start, or the undefined 6 and 7)."""
    if wire == 0:
        return read_varint(stream)
    if wire in _FIXED_SIZES:
        stream.seek(_FIXED_SIZES[wire], io.SEEK_CUR)
        return None
    if wire == 2:
        if (length := read_varint(stream)) is None:
            return None
        if length > _MAX_LENGTH:  # seeking there fails (EINVAL) past the file system's limit
            raise ValueError(f"a field declares {length:,} bytes, more than protobuf's 2 GiB "
                             "limit")
        offset = stream.tell()
        stream.seek(offset + length)
        return offset, length
    raise ValueError(f"unexpected protobuf wire type {wire}")


def _skip_group(stream: BinaryIO, field: int) -> None:
    """Skips a group (wire types 3 ... 4, nested up to protobuf's own depth limit)."""
    open_groups = [field]
    while open_groups:
        if (key := read_varint(stream)) is None:
            return
        field, wire = _key(key)
        if wire == 3:
            open_groups.append(field)
            if len(open_groups) > MAX_PROTOBUF_NESTING:
                raise ValueError("protobuf groups nested too deeply")
        elif wire == 4:
            if open_groups.pop() != field:
                raise ValueError("mismatched protobuf group")
        else:
            _value(stream, wire)


def _length_delimited(stream: BinaryIO, wanted: int) -> Iterator[bytes]:
    """The payloads of the length-delimited fields numbered ``wanted``; skips everything else."""
    for field, wire, value in fields(stream):
        if field == wanted and wire == 2:
            offset, length = value
            stream.seek(offset)
            yield stream.read(length)


def opset_domains(model: str | os.PathLike | bytes) -> set[str]:
    """The operator domains an ONNX model imports ("" is the standard domain).

    Returns an empty set for a missing file or one that is not a parsable protobuf; loading it
    will then fail with a clear error.
    """
    domains = set()
    try:
        with io.BytesIO(model) if isinstance(model, bytes) else open(model, "rb") as stream:
            for opset in _length_delimited(stream, _OPSET_IMPORT_FIELD):
                names = list(_length_delimited(io.BytesIO(opset), _DOMAIN_FIELD))
                domains.add(names[0].decode("utf-8", "replace") if names else "")
    except (ValueError, OSError):
        return set()
    return domains


def metadata_props(model: str | os.PathLike | bytes) -> dict[str, str]:
    """The model's metadata entries, read like ``opset_domains`` (the graph is skipped, not
    parsed): bytes that are not UTF-8 as U+FFFD, where onnxruntime's map raises; the last of
    entries of one key, as onnxruntime keeps. {} for a file that cannot be read."""
    props = {}
    try:
        with io.BytesIO(model) if isinstance(model, bytes) else open(model, "rb") as stream:
            for entry in _length_delimited(stream, _METADATA_PROPS_FIELD):
                props[_last_text(entry, _KEY_FIELD)] = _last_text(entry, _VALUE_FIELD)
    except (ValueError, OSError):
        return {}
    return props


def _last_text(message: bytes, field: int) -> str:
    """A string field of ``message``: its last copy, as protobuf keeps ("" when absent)."""
    copies = list(_length_delimited(io.BytesIO(message), field))
    return copies[-1].decode("utf-8", "replace") if copies else ""


def metadata_value(model: str | os.PathLike | bytes, key: str) -> str | None:
    """The value of the model's metadata entry ``key`` (None when absent or unreadable)."""
    return metadata_props(model).get(key)


def graph_precision(model: str | os.PathLike) -> str:
    """What a file without edgecnn metadata computes in, read from its top-level graph like
    ``opset_domains`` (the weights' bytes are skipped): "int8" with a ``QUANTIZED_OPS``
    operator, "fp16" with fp16 weights, else "fp32" (also for a file it cannot read: from what
    it read before the damage)."""
    fp16 = False
    try:
        with open(model, "rb") as stream:
            for field, wire, graph in fields(stream):
                if field != _GRAPH_FIELD or wire != 2:
                    continue
                stream.seek(graph[0])
                for item, item_wire, (start, length) in (
                        found for found in fields(stream, graph[0] + graph[1]) if found[1] == 2):
                    if item == _NODE_FIELD and text_field(stream, start, start + length,
                                                           _OP_TYPE_FIELD) in QUANTIZED_OPS:
                        return "int8"
                    if item == _INITIALIZER_FIELD and not fp16:
                        fp16 = _varint_field(stream, start, start + length,
                                             _DATA_TYPE_FIELD) == _FLOAT16
    except (ValueError, OSError):
        pass  # what was read says what it can
    return "fp16" if fp16 else "fp32"


def text_field(stream: BinaryIO, start: int, end: int, wanted: int) -> str | None:
    """The string field ``wanted`` of the message from ``start`` to ``end``: its last copy,
    as protobuf keeps (None where there is none, or it is too long to be a name)."""
    stream.seek(start)
    spans = [value for field, wire, value in fields(stream, end)
             if field == wanted and wire == 2]
    return _name(stream, spans[-1]) if spans else None


def _name(stream: BinaryIO, span: tuple[int, int]) -> str | None:
    """The text at ``span`` (offset, length) of a name or op type field; None past
    ``_MAX_NAME`` bytes, which no real graph has (and which are not read)."""
    if span[1] > _MAX_NAME:
        return None
    stream.seek(span[0])
    return stream.read(span[1]).decode("utf-8", "replace")


def _varint_field(stream: BinaryIO, start: int, end: int, wanted: int) -> int | None:
    """The last copy of the number field ``wanted``, as protobuf keeps."""
    stream.seek(start)
    values = [value for field, wire, value in fields(stream, end)
              if field == wanted and wire == 0]
    return values[-1] if values else None


def probability_op(model: str | os.PathLike, output: str, dims: Sequence) -> str | None:
    """"Softmax" or "Sigmoid" when ``output``, of ``dims`` (N, classes) or (N, classes, 1, 1)
    (``postprocess.is_class_vector``; None for other outputs), is computed by the top-level
    graph with that op, through the ops in ``_KEEPS_PROBABILITIES``: the values are
    probabilities already (Keras classifiers and many published files end in Softmax,
    multi-label ones in Sigmoid: one probability per class, each on its own). A Softmax counts
    over axis 1 (the classes); axis -1 is the classes at rank 2, and so is a Softmax without the
    attribute (opsets before 13 default to axis 1, later ones to -1). None otherwise.
    Reads like ``opset_domains``: one pass notes where the last ``_MAX_NODES_READ`` nodes lie,
    then the producers are looked for among them from the last back, one node read at a time,
    each further back than the one before (a sorted graph writes a tensor before it is read).
    None for a file it cannot read."""
    if not is_class_vector(dims):
        return None
    rank = len(dims)
    try:
        with open(model, "rb") as stream:
            spans = reversed(_last_node_spans(stream))
            for _ in range(_MAX_HOPS):
                producer = next((found for start, end in spans
                                 if (found := _node_writing(stream, start, end, output))), None)
                if producer is None:
                    return None
                op_type, first_input, axis = producer
                if op_type == "Sigmoid":
                    return op_type
                if op_type == "Softmax":
                    over_classes = axis in ((None, 1, -1) if rank == 2 else (1, 1 - rank))
                    return op_type if over_classes else None
                if op_type not in _KEEPS_PROBABILITIES or not first_input:
                    return None
                output = first_input
    except (ValueError, OSError):
        return None
    return None


def _last_node_spans(stream: BinaryIO) -> deque:
    """(start, end) offsets of the top-level graph's last ``_MAX_NODES_READ`` nodes."""
    spans: deque = deque(maxlen=_MAX_NODES_READ)
    for field, wire, graph in fields(stream):
        if field != _GRAPH_FIELD or wire != 2:
            continue
        stream.seek(graph[0])
        for node_field, node_wire, node in fields(stream, graph[0] + graph[1]):
            if node_field == _NODE_FIELD and node_wire == 2:
                spans.append((node[0], node[0] + node[1]))
    return spans


def _node_writing(stream: BinaryIO, start: int, end: int, output: str):
    """(op type, first input, its ``axis`` attribute) of the node from ``start`` to ``end``, or
    None when it does not write ``output``."""
    stream.seek(start)
    op_type, first_input, axis, writes = "", None, None, False
    for field, wire, value in fields(stream, end):
        if wire != 2:
            continue
        if field == _ATTRIBUTE_FIELD:
            stream.seek(value[0])
            name, number = _attribute(stream, value[0] + value[1])
            axis = number if name == "axis" else axis
        elif field in (_INPUT_FIELD, _OUTPUT_FIELD, _OP_TYPE_FIELD) and (
                text := _name(stream, value)) is not None:
            if field == _INPUT_FIELD and first_input is None:
                first_input = text
            writes = writes or (field == _OUTPUT_FIELD and text == output)
            op_type = text if field == _OP_TYPE_FIELD else op_type
    return (op_type, first_input, axis) if writes else None


def _attribute(stream: BinaryIO, end: int) -> tuple[str, int | None]:
    """An attribute's name and integer value (int64, read as signed)."""
    name, number = "", None
    for field, wire, value in fields(stream, end):
        if field == _NAME_FIELD and wire == 2 and (text := _name(stream, value)) is not None:
            name = text
        elif field == _INT_FIELD and wire == 0:
            number = value - 2**64 if value >= 2**63 else value
    return name, number


def check_model_file(path: str | os.PathLike, what: str = "model file") -> Path:
    """``path`` as a Path; BadInput when it is missing, a directory, empty, or not a regular
    file (``files.check_input_file``)."""
    return check_input_file(path, what, "an .onnx file")


def no_outputs(source: object) -> BadInput:
    """The refusal of a graph without outputs (onnxruntime loads one; nothing can use it)."""
    return BadInput(f"{source}: the graph has no outputs, so there is nothing to run")
