"""Bias correction (empirical; Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019), on by default for static int8 (``quantize
--no-bias-correction`` turns it off; docs/quantization.md): after quantizing, the per-channel
mean of (int8 - fp32) at each conv's output on the calibration data is subtracted from that
conv's int32 bias, one conv after another in graph order, each measured with the convs before it
corrected. This is edgecnn's own arithmetic on the quantizer's output, not onnxruntime's.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecnn.export.calibration import CALIBRATION_BATCH, batches
from edgecnn.runtime import load_session
from edgecnn.runtime.onnx_file import copy_model, cut_at, fixed_batch, graph_inputs

BIAS_SAMPLES = 64  # calibration rows the bias correction measures on


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
