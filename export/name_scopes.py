"""What an exported graph records about the modules that produced it, and what its QDQ pairs
make of a tensor, without torch (``check --bisect`` and the int8 per-layer report use both).

The dynamo exporter records, on every ONNX node, the module path that produced it
(``pkg.torch.onnx.name_scopes``: ``['', 'layer1', 'layer1.0', 'layer1.0.bn1', <op>]``); the
quantizer's own nodes carry none.
"""

from __future__ import annotations

import ast

import numpy as np
import onnx
from onnx import numpy_helper

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def node_scopes(node: onnx.NodeProto) -> list[str] | None:
    """The module paths ``node`` ran in, outermost first (the exporter's record without its
    trailing op name), or None for a node without a scope record."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            return ast.literal_eval(prop.value)[:-1]
    return None


def producing_module(node: onnx.NodeProto) -> str | None:
    """The innermost named module ``node`` ran in (None: no record, or the top level only)."""
    named = [scope for scope in node_scopes(node) or [] if scope]
    return named[-1] if named else None


def quantized_views(model: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    """float tensor -> (the DequantizeLinear output of its QuantizeLinear, whether Q clips at 0).

    A QuantizeLinear whose zero point is its type's lowest code represents no negative value.
    That is how onnxruntime folds a Relu into the Q after it: the Relu node disappears and the
    Conv or Add before it takes its output name, so the DQ output is the module's output through
    that ReLU. For a residual block it is the block's output (the Add holds the pre-ReLU sum);
    for a Conv+BN it is what the next layer sees of the BN output. Clipping the eager output at
    0 the same way compares what the next layer sees on both sides; a clip at the top of the
    calibrated range is not undone and stays a divergence.
    """
    constants = {init.name: init for init in model.graph.initializer}
    dequantized = {}  # Q output -> DQ output, the first DQ reading it (any other is identical)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            dequantized.setdefault(node.input[0], node.output[0])
    views = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.output[0] not in dequantized:
            continue
        if len(node.input) < 3 or not node.input[2]:
            clips = True  # no zero point: uint8 with zero point 0
        elif node.input[2] in constants:
            zero_point = numpy_helper.to_array(constants[node.input[2]])
            clips = (np.issubdtype(zero_point.dtype, np.integer)
                     and bool(np.all(zero_point == np.iinfo(zero_point.dtype).min)))
        else:
            clips = False  # a computed zero point: no folded ReLU that we can tell
        views.setdefault(node.input[0], (dequantized[node.output[0]], clips))
    return views
