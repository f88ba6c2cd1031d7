"""ONNX files edgecnn did not write: small nn.Modules through plain ``torch.onnx.export``.

The two exporters users have: the dynamo one (torch >= 2.9's default; it writes the weights to
``model.onnx.data`` beside ``model.onnx``) and the legacy TorchScript one (``dynamo=False``,
opset 13, input names like ``input.1``). No edgecnn metadata in either.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

CLASSES = 5


class TinyClassifier(nn.Module):
    """conv -> global mean -> linear: any H x W; ``nhwc`` takes (N, H, W, C) input; ``softmax``
    ends in a softmax (probabilities out, as Keras classifiers and many published files do)."""

    def __init__(self, channels: int = 3, nhwc: bool = False, softmax: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.nhwc, self.softmax = nhwc, softmax
        self.conv = nn.Conv2d(channels, 16, 3, padding=1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, input):  # `input`: the legacy exporter names it input.1
        if self.nhwc:
            input = input.permute(0, 3, 1, 2)
        logits = self.fc(torch.relu(self.conv(input)).mean((2, 3)))
        return logits.softmax(1) if self.softmax else logits


class TwoInputsTwoOutputs(nn.Module):
    """An image and a per-image scale in; logits and the pooled features out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, image, scale):
        features = self.conv(image).mean((2, 3)) * scale
        return self.fc(features), features


def export_dynamo(module: nn.Module, path: Path, example: tuple, dynamic_hw: bool = False) -> Path:
    """torch.onnx.export(dynamo=True): weights in ``path.name + '.data'`` beside ``path``."""
    shapes = None
    if dynamic_hw:
        axes = {0: torch.export.Dim("batch", max=64), 2: torch.export.Dim("height", min=8, max=512),
                3: torch.export.Dim("width", min=8, max=512)}
        shapes = ({**axes},) if len(example) == 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=True, external_data=True,
                          dynamic_shapes=shapes, verbose=False)
    assert (path.parent / f"{path.name}.data").is_file()
    return path


def export_legacy(module: nn.Module, path: Path, example: tuple, *, dynamic_hw: bool = False,
                  input_names=None, output_names=None, opset: int = 13) -> Path:
    """torch.onnx.export(dynamo=False, opset_version=opset): weights inside the file; the first
    input is called ``input.1`` unless ``input_names`` says otherwise. ``dynamic_hw``: dynamic
    batch, height and width (axes 1, 2 of an NHWC module's input)."""
    input_names = input_names or ["input.1"]
    height, width = (1, 2) if getattr(module, "nhwc", False) else (2, 3)
    axes = {input_names[0]: {0: "n", height: "h", width: "w"}} if dynamic_hw else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=axes)
    return path


class ScaleFirst(TwoInputsTwoOutputs):
    """TwoInputsTwoOutputs with the image as the second input."""

    def forward(self, scale, image):
        return super().forward(image, scale)
