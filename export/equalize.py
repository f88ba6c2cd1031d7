"""Cross-layer equalization on an fp32 ONNX graph, for ``quantize --equalize``
(docs/quantization.md, "Equalization").

Equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019; AIMET's CLE): for a conv A whose output reaches a conv B through nothing or
a Relu, scaling A's output channel c by 1/s_c and B's input channel c by s_c computes the same
function in float (ReLU(x / s) = ReLU(x) / s for s > 0). With s_c = sqrt(r_A,c / r_B,c), r the
channel's largest |weight|, both ranges become sqrt(r_A,c r_B,c): a channel whose range was 100x
the others' (which per-tensor weight scales and the activation's one scale cannot serve) is
brought in line. B may be a depthwise conv (one filter per channel).

ReLU6 (the exporter's ``Clip(x, 0, 6)``, mobilenet_v2) between A and B does not commute with the
scaling: Clip(x, 0, 6) / s = Min(Relu(x / s), 6 / s). Such a Clip is rewritten into that Relu
and a Min with one bound per channel (a [1, C, 1, 1] constant), so the equalized model computes
the same function (the Relu is a Clip to the largest bound, which keeps int8's range there
tight). onnxruntime has no int8 Min: it stays a float op between a DequantizeLinear and a
QuantizeLinear, and the Clip folds into the conv's output Q (docs/quantization.md).

Bias correction, which runs after quantizing whether or not the graph was equalized, is
export/bias_correction.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecnn.runtime.onnx_file import attribute, copy_model, drop_unread_initializers

SCALE_EQUIVARIANT = ("Relu",)  # what may sit between the two convs of a pair
ITERATIONS = 4  # passes over the pairs: a chain A -> B -> C moves B twice


class ConvPair(NamedTuple):
    first: onnx.NodeProto
    second: onnx.NodeProto
    clip: onnx.NodeProto | None = None  # a ReLU6 between them, rewritten by equalize_pairs


def _clip_bounds(node: onnx.NodeProto, constants: dict) -> tuple[float, float | None] | None:
    """(low, high) of a Clip whose bounds are constant scalars (inputs, or attributes before
    opset 11; high None: none), else None."""
    bounds: list[float | None] = [None, None]
    for index, name in enumerate(node.input[1:3]):
        if name:
            if name not in constants or numpy_helper.to_array(constants[name]).size != 1:
                return None
            bounds[index] = float(numpy_helper.to_array(constants[name]).reshape(()))
    for index, name in enumerate(("min", "max")):  # opset < 11: attributes
        bounds[index] = attribute(node, name, bounds[index])
    return (bounds[0], bounds[1]) if bounds[0] is not None else None


def _is_relu6(node: onnx.NodeProto, constants: dict) -> bool:
    """A Clip from 0 to a positive bound (or none): Relu, then a Min equalization can scale."""
    bounds = _clip_bounds(node, constants) if node.op_type == "Clip" else None
    return bounds is not None and bounds[0] == 0 and (bounds[1] is None or bounds[1] > 0)


def conv_pairs(model: onnx.ModelProto) -> list[ConvPair]:
    """Convs A, B with constant weights where A's output, through at most a Relu or a ReLU6
    (Clip from 0), is read by B alone; B is a plain conv (group 1) or a depthwise one."""
    constants = {init.name: init for init in model.graph.initializer}
    readers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {value.name for value in model.graph.output}

    def only_reader(tensor: str) -> onnx.NodeProto | None:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    def own_weights(conv: onnx.NodeProto) -> bool:
        names = [name for name in conv.input[1:] if name]
        return all(name in constants and len(readers[name]) == 1 for name in names)

    pairs = []
    for first in model.graph.node:
        if first.op_type != "Conv" or not own_weights(first):
            continue
        second, clip = only_reader(first.output[0]), None
        if second is not None and _is_relu6(second, constants):
            clip = second
        if second is not None and (second.op_type in SCALE_EQUIVARIANT or clip is not None):
            second = only_reader(second.output[0])
        if second is None or second.op_type != "Conv" or not own_weights(second):
            continue
        weight = constants[second.input[1]].dims
        group = attribute(second, "group", 1)
        if group == 1 or (weight[1] == 1 and group == weight[0]):  # plain or depthwise
            pairs.append(ConvPair(first, second, clip))
    return pairs


def equalize_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``conv_pairs`` pair equalized (the same function)."""
    equalized = copy_model(model)
    pairs = conv_pairs(equalized)
    if not pairs:
        return equalized
    initializers = {init.name: init for init in equalized.graph.initializer}
    arrays = {name: numpy_helper.to_array(init).astype(np.float64)
              for name, init in initializers.items()}
    total_scales = {}  # first conv's name -> what its output channels were divided by, in all
    for _ in range(ITERATIONS):
        for first, second, _clip in pairs:
            weight_a, weight_b = arrays[first.input[1]], arrays[second.input[1]]
            depthwise = attribute(second, "group", 1) > 1
            range_a = np.abs(weight_a).reshape(len(weight_a), -1).max(axis=1)
            by_input = weight_b if depthwise else np.swapaxes(weight_b, 0, 1)
            range_b = np.abs(by_input).reshape(len(by_input), -1).max(axis=1)
            scale = np.ones_like(range_a)
            usable = (range_a > 0) & (range_b > 0)
            scale[usable] = np.sqrt(range_a[usable] / range_b[usable])
            total_scales[first.name] = total_scales.get(first.name, 1.0) * scale
            arrays[first.input[1]] = weight_a / scale.reshape(-1, *[1] * (weight_a.ndim - 1))
            if len(first.input) > 2 and first.input[2]:
                arrays[first.input[2]] = arrays[first.input[2]] / scale
            shape = [-1, 1, 1, 1] if depthwise else [1, -1, 1, 1]
            arrays[second.input[1]] = weight_b * scale.reshape(shape[:weight_b.ndim])
    changed = {name for first, second, _clip in pairs
               for name in (*first.input[1:], second.input[1]) if name}
    for name in changed:
        dtype = numpy_helper.to_array(initializers[name]).dtype
        initializers[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(dtype), name))
    clips = [pair for pair in pairs if pair.clip is not None]
    bounds = {name for pair in clips for name in pair.clip.input[1:]}
    for first, _second, clip in clips:
        _split_relu6(equalized, clip, total_scales[first.name],
                     _clip_bounds(clip, initializers)[1])
    drop_unread_initializers(equalized, bounds)
    return equalized


def _split_relu6(model: onnx.ModelProto, clip: onnx.NodeProto, scale: np.ndarray,
                 high: float | None) -> None:
    """Rewrite ``clip`` (from 0 to ``high``, reading channels divided by ``scale``) in place
    into Clip(0, max_c bound_c) -> Min(bound) with bound = high / scale, one value per channel
    ([1, C, 1, 1]). The first Clip is a Relu for the Min after it; its upper bound changes no
    value but keeps the range int8 calibrates there (where the Clip folds into the conv's
    output Q) as tight as the Min's. Without ``high``, the Clip is a Relu and stays as it is."""
    if high is None:
        return
    bound = (high / scale).astype(np.float32).reshape(1, -1, 1, 1)
    bound_name, outer_name = f"{clip.name}.max_per_channel", f"{clip.name}.max"
    model.graph.initializer.extend([numpy_helper.from_array(bound, bound_name),
                                    numpy_helper.from_array(bound.max(), outer_name)])
    output = clip.output[0]
    minimum = helper.make_node("Min", [f"{output}/clipped", bound_name], [output],
                               f"{clip.name}/min")
    minimum.metadata_props.extend(clip.metadata_props)  # the module scope, for the report
    clip.output[0] = minimum.input[0]
    if len(clip.input) > 2:
        clip.input[2] = outer_name
    else:  # opset < 11: the bounds are attributes
        next(a for a in clip.attribute if a.name == "max").f = float(bound.max())
    nodes = model.graph.node
    index = next(k for k, node in enumerate(nodes) if node is clip)
    nodes.insert(index + 1, minimum)
