"""ResNet (He et al. 2015), with torchvision's module layout and parameter names.

A torchvision ResNet state_dict loads into these with ``strict=True``. ``conv3x3_factories``
lets a variant swap the 3x3 convolutions of chosen stages (the deformable ResNets do).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from edgecnn.models._layers import init_like_torchvision
from edgecnn.models._registry import register_model

Conv3x3Factory = Callable[..., nn.Module]  # (in_planes, out_planes, stride) -> module


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, make_conv3x3: Conv3x3Factory = conv3x3):
        super().__init__()
        self.conv1 = make_conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = make_conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's "ResNet V1.5" bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, make_conv3x3: Conv3x3Factory = conv3x3):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = make_conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, in_channels: int = 3,
                 conv3x3_factories: Sequence[Conv3x3Factory | None] = (None,) * 4):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        for index, (planes, blocks, stride, factory) in enumerate(
                zip(widths, layers, strides, conv3x3_factories), start=1):
            stage = self._make_layer(block, planes, blocks, stride, factory or conv3x3)
            self.add_module(f"layer{index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_like_torchvision(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int,
                    make_conv3x3: Conv3x3Factory) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, make_conv3x3)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, make_conv3x3=make_conv3x3)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four stages (strides 4, 8, 16, 32); used by FCN."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        return self.fc(torch.flatten(self.avgpool(x), 1))


_RESNET = dict(task="classification", input_size=(3, 224, 224), num_classes=1000,
               test_input=(64, 64), min_input_size=(32, 32))


@register_model(params=11_689_512, family="ResNet (torchvision)", **_RESNET)
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model(params=21_797_672, family="ResNet (torchvision)", **_RESNET)
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@register_model(params=25_557_032, family="ResNet (torchvision)", **_RESNET)
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


@register_model(params=44_549_160, family="ResNet (torchvision)", **_RESNET)
def resnet101(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-101: bottleneck blocks (3, 4, 23, 3)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)


@register_model(params=60_192_808, family="ResNet (torchvision)", **_RESNET)
def resnet152(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-152: bottleneck blocks (3, 8, 36, 3)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels)
