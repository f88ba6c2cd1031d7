"""DenseNet (Huang et al. 2017), with torchvision's module layout and parameter names.

DenseNet-121: growth rate 32, dense blocks of (6, 12, 24, 16) layers, each layer BN -> ReLU ->
1x1 conv (4 x growth) -> BN -> ReLU -> 3x3 conv (growth), its output concatenated to all earlier
feature maps; transitions BN -> ReLU -> 1x1 conv (halving the channels) -> 2x2 average pool.

torchvision's own download files predate its current layer names (``norm.1`` instead of
``norm1``); ``adapt_state_dict`` renames those keys the way torchvision does when it loads them,
so both old and new torchvision checkpoints load strictly.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.models._registry import register_model
from edgecnn.models._layers import init_like_torchvision

# torchvision's legacy names: "...denselayer1.norm.1.weight" -> "...denselayer1.norm1.weight".
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                         r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1,
                               bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int):
        super().__init__()
        for index in range(num_layers):
            layer = _DenseLayer(num_input_features + index * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{index + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2,
                                padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for index, num_layers in enumerate(block_config, start=1):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate)
            self.features.add_module(f"denseblock{index}", block)
            num_features += num_layers * growth_rate
            if index != len(block_config):
                self.features.add_module(f"transition{index}",
                                         _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        init_like_torchvision(self, conv_mode="fan_in")  # torchvision's, up to the fc bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)

    def adapt_state_dict(self, state: dict) -> dict:
        """Rename torchvision's legacy dense-layer keys (``norm.1`` -> ``norm1``)."""
        return {_LEGACY_KEY.sub(r"\1\2", key): value for key, value in state.items()}


@register_model(task="classification", input_size=(3, 224, 224), num_classes=1000,
                params=7_978_856, family="DenseNet (torchvision)", test_input=(32, 32),
                min_input_size=(32, 32))
def densenet121(num_classes: int = 1000, in_channels: int = 3) -> DenseNet:
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16)."""
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels)
