"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The residual unit is BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 3x3, added to an identity
shortcut; nothing follows the addition, so the signal path from unit to unit is a pure
identity. Where the shape changes (first unit of stages 2-4) the shortcut is a strided 1x1
convolution applied to the pre-activated input. As in the paper's appendix, the first unit
takes its pre-activation from the stem (conv 7x7 -> BN -> ReLU -> max pool) and the last unit is
followed by one extra BN -> ReLU before global average pooling and the classifier.

Parameter count at the default config (the chapters give none), from ResNet-18's 11,689,512:
no BatchNorm in the three projection shortcuts (-1,792), the pre-activation BatchNorms of the
three downsampling units normalise their input width (64/128/256) instead of their output width
(-896), the first unit has no BatchNorm of its own (-128), the final BatchNorm adds 1,024:
11,687,720.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgecnn.models._registry import register_model
from edgecnn.models._layers import init_like_torchvision
from edgecnn.models.resnet import conv1x1, conv3x3


class PreActBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, preactivate: bool = True):
        super().__init__()
        # The first unit of the network reuses the stem's BN-ReLU (preactivate=False).
        self.bn1 = nn.BatchNorm2d(inplanes) if preactivate else None
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = x if self.bn1 is None else self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(activated)
        out = self.conv1(activated)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        for index, (planes, blocks, stride) in enumerate(zip(widths, layers, strides), start=1):
            self.add_module(f"layer{index}", self._make_layer(planes, blocks, stride, index == 1))
        self.final_bn = nn.BatchNorm2d(512)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        init_like_torchvision(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, first: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = conv1x1(self.inplanes, planes, stride)  # projection, no BatchNorm
        layers = [PreActBasicBlock(self.inplanes, planes, stride, downsample,
                                   preactivate=not first)]
        self.inplanes = planes
        layers += [PreActBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(task="classification", input_size=(3, 224, 224), num_classes=1000,
                params=11_687_720, family="Pre-activation ResNet (He et al. 2016)",
                test_input=(64, 64), min_input_size=(32, 32))
def preact_resnet18(num_classes: int = 1000, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-18: BN-ReLU-conv units, identity shortcuts, (2, 2, 2, 2)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)
