"""Network in Network (Lin et al. 2013), the d2l.ai form.

Each NiN block is a k x k convolution followed by two 1x1 convolutions ("mlpconv"), a ReLU after
each. Four blocks (96@11/4, 256@5 p2, 384@3 p1, then num_classes@3 p1) with 3/2 max pooling
between them and dropout before the last; global average pooling of the last block's
num_classes maps gives the logits directly, with no fully connected layer.

Parameter count at the default config (1000 classes, RGB), computed from the layers (the
chapters give none): block 1 53,568 + block 2 746,240 + block 3 1,180,800 + block 4 5,459,000
= 7,439,608; the last block (384 -> 1000 @3x3, then 1000 x 1000 twice) is 73% of it.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecnn.models._registry import register_model
from edgecnn.models._layers import init_like_torchvision


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(inplace=True),
    )


class NiN(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nin_block(96, 256, kernel_size=5, stride=1, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nin_block(256, 384, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Dropout(p=dropout),
            nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


@register_model(task="classification", input_size=(3, 224, 224), num_classes=1000,
                params=7_439_608, family="Network in Network (d2l)", test_input=(67, 67),
                min_input_size=(67, 67))
def nin(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> NiN:
    """Network in Network: mlpconv blocks, global average pooling, no fully connected layer."""
    return NiN(num_classes, in_channels, dropout)
