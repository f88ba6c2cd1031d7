"""Deformable ResNets (Dai et al. 2017, DCN v1; Zhu et al. 2019, DCN v2) and a tiny test net.

They are torchvision ResNets whose 3x3 convolutions in chosen stages are ``DeformConv2d``
(through ResNet's ``conv3x3_factories`` hook), so every torchvision parameter keeps its name and
shape: a torchvision ResNet checkpoint loads with only the offset (and mask) predictors
missing, which stay at their zero initialisation, and the model then computes exactly the
plain ResNet (zero offsets; DCNv2 masks start at 1, see ``DeformConv2d``).

Stages, as the zoo specifies them ("3x3 convs of stages 3-4 (dcn v1) / 3-5 (dcnv2)"):

- ``resnet18_dcn``: the third and fourth residual stages, torchvision's ``layer3`` and
  ``layer4`` (stages counted over the four residual stages).
- ``resnet50_dcnv2``: "stages 3-5" is the DCNv2 paper's conv3_x-conv5_x (the stem is conv1),
  torchvision's ``layer2``, ``layer3`` and ``layer4``, as in the paper.

The two phrases count stages differently; this reading follows the papers for DCNv2 and keeps
the deformable layers of the small ResNet-18 to its two deepest stages.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from edgecnn.models._registry import register_model
from edgecnn.models.resnet import BasicBlock, Bottleneck, ResNet
from edgecnn.ops import DeformConv2d


def deform_conv3x3(in_planes: int, out_planes: int, stride: int = 1, *,
                   modulated: bool = False) -> DeformConv2d:
    """A drop-in for resnet.conv3x3 (same weight name and shape, no bias)."""
    return DeformConv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False,
                        modulated=modulated)


class DeformableResNet(ResNet):
    """ResNet with deformable 3x3 convolutions in the stages given by ``deformable``."""

    def __init__(self, block, layers, num_classes: int = 1000, in_channels: int = 3, *,
                 deformable: tuple[bool, bool, bool, bool], modulated: bool = False):
        factory = functools.partial(deform_conv3x3, modulated=modulated)
        super().__init__(block, layers, num_classes, in_channels,
                         conv3x3_factories=[factory if on else None for on in deformable])
        # init_like_torchvision initialises nn.Conv2d only: it skips DeformConv2d.weight (left
        # at DeformConv2d's own nn.Conv2d-style default) and gives the offset predictor
        # conv_offset, a real nn.Conv2d, Kaiming weights. Give the weight the Kaiming init of
        # the conv it replaces and put the predictor back to zero (plain-conv behaviour).
        for module in self.modules():
            if isinstance(module, DeformConv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                module.reset_offset_predictor()


_DCN = dict(task="classification", input_size=(3, 224, 224), num_classes=1000,
            test_input=(64, 64), min_input_size=(32, 32))


@register_model(params=12_125_112, family="Deformable ResNet (DCN v1)", **_DCN)
def resnet18_dcn(num_classes: int = 1000, in_channels: int = 3) -> DeformableResNet:
    """ResNet-18 with DCN v1 (offsets only) in the 3x3 convs of layer3 and layer4."""
    return DeformableResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels,
                            deformable=(False, False, True, True))


@register_model(params=26_428_295, family="Deformable ResNet (DCN v2)", **_DCN)
def resnet50_dcnv2(num_classes: int = 1000, in_channels: int = 3) -> DeformableResNet:
    """ResNet-50 with DCN v2 (offsets and mask) in the 3x3 convs of layer2, layer3, layer4."""
    return DeformableResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels,
                            deformable=(False, True, True, True), modulated=True)


class DeformTestNet(nn.Module):
    """A few-kilobyte net exercising every DeformConv2d option, for fast tests.

    DCN v1 with bias, conv groups and offset groups; DCN v2 with stride, dilation, and
    padding != kernel // 2; both lowerings' optional inputs (bias, mask) present and absent.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.deform1 = DeformConv2d(8, 8, 3, padding=1, groups=2, offset_groups=2, bias=True)
        self.deform2 = DeformConv2d(8, 12, (3, 2), stride=(2, 1), padding=(2, 0),
                                    dilation=(2, 1), offset_groups=4, bias=False, modulated=True)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.relu(self.deform1(x))
        x = self.relu(self.deform2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model(task="classification", input_size=(3, 16, 16), num_classes=10, params=7_382,
                family="edgecnn test net", test_input=(16, 16), min_input_size=(8, 8))
def deform_testnet(num_classes: int = 10, in_channels: int = 3) -> DeformTestNet:
    """Two deformable convs (v1 grouped with bias, v2 strided and dilated) for fast tests."""
    return DeformTestNet(num_classes, in_channels)
