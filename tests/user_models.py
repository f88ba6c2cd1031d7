"""Networks the zoo does not have, as a user would write them in their own file: each is
exported with `edgecnn export tests/user_models.py:NAME --input-size ... --in-channels ...`
(tests/test_user_models.py). Layers chosen for what the registry's models never use: SiLU and
Hardswish, squeeze-and-excitation, channel shuffle, a 5x5 depthwise convolution, Group-,
Layer- and InstanceNorm, a dilated convolution, PixelShuffle, and two outputs."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedNet(nn.Module):
    """SiLU, Hardswish, SE, channel shuffle, 5x5 depthwise, dilation, the three norms."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(width, width, 5, padding=2, groups=width), nn.GroupNorm(4, width),
            nn.Hardswish())
        self.se = SqueezeExcite(width)
        self.grouped = nn.Conv2d(width, width, 1, groups=4)
        self.shuffle = ChannelShuffle(4)
        self.dilated = nn.Sequential(nn.Conv2d(width, width, 3, padding=2, dilation=2),
                                     nn.InstanceNorm2d(width, affine=True), nn.SiLU())
        self.norm = nn.LayerNorm(width)  # over the channels of each pixel, as ConvNeXt does
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.depthwise(self.stem(x)))
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.dilated(self.shuffle(self.grouped(x)))
        return self.head(x.mean((2, 3)))


def mixed_net(num_classes: int = 10, width: int = 16) -> nn.Module:
    return MixedNet(num_classes, width)


class SuperResolution(nn.Module):
    """PixelShuffle upsampling, a dense (segmentation-shaped) output of ``classes`` maps."""

    def __init__(self, classes: int = 4, factor: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, classes * factor ** 2, 3, padding=1))
        self.shuffle = nn.PixelShuffle(factor)
        self.pool = nn.AvgPool2d(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.shuffle(self.body(x)))


class TwoHeads(nn.Module):
    """Class logits and a per-image embedding."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, num_classes)
        self.embedding = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor):
        features = self.features(x)
        return self.classifier(features), self.embedding(features)


def not_a_module() -> str:
    return "a string"


def raises() -> nn.Module:
    raise RuntimeError("the weights server is down")


class BranchesOnValues(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.mean((2, 3)) if y.sum() > 0 else y.amax((2, 3))


class NoOnnxOp(nn.Module):
    """An op the ONNX exporter has no translation for (an SVD)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x).flatten(1)
        return torch.linalg.svd(y.T @ y)[1][None]


class OneImageAtATime(nn.Module):
    """Flattens the whole batch (``view(1, -1)``): runs at batch 1 only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.conv(x).view(1, -1))


class ImageAndScale(nn.Module):
    """Two inputs: edgecnn exports models of one image input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, image, scale):
        return self.conv(image).mean((2, 3)) * scale
