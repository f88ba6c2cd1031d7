"""Tiny ONNX models built with onnx.helper, with a numpy reference of what they compute.

A 1x1 convolution (weights W, bias b) followed, for classification, by a global average pool:
    classification: logits = mean_hw(x) @ W.T + b             (N, classes)
    segmentation:   masks  = einsum("nchw,kc->nkhw", x, W) + b (N, classes, H, W)
Built in milliseconds, so the runtime tests can cover fixed batches, fp16 inputs, segmentation
and models without metadata without exporting anything from PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecnn.runtime import InputInfo, ModelMetadata
from edgecnn.runtime.metadata import METADATA_KEY

ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


@dataclass
class TinyModel:
    path: Path
    weight: np.ndarray  # (classes, channels)
    bias: np.ndarray  # (classes,)
    task: str
    info: InputInfo
    labels: list[str] | None

    def reference(self, x: np.ndarray) -> np.ndarray:
        """What the model computes, in float64 numpy."""
        x = x.astype(np.float64)
        weight, bias = self.weight.astype(np.float64), self.bias.astype(np.float64)
        if self.task == "classification":
            return x.mean(axis=(2, 3)) @ weight.T + bias
        return np.einsum("nchw,kc->nkhw", x, weight) + bias[None, :, None, None]


def tiny_model(path: Path, *, task: str = "classification", batch: int | str = "batch",
               channels: int = 3, size: tuple[int, int] = (8, 8), classes: int = 4,
               dtype=np.float32, labels: list[str] | None = None, metadata: bool = True,
               seed: int = 0) -> TinyModel:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((classes, channels)).astype(dtype)
    bias = rng.standard_normal(classes).astype(dtype)
    elem = ONNX_TYPES[dtype]
    height, width = size
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["scores" if task == "classification"
                                                            else "masks"])]
    if task == "classification":
        nodes += [helper.make_node("GlobalAveragePool", ["scores"], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["logits"])]
        output = helper.make_tensor_value_info("logits", elem, [batch, classes])
    else:
        output = helper.make_tensor_value_info("masks", elem, [batch, classes, height, width])
    graph = helper.make_graph(
        nodes, f"tiny_{task}",
        [helper.make_tensor_value_info("input", elem, [batch, channels, height, width])],
        [output],
        [numpy_helper.from_array(weight.reshape(classes, channels, 1, 1), "W"),
         numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    info = InputInfo(shape=[channels, height, width], color="RGB" if channels == 3 else "GRAY",
                     mean=[0.5] * channels, std=[0.25] * channels)
    if metadata:
        meta = ModelMetadata(model=f"tiny_{task}", task=task, input=info, labels=labels,
                             precision="fp16" if dtype == np.float16 else "fp32")
        model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return TinyModel(path, weight, bias, task, info, labels)


def computing_12_classes(path: Path, declared: int, labels: list[str] | None = None) -> Path:
    """logits declared [N, ``declared``] and computed [N, 12]: a Range whose length (1.5 x the
    input's height) only the run knows, so no shape inference replaces the declaration."""
    nodes = [helper.make_node("ReduceMax", ["input", "axes"], ["peak"], keepdims=1),
             helper.make_node("Flatten", ["peak"], ["column"]),
             helper.make_node("Shape", ["input"], ["size"], start=2, end=3),
             helper.make_node("Squeeze", ["size"], ["height"]),
             helper.make_node("Cast", ["height"], ["real"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["real", "factor"], ["count"]),
             helper.make_node("Range", ["zero", "count", "one"], ["steps"]),
             helper.make_node("Add", ["column", "steps"], ["logits"])]
    graph = helper.make_graph(
        nodes, "lies", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", declared])],
        [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
         helper.make_tensor("factor", TensorProto.FLOAT, [], [1.5]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    info = InputInfo(shape=[3, 8, 8], mean=[0.5] * 3, std=[0.25] * 3)
    model.metadata_props.add(key=METADATA_KEY, value=ModelMetadata(
        model="lies", task="classification", input=info, labels=labels).to_json())
    onnx.save(model, str(path))
    return path


def square_root_first(model_path: Path, path: Path) -> Path:
    """``model_path`` with Sqrt on its input, saved as ``path``: NaN scores for an input with
    a negative value (a dark image, once normalized), finite ones otherwise."""
    model = onnx.load(model_path)
    model.graph.node[0].input[0] = "rooted"
    model.graph.node.insert(0, helper.make_node("Sqrt", ["input"], ["rooted"]))
    onnx.save(model, str(path))
    return path


def normalize(images: np.ndarray, info: InputInfo) -> np.ndarray:
    """NHWC uint8 images already at the model's size -> the NCHW input, by the formula."""
    mean = np.asarray(info.mean, dtype=np.float64)
    std = np.asarray(info.std, dtype=np.float64)
    return ((images.astype(np.float64) / info.scale - mean) / std).transpose(0, 3, 1, 2)


PLANTED_NODE = "conv2"  # the layer `planted_cnn` makes bad for int8
PLANTED_CHANNEL = 3


def planted_cnn(path: Path, *, outlier: float = 100.0, depthwise: bool = False,
                seed: int = 0) -> Path:
    """conv1 -> Relu -> conv2 -> Relu -> conv3 -> Relu -> global pool -> Gemm (3x16x16 -> 4
    classes), fp32 with edgecnn metadata, whose conv2 output channel PLANTED_CHANNEL is
    ``outlier`` times larger (its filter and bias scaled up) and which conv3 reads scaled back
    down: the same function as without the plant, in float, but the Relu output between them
    has one channel with a 100x range, so int8 leaves the other channels a few levels.
    ``depthwise``: conv3 is a depthwise conv (one filter per channel)."""
    rng = np.random.default_rng(seed)
    channels = 8

    def conv_weight(out_channels: int, in_channels: int) -> np.ndarray:
        return (rng.standard_normal((out_channels, in_channels, 3, 3))
                / np.sqrt(9 * in_channels)).astype(np.float32)

    w1, w2 = conv_weight(channels, 3), conv_weight(channels, channels)
    w3 = conv_weight(channels, 1 if depthwise else channels)
    b1, b2, b3 = (rng.standard_normal(channels).astype(np.float32) * 0.1 for _ in range(3))
    w2[PLANTED_CHANNEL] *= outlier
    b2[PLANTED_CHANNEL] *= outlier
    if depthwise:
        w3[PLANTED_CHANNEL] /= outlier
    else:
        w3[:, PLANTED_CHANNEL] /= outlier
    fc = rng.standard_normal((4, channels)).astype(np.float32)
    inits = [numpy_helper.from_array(array, name) for array, name in (
        (w1, "conv1.weight"), (b1, "conv1.bias"), (w2, "conv2.weight"), (b2, "conv2.bias"),
        (w3, "conv3.weight"), (b3, "conv3.bias"), (fc, "fc.weight"),
        (np.zeros(4, np.float32), "fc.bias"))]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], "conv1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], "conv2", **pads),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("Conv", ["r2", "conv3.weight", "conv3.bias"], ["c3"], "conv3",
                         group=channels if depthwise else 1, **pads),
        helper.make_node("Relu", ["c3"], ["r3"], "relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"], "pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], "fc", transB=1),
    ]
    return _save_classifier(path, "planted_cnn", nodes, inits)


def relu6_cnn(path: Path, *, outlier: float = 100.0, seed: int = 0) -> Path:
    """conv1 -> ReLU6 -> depthwise conv2 -> ReLU6 -> 1x1 conv3 -> global pool -> Gemm (3x16x16
    -> 4 classes), mobilenet_v2's inverted-residual pattern with ReLU6 as the exporter writes it
    (``Clip`` reading one shared pair of 0 and 6 initializers). Planted like ``planted_cnn``:
    conv1's output channel PLANTED_CHANNEL and conv2's channel PLANTED_CHANNEL + 2 are
    ``outlier`` times larger and read back ``outlier`` times smaller. The weights are small
    (gain 0.02) so that the planted channels mostly stay under 6."""
    rng = np.random.default_rng(seed)
    channels, gain, big = 8, 0.02, PLANTED_CHANNEL + 2
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * gain / np.sqrt(27)).astype(np.float32)
    w2 = (rng.standard_normal((channels, 1, 3, 3)) / 3).astype(np.float32)
    w3 = (rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
    b1, b2, b3 = (rng.standard_normal(channels).astype(np.float32) * gain for _ in range(3))
    w1[PLANTED_CHANNEL] *= outlier
    b1[PLANTED_CHANNEL] *= outlier
    w2[PLANTED_CHANNEL] /= outlier
    w2[big] *= outlier
    b2[big] *= outlier
    w3[:, big] /= outlier
    fc = rng.standard_normal((4, channels)).astype(np.float32)
    inits = [numpy_helper.from_array(array, name) for array, name in (
        (w1, "conv1.weight"), (b1, "conv1.bias"), (w2, "conv2.weight"), (b2, "conv2.bias"),
        (w3, "conv3.weight"), (b3, "conv3.bias"), (fc, "fc.weight"),
        (np.zeros(4, np.float32), "fc.bias"), (np.array(0, np.float32), "min_val"),
        (np.array(6, np.float32), "max_val"))]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], "conv1", **pads),
        helper.make_node("Clip", ["c1", "min_val", "max_val"], ["r1"], "relu6_1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], "conv2",
                         group=channels, **pads),
        helper.make_node("Clip", ["c2", "min_val", "max_val"], ["r2"], "relu6_2"),
        helper.make_node("Conv", ["r2", "conv3.weight", "conv3.bias"], ["c3"], "conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["pooled"], "pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], "fc", transB=1),
    ]
    return _save_classifier(path, "relu6_cnn", nodes, inits)


def _save_classifier(path: Path, name: str, nodes: list, inits: list) -> Path:
    """Save a 3x16x16 -> 4 classes graph, fp32 with edgecnn metadata."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    info = InputInfo(shape=[3, 16, 16], color="RGB", mean=[0.5] * 3, std=[0.25] * 3)
    meta = ModelMetadata(model=name, task="classification", input=info)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
