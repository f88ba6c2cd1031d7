"""The two Keras book examples for 28x28 grey images, rebuilt in PyTorch.

Keras differences kept on purpose:

- ``padding='same'`` pooling. Keras' ``AveragePooling2D(2, padding='same')`` on a 7x7 map gives
  4x4: the last row/column window holds one pixel and is averaged over that one pixel only
  (TensorFlow never counts padding). PyTorch's ``AvgPool2d(2, ceil_mode=True)`` (padding 0)
  computes exactly that: the window that runs past the edge is divided by the pixels it covers
  (``count_include_pad=False`` makes the exported ONNX ``AveragePool`` say so explicitly).
- BatchNorm ``epsilon=1e-3`` and ``momentum=0.99`` (PyTorch's momentum is ``1 - 0.99``).
- Glorot-uniform kernels and zero biases, Keras' default initialisation.
- The final softmax is left out: the models output logits, like every edgecnn classifier.

Keras flattens NHWC feature maps and PyTorch NCHW ones, so a Keras checkpoint's first dense
kernel needs its rows permuted before it can be loaded here.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecnn.models._registry import register_model
from edgecnn.models._layers import GREY_28, MNIST_MEAN, MNIST_STD, init_xavier_uniform

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

KERAS_BN = dict(eps=1e-3, momentum=0.01)


def conv3x3_same(in_channels: int, out_channels: int) -> nn.Conv2d:
    """Keras ``Conv2D(out, 3, padding='same')``: stride 1, one pixel of zero padding."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class MnistCNN(nn.Module):
    """Conv 16-32-64-64 (3x3 'same' + ReLU), 'same' average pooling 28 -> 14 -> 7 -> 4, fc 1024."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        # Keras padding='same'. With padding 0 PyTorch divides the cut edge window by the pixels
        # it covers either way; count_include_pad=False puts that into the ONNX node too, so no
        # runtime can count the ceil-mode overhang as padding.
        same_pool = dict(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False)
        self.features = nn.Sequential(
            nn.Dropout(0.25),
            conv3x3_same(in_channels, 16), nn.ReLU(inplace=True), nn.Dropout(0.5),
            conv3x3_same(16, 32), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.AvgPool2d(**same_pool),                                   # 28 -> 14
            conv3x3_same(32, 64), nn.ReLU(inplace=True),
            nn.AvgPool2d(**same_pool),                                   # 14 -> 7
            conv3x3_same(64, 64), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.AvgPool2d(**same_pool),                                   # 7 -> 4 (ceil)
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(1024, num_classes),
        )
        init_xavier_uniform(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def conv_bn_leaky(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv3x3_same(in_channels, out_channels),
                         nn.BatchNorm2d(out_channels, **KERAS_BN), nn.LeakyReLU(0.1))


def dense_bn_leaky(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features),
                         nn.BatchNorm1d(out_features, **KERAS_BN), nn.LeakyReLU(0.1))


class FashionCNN(nn.Module):
    """4x [conv 3x3 'same' -> BN -> LeakyReLU .1] -> maxpool 2 -> 2x [fc 1024 -> BN -> LeakyReLU]."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        widths = (in_channels, 32, 64, 128, 128)
        self.features = nn.Sequential(
            *(conv_bn_leaky(c_in, c_out) for c_in, c_out in zip(widths, widths[1:])),
            nn.MaxPool2d(kernel_size=2, stride=2),                       # 28 -> 14
        )
        self.classifier = nn.Sequential(
            dense_bn_leaky(128 * 14 * 14, 1024),
            dense_bn_leaky(1024, 1024),
            nn.Linear(1024, num_classes),
        )
        init_xavier_uniform(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(params=1_120_074, family="Keras MNIST CNN", mean=MNIST_MEAN, std=MNIST_STD,
                **GREY_28)
def mnist_cnn(num_classes: int = 10, in_channels: int = 1) -> MnistCNN:
    """Keras book MNIST CNN: dropout, 'same' (ceil-mode) average pooling, fc 1024."""
    return MnistCNN(num_classes, in_channels)


@register_model(params=26_996_042, family="Keras Fashion-MNIST CNN", mean=FASHION_MNIST_MEAN,
                std=FASHION_MNIST_STD, **GREY_28)
def fashion_cnn(num_classes: int = 10, in_channels: int = 1) -> FashionCNN:
    """Keras book Fashion-MNIST CNN: conv-BN-LeakyReLU x4, maxpool, two BN dense layers."""
    return FashionCNN(num_classes, in_channels)
