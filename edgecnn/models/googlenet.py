"""GoogLeNet / Inception v1 (Szegedy et al. 2014), torchvision's layout and parameter names.

As in torchvision: BasicConv2d = conv (no bias) + BatchNorm (eps 1e-3) + ReLU; the 5x5 branch
uses a 3x3 convolution (torchvision's known deviation, kept so its checkpoints load); every max
pool uses ``ceil_mode=True`` (Caffe's rounding), which the ONNX export keeps as ``ceil_mode=1``.

Differences in defaults, on purpose:

- ``aux_logits=False``: the two auxiliary classifiers exist only for training. With
  ``aux_logits=True`` they are built and, in training mode, the forward returns
  ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``; in eval mode (and so in every export)
  the forward returns the logits alone and the auxiliary heads are not in the graph.
- ``transform_input=False``. torchvision's ImageNet checkpoint was ported from TensorFlow and
  expects inputs scaled to [-1, 1]; torchvision re-maps ImageNet-normalised input with
  ``transform_input=True``. Here, pass ``transform_input=True`` for that checkpoint, or keep it
  off and preprocess with mean = std = 0.5 instead (the same numbers, without extra nodes).
- That checkpoint also stores the (untrained) auxiliary heads; a model built without them drops
  those ``aux1.*`` / ``aux2.*`` keys when loading (``adapt_state_dict``), all others strictly.
- Random initialisation is Kaiming-normal like the ResNets (torchvision draws N(0, 0.01)), so a
  randomly initialised network keeps activations of order one through its 57 convolutions and
  the parity checks see input-dependent outputs.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.errors import BadInput
from edgecnn.models._registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from edgecnn.models._layers import init_like_torchvision

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])
AUX_PREFIXES = ("aux1.", "aux2.")


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **conv_options):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (training only): avgpool to 4x4 -> 1x1 conv 128 -> fc 1024 -> fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False,
                 transform_input: bool = False, dropout: float = 0.2, dropout_aux: float = 0.7):
        super().__init__()
        if transform_input and in_channels != 3:
            raise BadInput("transform_input re-maps ImageNet RGB statistics; it needs 3 channels")
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        pool = dict(kernel_size=3, stride=2, ceil_mode=True)
        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(**pool)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(**pool)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(**pool)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        init_like_torchvision(self)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised RGB -> the [-1, 1] scale of torchvision's ported checkpoint."""
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def forward(self, x: torch.Tensor):
        if self.transform_input:
            x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        train_aux = self.training and self.aux_logits
        aux1 = self.aux1(x) if train_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if train_aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return GoogLeNetOutputs(x, aux2, aux1) if train_aux else x

    def adapt_state_dict(self, state: dict) -> dict:
        """Drop the auxiliary heads of a checkpoint when this model has none (see module doc)."""
        if self.aux_logits:
            return state
        return {key: value for key, value in state.items() if not key.startswith(AUX_PREFIXES)}


@register_model(task="classification", input_size=(3, 224, 224), num_classes=1000,
                params=6_624_904, family="GoogLeNet / Inception v1 (torchvision)",
                test_input=(64, 64), min_input_size=(15, 15))
def googlenet(num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False,
              transform_input: bool = False, dropout: float = 0.2,
              dropout_aux: float = 0.7) -> GoogLeNet:
    """GoogLeNet (Inception v1): ceil-mode pooling; auxiliary heads only with aux_logits=True."""
    return GoogLeNet(num_classes, in_channels, aux_logits, transform_input, dropout, dropout_aux)
