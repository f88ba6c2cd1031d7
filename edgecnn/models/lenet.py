"""LeNet for 28x28 grey digits, in the two forms the chapters use.

- ``lenet``: the d2l.ai form of LeCun et al. 1998: sigmoid activations, average pooling, 2-pixel
  padding on the first convolution so a 28x28 MNIST image plays the role of the paper's 32x32.
- ``lenet5``: the Caffe MNIST example ("LeNet-5" in Caffe's model zoo): 20 and 50 filters, max
  pooling, no activation after the convolutions, one ReLU between the two fully connected layers.

Both end in a Linear layer fed by a fixed-size Flatten, so they only work at 28x28.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecnn.models._layers import GREY_28, MNIST_MEAN, MNIST_STD, init_xavier_uniform
from edgecnn.models._registry import register_model

class LeNet(nn.Module):
    """conv 6@5x5 p2 -> sigmoid -> avgpool 2 -> conv 16@5x5 -> sigmoid -> avgpool 2 -> 120 -> 84."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
            nn.Linear(120, 84), nn.Sigmoid(),
            nn.Linear(84, num_classes),
        )
        init_xavier_uniform(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet5(nn.Module):
    """conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> fc 500 -> ReLU -> fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(50 * 4 * 4, 500), nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(params=61_706, family="LeNet (d2l)", mean=MNIST_MEAN, std=MNIST_STD, **GREY_28)
def lenet(num_classes: int = 10, in_channels: int = 1) -> LeNet:
    """LeNet (d2l form): sigmoid, average pooling, 28x28 grey input."""
    return LeNet(num_classes, in_channels)


@register_model(params=431_080, family="LeNet-5 (Caffe)", mean=MNIST_MEAN, std=MNIST_STD,
                **GREY_28)
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5 (Caffe MNIST example): max pooling, ReLU between the fully connected layers."""
    return LeNet5(num_classes, in_channels)
