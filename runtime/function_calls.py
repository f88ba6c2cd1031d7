"""How many nodes a model becomes once onnxruntime inlines its local functions.

A model may define functions (``ModelProto.functions``) and call them as nodes; onnxruntime
replaces each call by the function's body when it builds the session. A function whose body
calls another twice, 40 levels deep, is a 2.5 KB file that inlines to 2**40 nodes: the session
would be built forever, in native code where no signal handler runs. ``check_function_calls``
counts the inlined nodes from the file's fields (without the onnx package; the weights are
skipped, as in ``model_file``) and refuses more than ``MAX_INLINED_NODES`` before a session is
made. Files without local functions (the zoo's, most exporters') are not walked past the top.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from edgecnn.errors import BadInput
from edgecnn.runtime.model_file import MAX_PROTOBUF_NESTING, fields, text_field

# Far above real models (a ResNet-152 has ~500 nodes, the largest exports ~100,000).
MAX_INLINED_NODES = 1_000_000
_GRAPH, _FUNCTION = 7, 25  # ModelProto.graph, .functions
_GRAPH_NODE, _FUNCTION_NODE = 1, 7  # GraphProto.node, FunctionProto.node
_FUNCTION_NAME, _FUNCTION_DOMAIN = 1, 10  # FunctionProto.name, .domain
_NODE_OP_TYPE, _NODE_DOMAIN, _NODE_ATTRIBUTE = 4, 7, 5  # NodeProto
_ATTRIBUTE_GRAPHS = (6, 11)  # AttributeProto.g, .graphs: the bodies of If, Loop, Scan


def check_function_calls(path: str | os.PathLike) -> None:
    """BadInput when the model's nodes, its local functions inlined (subgraphs counted), are
    more than MAX_INLINED_NODES. A file that cannot be walked is left to the loader."""
    try:
        with open(path, "rb") as stream:
            total = _inlined_nodes(stream)
    except (ValueError, OSError):
        return
    if total > MAX_INLINED_NODES:
        raise BadInput(f"{path}: its local functions expand to {total:,} nodes once inlined "
                       f"(more than {MAX_INLINED_NODES:,}); a real model has far fewer")


def _inlined_nodes(stream: BinaryIO) -> int:
    functions, graph = {}, None
    for field, wire, span in fields(stream):
        if wire == 2 and field == _FUNCTION:
            key = (_text(stream, span, _FUNCTION_DOMAIN), _text(stream, span, _FUNCTION_NAME))
            functions[key] = span
        elif wire == 2 and field == _GRAPH:
            graph = span
    if not functions or graph is None:
        return 0
    costs: dict[tuple[str, str], int] = {}

    def cost(span: tuple[int, int], node_field: int, depth: int) -> int:
        if depth > MAX_PROTOBUF_NESTING:
            raise ValueError("nested too deeply")
        total = 0
        for node in _spans(stream, span, node_field):
            called = (_text(stream, node, _NODE_DOMAIN), _text(stream, node, _NODE_OP_TYPE))
            if called in functions:
                if called not in costs:
                    costs[called] = 1  # while it is counted: recursion, which onnxruntime refuses
                    costs[called] = cost(functions[called], _FUNCTION_NODE, depth + 1)
                total += costs[called]
            else:
                total += 1 + sum(cost(body, _GRAPH_NODE, depth + 1)
                                 for attribute in _spans(stream, node, _NODE_ATTRIBUTE)
                                 for field in _ATTRIBUTE_GRAPHS
                                 for body in _spans(stream, attribute, field))
        return total

    return cost(graph, _GRAPH_NODE, 0)


def _spans(stream: BinaryIO, span: tuple[int, int], wanted: int) -> list[tuple[int, int]]:
    """The (offset, length) of each length-delimited field ``wanted`` of the message at
    ``span`` (a list: the caller walks each with the same stream)."""
    stream.seek(span[0])
    return [value for field, wire, value in fields(stream, span[0] + span[1])
            if field == wanted and wire == 2]


def _text(stream: BinaryIO, span: tuple[int, int], wanted: int) -> str:
    return text_field(stream, span[0], span[0] + span[1], wanted) or ""
