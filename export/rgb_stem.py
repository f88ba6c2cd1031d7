"""int8: the 7×7/2 convolution on RGB input, rewritten for onnxruntime's fast int8 kernel.

onnxruntime's fastest int8 convolution (MLAS "ConvSym") needs input channels % 4 == 0, which the
3-channel stem of ResNet-style networks misses. ``split_stem`` rewrites that convolution exactly:
a free NHWC ``Reshape`` makes four neighbouring pixels one 12-channel "quad"; the even outputs,
and the odd ones after a one-pixel ``Pad`` shift, are each a (7, 2)-kernel, stride (2, 1)
convolution over quads (ConvSym, 8/7 of the multiply-adds); their NHWC outputs concatenated on
channels reshape back into the (N, H/2, W/2, C) result. The transposes cancel against the ones
onnxruntime inserts around its NHWC int8 kernels. After quantization ``finish`` runs the shift
and the concatenation on the uint8 tensors. docs/quantization.md ("The RGB stem, split in two")
has the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecnn.runtime.onnx_file import attribute, copy_model, dims, drop_unread_initializers

QUAD = 4  # pixels grouped into one position of the rewritten image
BRANCHES = ("even", "odd")
DESCRIPTION = "7x7/2 RGB stem as two 12-channel convolutions (onnxruntime's ConvSym kernel)"


@dataclass
class RgbStem:
    """An eligible stem: its Conv and the Relu right after it (if any)."""

    conv: onnx.NodeProto
    relu: onnx.NodeProto | None


def find_stem(model: onnx.ModelProto) -> RgbStem | None:
    """The graph's 7×7/2 convolution on a 3-channel image of static width % 4 == 0 (pads 3,
    no dilation or groups, constant weights with >= 16 and % 8 == 0 filters, as ConvSym needs),
    or None."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    shapes = {value.name: dims(value) for value in (*graph.input, *graph.value_info)}
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or conv.input[1] not in weights:
            continue
        filters, channels, *kernel = weights[conv.input[1]].dims
        shape = shapes.get(conv.input[0], [])
        if not (channels == 3 and kernel == [7, 7] and filters >= 16 and filters % 8 == 0
                and attribute(conv, "strides", None) == [2, 2]
                and attribute(conv, "pads", None) == [3, 3, 3, 3]
                and attribute(conv, "dilations", [1, 1]) == [1, 1]
                and attribute(conv, "group", 1) == 1
                and attribute(conv, "auto_pad", b"NOTSET") == b"NOTSET"
                and len(shape) == 4 and shape[3] and shape[3] % QUAD == 0):
            continue
        consumers = [node for node in graph.node if conv.output[0] in node.input]
        relu = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Relu" else None
        if conv.output[0] in {output.name for output in graph.output}:
            relu = None
        return RgbStem(conv, relu)
    return None


def branch_weights(weight: np.ndarray) -> dict[str, np.ndarray]:
    """The (C, 3, 7, 7) filter as the two branches' (C, 12, 7, 2) filters over quads.

    Quad channel 3 * r + c is colour c of the quad's pixel r. An even output's taps t = 0..6
    read the pixels at offsets t + 1 of the two quads before and at it (the conv pads one quad
    on the left); an odd output's, after the one-pixel shift, offsets t.
    """
    filters, colours, rows, taps = weight.shape
    branches = {}
    for branch, offset in zip(BRANCHES, (1, 0)):
        quads = np.zeros((filters, QUAD, colours, rows, 2), weight.dtype)
        for tap in range(taps):
            quad, pixel = divmod(tap + offset, QUAD)
            quads[:, pixel, :, :, quad] = weight[:, :, :, tap]
        branches[branch] = quads.reshape(filters, QUAD * colours, rows, 2)
    return branches


def split_stem(model: onnx.ModelProto, stem: RgbStem) -> onnx.ModelProto:
    """A copy of ``model`` with ``stem`` (and its Relu) replaced by the two-branch form."""
    rewritten = copy_model(model)
    graph = rewritten.graph
    conv, name = stem.conv, stem.conv.name
    weights = {init.name: init for init in graph.initializer}
    filters = weights[conv.input[1]].dims[0]
    bias = list(conv.input[2:3])
    output = stem.relu.output[0] if stem.relu else conv.output[0]

    def tensor(suffix: str) -> str:
        return f"{name}_{suffix}"

    graph.initializer.extend([
        numpy_helper.from_array(np.array(values, np.int64), tensor(suffix)) for suffix, values in (
            ("quad_shape", [0, 0, -1, 3 * QUAD]),        # (N, H, W, 3) -> (N, H, W/4, 12)
            ("shift", [0, 0, 1, 0, 0, 0, QUAD - 1, 0]),  # one pixel right, W + 4 in all
            ("output_shape", [0, 0, -1, filters]))])     # (N, Ho, W/4, 2C) -> (N, Ho, W/2, C)
    for branch, values in branch_weights(numpy_helper.to_array(weights[conv.input[1]])).items():
        graph.initializer.append(numpy_helper.from_array(values, tensor(f"{branch}_weight")))

    node = helper.make_node
    nodes = [node("Transpose", [conv.input[0]], [tensor("nhwc")], name=tensor("nhwc"), perm=[0, 2, 3, 1]),
             node("Pad", [tensor("nhwc"), tensor("shift")], [tensor("shifted")], name=tensor("shift"))]
    concatenated = []
    for branch, source, left_pad in (("even", "nhwc", 1), ("odd", "shifted", 0)):
        nodes += [
            node("Reshape", [tensor(source), tensor("quad_shape")], [tensor(f"{branch}_quads")],
                 name=tensor(f"{branch}_quads")),
            node("Transpose", [tensor(f"{branch}_quads")], [tensor(f"{branch}_input")],
                 name=tensor(f"{branch}_input"), perm=[0, 3, 1, 2]),
            node("Conv", [tensor(f"{branch}_input"), tensor(f"{branch}_weight"), *bias],
                 [tensor(branch)], name=tensor(branch), kernel_shape=[7, 2], strides=[2, 1],
                 pads=[3, left_pad, 3, 0])]
        result = tensor(branch)
        if stem.relu:
            nodes.append(node("Relu", [result], [tensor(f"{branch}_relu")], name=tensor(f"{branch}_relu")))
            result = tensor(f"{branch}_relu")
        nodes.append(node("Transpose", [result], [tensor(f"{branch}_nhwc")],
                          name=tensor(f"{branch}_nhwc"), perm=[0, 2, 3, 1]))
        concatenated.append(tensor(f"{branch}_nhwc"))
    nodes += [node("Concat", concatenated, [tensor("pairs")], name=tensor("pairs"), axis=3),
              node("Reshape", [tensor("pairs"), tensor("output_shape")], [tensor("output_nhwc")],
                   name=tensor("interleave")),
              node("Transpose", [tensor("output_nhwc")], [output], name=tensor("nchw"), perm=[0, 3, 1, 2])]

    position = list(graph.node).index(next(n for n in graph.node if n.name == name))
    replaced = {name} | ({stem.relu.name} if stem.relu else set())
    kept = [n for n in graph.node if n.name not in replaced]
    del graph.node[:]
    graph.node.extend(kept[:position] + nodes + kept[position:])
    drop_unread_initializers(rewritten, {conv.input[1]})
    if stem.relu:  # the convolution's own output no longer exists
        stale = [value for value in graph.value_info if value.name == conv.output[0]]
        for value in stale:
            graph.value_info.remove(value)
    return rewritten


def finish(quantized: onnx.ModelProto, stem: RgbStem) -> None:
    """Fix the Q/DQ details of the quantized two-branch stem (see the module docstring): the
    branches take their concatenation's quantization parameters; then the shift and the
    concatenation run on the uint8 tensors."""
    graph = quantized.graph
    concat = _node(graph, f"{stem.conv.name}_pairs")
    requantize = _consumers(graph, concat.output[0])
    if len(requantize) == 1 and requantize[0].op_type == "QuantizeLinear":
        shared = requantize[0].input[1:3]
        renamed = {}
        for dequantize in _producers(graph, concat.input):
            if dequantize is not None and dequantize.op_type == "DequantizeLinear":
                renamed.update(zip(dequantize.input[1:3], shared))
        for node in graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                node.input[1:3] = [renamed.get(name, name) for name in node.input[1:3]]
    for node in (_node(graph, f"{stem.conv.name}_shift"), concat):
        _on_integers(graph, node)
    drop_unread_initializers(quantized, {init.name for init in graph.initializer
                                         if init.name.startswith(stem.conv.name)})


def _node(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    return next(node for node in graph.node if node.name == name)


def _consumers(graph: onnx.GraphProto, value: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if value in node.input]


def _producers(graph: onnx.GraphProto, values) -> list[onnx.NodeProto | None]:
    produced_by = {output: node for node in graph.node for output in node.output}
    return [produced_by.get(value) for value in values]


def _on_integers(graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    """``DequantizeLinear``s -> ``node`` (Pad or Concat) -> ``QuantizeLinear``, all with the
    same parameters, becomes ``node`` on the uint8 tensors (onnxruntime's QDQ fusions would
    leave the Pad in float and make the Concat a slower ``QLinearConcat``). A Pad pads with
    the zero point, the integer that stands for the float 0 it padded with."""
    data = node.input[:1] if node.op_type == "Pad" else node.input
    dequantized = _producers(graph, data)
    requantize = _consumers(graph, node.output[0])
    if (any(dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 for dq in dequantized)
            or len(requantize) != 1 or requantize[0].op_type != "QuantizeLinear"):
        return
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    parameters = [[values.get(name) for name in q.input[1:3]] for q in (*dequantized, requantize[0])]
    if any(value is None for value in parameters[0]) or not all(
            np.array_equal(a, b) for other in parameters[1:] for a, b in zip(parameters[0], other)):
        return
    inputs = [dq.input[0] for dq in dequantized]
    if node.op_type == "Pad":
        inputs += [node.input[1], dequantized[0].input[2]]
    node.input[:] = inputs
    node.output[0] = requantize[0].output[0]
    graph.node.remove(requantize[0])
    for dq in dequantized:
        if not _consumers(graph, dq.output[0]) and dq in graph.node:
            graph.node.remove(dq)
