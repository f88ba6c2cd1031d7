"""VGG (Simonyan & Zisserman 2014), with torchvision's module layout and parameter names.

Configurations A, B, D, E (VGG-11/13/16/19): blocks of 3x3 padding-1 convolutions, each block
closed by a 2x2 max pool, then adaptive average pooling to 7x7 and three fully connected layers.
The ``_bn`` variants put a BatchNorm after every convolution. A torchvision VGG state_dict loads
with ``strict=True``.

The first fully connected layer (25,088 x 4,096) holds most of the ~130M parameters whatever the
input size: at 32x32 (the smallest input, five pools down to 1x1) the adaptive pooling repeats
the single pixel 7x7 times.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from edgecnn.models._registry import register_model
from edgecnn.models._layers import init_like_torchvision

# Numbers are conv widths, "M" a 2x2 max pool (torchvision's cfgs "A", "B", "D", "E").
CONFIGS: dict[str, list[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_layers(config: Sequence[Union[int, str]], batch_norm: bool,
                in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in config:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        init_like_torchvision(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg(depth: str, batch_norm: bool, num_classes: int, in_channels: int, dropout: float) -> VGG:
    return VGG(make_layers(CONFIGS[depth], batch_norm, in_channels), num_classes, dropout)


_VGG = dict(task="classification", input_size=(3, 224, 224), num_classes=1000,
            family="VGG (torchvision)", test_input=(32, 32), min_input_size=(32, 32))


@register_model(params=132_863_336, **_VGG)
def vgg11(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-11 (configuration A)."""
    return _vgg("vgg11", False, num_classes, in_channels, dropout)


@register_model(params=132_868_840, **_VGG)
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-11 (configuration A) with BatchNorm."""
    return _vgg("vgg11", True, num_classes, in_channels, dropout)


@register_model(params=133_047_848, **_VGG)
def vgg13(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg("vgg13", False, num_classes, in_channels, dropout)


@register_model(params=133_053_736, **_VGG)
def vgg13_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-13 (configuration B) with BatchNorm."""
    return _vgg("vgg13", True, num_classes, in_channels, dropout)


@register_model(params=138_357_544, **_VGG)
def vgg16(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("vgg16", False, num_classes, in_channels, dropout)


@register_model(params=138_365_992, **_VGG)
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-16 (configuration D) with BatchNorm."""
    return _vgg("vgg16", True, num_classes, in_channels, dropout)


@register_model(params=143_667_240, **_VGG)
def vgg19(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("vgg19", False, num_classes, in_channels, dropout)


@register_model(params=143_678_248, **_VGG)
def vgg19_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-19 (configuration E) with BatchNorm."""
    return _vgg("vgg19", True, num_classes, in_channels, dropout)
