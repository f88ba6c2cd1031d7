"""Cross-layer equalization and bias correction on an fp32 ONNX graph, for ``quantize --equalize``
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

Bias correction (empirical): after quantizing, the per-channel mean of (int8 - fp32) at each
conv's output on the calibration data is subtracted from that conv's int32 bias, one conv after
another in graph order, each measured with the convs before it corrected.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecnn.export.calibration import CALIBRATION_BATCH, batches
from edgecnn.runtime import load_session
from edgecnn.runtime.onnx_file import (
    attribute, copy_model, cut_at, drop_unread_initializers, fixed_batch, graph_inputs,
)

SCALE_EQUIVARIANT = ("Relu",)  # what may sit between the two convs of a pair
ITERATIONS = 4  # passes over the pairs: a chain A -> B -> C moves B twice
BIAS_SAMPLES = 64  # calibration rows the bias correction measures on


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


def _correctable_biases(quantized: onnx.ModelProto, names: list[str]) -> dict[str, tuple]:
    """Conv name -> (its int32 bias initializer, the bias scale per channel) in ``quantized``,
    for the convs among ``names`` whose bias is a DequantizeLinear of a constant that no other
    node reads (a shared bias cannot take two corrections)."""
    producers = {output: node for node in quantized.graph.node for output in node.output}
    constants = {init.name: init for init in quantized.graph.initializer}
    readers = Counter(name for node in quantized.graph.node for name in node.input)
    found = {}
    for node in quantized.graph.node:
        source = producers.get(node.input[2]) if node.op_type == "Conv" and len(node.input) > 2 \
            else None
        if node.name in names and source is not None and source.op_type == "DequantizeLinear" \
                and source.input[0] in constants and source.input[1] in constants \
                and readers[source.input[0]] == 1 and readers[source.output[0]] == 1:
            scale = numpy_helper.to_array(constants[source.input[1]]).astype(np.float64)
            found[node.name] = (constants[source.input[0]], scale)
    return found


def correct_biases(float_model: onnx.ModelProto, quantized: onnx.ModelProto,
                   inputs: np.ndarray, progress=None) -> onnx.ModelProto:
    """A copy of ``quantized`` (QDQ, quantized from ``float_model``) whose int32 conv biases
    absorb the mean int8 error per output channel on ``inputs``. The convs are corrected one
    after another in graph order, each measured with those before it already corrected (an
    error corrected upstream is not corrected again downstream). Convs are matched by node name;
    the conv's own output is compared, before any Relu the quantizer folded. ``progress`` gets
    ("correcting biases", convs done, convs)."""
    float_convs = {node.name: node.output[0] for node in float_model.graph.node
                   if node.op_type == "Conv" and node.name}
    int8_convs = {node.name: node.output[0] for node in quantized.graph.node
                  if node.op_type == "Conv" and node.name in float_convs}
    corrected = copy_model(quantized)
    biases = _correctable_biases(corrected, list(int8_convs))
    if not biases or any(item.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                         for node in corrected.graph.node for item in node.attribute):
        return corrected  # (a subgraph could read tensors the segments below do not pass on)
    inputs = np.asarray(inputs, dtype=np.float32)[:BIAS_SAMPLES]
    reference = dict(zip(biases, _channel_means(
        float_model, [float_convs[name] for name in biases], inputs)))
    by_output = {int8_convs[name]: name for name in biases}
    limits = np.iinfo(np.int32)
    done = 0
    for tensor, values in _run_in_segments(cut_at(corrected, list(by_output)), list(by_output),
                                           inputs):
        name = by_output[tensor]
        bias, scale = biases[name]
        done += 1
        if progress:
            progress("correcting biases", done, len(biases))
        if values.ndim < 2 or reference[name] is None or len(reference[name]) != values.shape[1]:
            continue
        axes = tuple(axis for axis in range(values.ndim) if axis != 1)
        shift = values[:len(inputs)].mean(axis=axes, dtype=np.float64) - reference[name]
        step = np.round(shift / scale)
        bias.CopyFrom(numpy_helper.from_array(np.clip(
            numpy_helper.to_array(bias) - step, limits.min, limits.max).astype(np.int32), bias.name))
        # what the conv computes with the corrected bias, for the convs after it
        values -= (step * scale).astype(np.float32).reshape(-1, *[1] * (values.ndim - 2))
    return corrected


def _run_in_segments(model: onnx.ModelProto, tensors: list[str], inputs: np.ndarray):
    """Run ``model`` on ``inputs`` cut after each node that makes one of ``tensors``: yields
    (tensor, its values) in graph order, and what the caller changes in those values in place
    is what the rest of the graph reads. One forward pass in all, a small session a segment.
    The values have ``len(inputs)`` rows, and more (repeats) for a fixed batch that does not
    divide it."""
    nodes = list(model.graph.node)
    cuts = [k for k, node in enumerate(nodes) if any(out in tensors for out in node.output)]
    constants = {init.name: init for init in model.graph.initializer}
    types = {value.name: value for value in (
        *onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input,
        *model.graph.output)}
    last_read = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            last_read[name] = index
    fixed = fixed_batch(model)
    rows = len(inputs)
    chunk = fixed or CALIBRATION_BATCH
    padded = np.concatenate([inputs, inputs[np.arange(-rows % chunk) % rows]])
    values = {graph_inputs(model)[0].name: padded}
    batched = set(values)  # what has the batch axis (the rest, e.g. shapes, is fed whole)
    for node in nodes:
        if any(name in batched for name in node.input):
            batched.update(node.output)
    start = 0
    for cut in cuts:
        segment = nodes[start:cut + 1]
        made = {out for node in segment for out in node.output}
        needed = [name for name in dict.fromkeys(name for node in segment for name in node.input)
                  if name and name not in made and name not in constants]
        wanted = [name for name in made if last_read.get(name, -1) > cut
                  or name in tensors]
        graph = helper.make_graph(
            segment, "segment",
            [helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(values[name].dtype), None)
             for name in needed],
            [types.get(name) or helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
             for name in wanted],
            [constants[name] for name in dict.fromkeys(
                name for node in segment for name in node.input) if name in constants])
        part = helper.make_model(graph, opset_imports=list(model.opset_import),
                                 ir_version=model.ir_version, functions=list(model.functions))
        session = load_session(part.SerializeToString())
        runs = [session.run(wanted, {name: values[name][k:k + chunk] if name in batched
                                     else values[name] for name in needed})
                for k in range(0, len(padded), chunk)]
        for index, name in enumerate(wanted):
            values[name] = np.concatenate([run[index] for run in runs]) if name in batched \
                else runs[0][index]
        for name in nodes[cut].output:
            if name in tensors:
                yield name, values[name]
        for name in [name for name in values if last_read.get(name, -1) <= cut]:
            del values[name]
        start = cut + 1


def _channel_means(model: onnx.ModelProto, tensors: list[str],
                   inputs: np.ndarray) -> list[np.ndarray | None]:
    """Each of ``tensors``'s mean over every axis but the channel axis 1 (None for a tensor of
    fewer than 2 axes) on ``inputs``, run in the model's batches and summed batch by batch (an
    early conv's output at 224 px is ~100 MB for 64 inputs). The model runs cut at them."""
    model = cut_at(model, tensors)
    session = load_session(model.SerializeToString())
    name = graph_inputs(model)[0].name
    sums, counts, done = [0.0] * len(tensors), [0] * len(tensors), 0
    for chunk in batches(inputs, fixed_batch(model)):
        valid = min(len(chunk), len(inputs) - done)  # a fixed batch's last chunk is padded
        done += valid
        for k, value in enumerate(session.run(tensors, {name: chunk})):
            if value.ndim >= 2:
                value = value[:valid]
                axes = tuple(axis for axis in range(value.ndim) if axis != 1)
                sums[k] = sums[k] + value.sum(axis=axes, dtype=np.float64)
                counts[k] += value.size // value.shape[1]
    return [total / count if count else None for total, count in zip(sums, counts)]
