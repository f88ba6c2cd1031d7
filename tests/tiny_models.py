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


def normalize(images: np.ndarray, info: InputInfo) -> np.ndarray:
    """NHWC uint8 images already at the model's size -> the NCHW input, by the formula."""
    mean = np.asarray(info.mean, dtype=np.float64)
    std = np.asarray(info.std, dtype=np.float64)
    return ((images.astype(np.float64) / info.scale - mean) / std).transpose(0, 3, 1, 2)
