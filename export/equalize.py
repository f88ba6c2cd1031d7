"""Cross-layer equalization and bias correction on an fp32 ONNX graph, for ``quantize --equalize``
(docs/quantization.md, "Equalization").

Equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019; AIMET's CLE): for a conv A whose output reaches a conv B through nothing or
a Relu, scaling A's output channel c by 1/s_c and B's input channel c by s_c computes the same
function in float (ReLU(x / s) = ReLU(x) / s for s > 0). With s_c = sqrt(r_A,c / r_B,c), r the
channel's largest |weight|, both ranges become sqrt(r_A,c r_B,c): a channel whose range was 100x
the others' (which per-tensor weight scales and the activation's one scale cannot serve) is
brought in line. B may be a depthwise conv (one filter per channel).

Bias correction (empirical): after quantizing, the per-channel mean of (int8 - fp32) at each
conv's output on the calibration data is subtracted from that conv's float bias, and the model
is quantized again (the recipe does this, with the calibrated ranges cached).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from edgecnn.export.calibration import batches
from edgecnn.runtime import load_session
from edgecnn.runtime.onnx_file import fixed_batch, graph_inputs, with_outputs

SCALE_EQUIVARIANT = ("Relu",)  # what may sit between the two convs of a pair
ITERATIONS = 4  # passes over the pairs: a chain A -> B -> C moves B twice
BIAS_SAMPLES = 64  # calibration rows the bias correction measures on


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def conv_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(A, B): convs with constant weights where A's output, through at most a Relu, is read by
    B alone; B is a plain conv (group 1) or a depthwise one."""
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
        second = only_reader(first.output[0])
        if second is not None and second.op_type in SCALE_EQUIVARIANT:
            second = only_reader(second.output[0])
        if second is None or second.op_type != "Conv" or not own_weights(second):
            continue
        weight = constants[second.input[1]].dims
        group = _attribute(second, "group", 1)
        if group == 1 or (weight[1] == 1 and group == weight[0]):  # plain or depthwise
            pairs.append((first, second))
    return pairs


def equalize_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``conv_pairs`` pair equalized (the same function)."""
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    pairs = conv_pairs(equalized)
    if not pairs:
        return equalized
    initializers = {init.name: init for init in equalized.graph.initializer}
    arrays = {name: numpy_helper.to_array(init).astype(np.float64)
              for name, init in initializers.items()}
    for _ in range(ITERATIONS):
        for first, second in pairs:
            weight_a, weight_b = arrays[first.input[1]], arrays[second.input[1]]
            depthwise = _attribute(second, "group", 1) > 1
            range_a = np.abs(weight_a).reshape(len(weight_a), -1).max(axis=1)
            by_input = weight_b if depthwise else np.swapaxes(weight_b, 0, 1)
            range_b = np.abs(by_input).reshape(len(by_input), -1).max(axis=1)
            scale = np.ones_like(range_a)
            usable = (range_a > 0) & (range_b > 0)
            scale[usable] = np.sqrt(range_a[usable] / range_b[usable])
            arrays[first.input[1]] = weight_a / scale.reshape(-1, *[1] * (weight_a.ndim - 1))
            if len(first.input) > 2 and first.input[2]:
                arrays[first.input[2]] = arrays[first.input[2]] / scale
            shape = [-1, 1, 1, 1] if depthwise else [1, -1, 1, 1]
            arrays[second.input[1]] = weight_b * scale.reshape(shape[:weight_b.ndim])
    changed = {name for first, second in pairs
               for name in (*first.input[1:], second.input[1]) if name}
    for name in changed:
        dtype = numpy_helper.to_array(initializers[name]).dtype
        initializers[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(dtype), name))
    return equalized


def _run(model: onnx.ModelProto, tensors: list[str], inputs: np.ndarray) -> list[np.ndarray]:
    session = load_session(with_outputs(model, tensors).SerializeToString())
    name = graph_inputs(model)[0].name
    runs = [session.run(tensors, {name: chunk}) for chunk in batches(inputs, fixed_batch(model))]
    return [np.concatenate([run[k] for run in runs])[:len(inputs)] for k in range(len(tensors))]


def correct_biases(float_model: onnx.ModelProto, quantized: onnx.ModelProto,
                   inputs: np.ndarray) -> onnx.ModelProto:
    """A copy of ``float_model`` whose conv biases absorb the mean int8 error per output channel
    of ``quantized`` (quantized from it) on ``inputs``. Convs are matched by node name; the
    conv's own output is compared, before any Relu the quantizer folded."""
    constants = {init.name: init for init in float_model.graph.initializer}
    float_convs = {node.name: node for node in float_model.graph.node
                   if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in constants}
    int8_convs = {node.name: node for node in quantized.graph.node if node.op_type == "Conv"}
    names = [name for name in float_convs if name and name in int8_convs]
    corrected = onnx.ModelProto()
    corrected.CopyFrom(float_model)
    if not names:
        return corrected
    inputs = np.asarray(inputs, dtype=np.float32)[:BIAS_SAMPLES]
    reference = _run(float_model, [float_convs[name].output[0] for name in names], inputs)
    candidate = _run(quantized, [int8_convs[name].output[0] for name in names], inputs)
    biases = {init.name: init for init in corrected.graph.initializer}
    for name, fp32, int8 in zip(names, reference, candidate):
        if fp32.shape != int8.shape or fp32.ndim < 2:
            continue
        axes = tuple(axis for axis in range(fp32.ndim) if axis != 1)
        shift = (int8.astype(np.float64) - fp32).mean(axis=axes)
        bias = biases[float_convs[name].input[2]]
        values = numpy_helper.to_array(bias)
        bias.CopyFrom(numpy_helper.from_array((values - shift).astype(values.dtype), bias.name))
    return corrected
