"""AlexNet: torchvision's single-tower variant and the published two-tower network.

``alexnet`` has torchvision's layout and parameter names (64/192/384/256/256 filters, adaptive
average pooling to 6x6, dropout before the first two fully connected layers), so torchvision
checkpoints load with ``strict=True``.

``alexnet_original`` is the network of Krizhevsky et al. 2012 as Caffe's ``bvlc_alexnet``
defines it: 96/256/384/384/256 filters, conv2/4/5 split into two groups (the two GPUs),
local response normalisation after conv1 and conv2, 227x227 input, no adaptive pooling.

Local response normalisation, and the ``alpha`` trap
----------------------------------------------------
PyTorch's ``nn.LocalResponseNorm``, ONNX's ``LRN`` and Caffe all compute

    b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_c'^2) ^ beta

with ``alpha`` divided by the window ``size``. The paper (section 3.3) writes the same formula
*without* the division, with k=2, size=5, alpha=1e-4, beta=0.75. The same "alpha=1e-4" therefore
means a normalisation five times weaker in PyTorch/Caffe than in the paper. By default this
model passes alpha=1e-4 to ``nn.LocalResponseNorm`` (the PyTorch/Caffe convention, what
``bvlc_alexnet`` trained with); ``paper_lrn=True`` passes ``alpha * size`` so the module computes
the paper's formula exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecnn.models._registry import register_model

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def local_response_norm(paper_convention: bool = False) -> nn.LocalResponseNorm:
    """The AlexNet LRN (size 5, alpha 1e-4, beta 0.75, k 2) in the chosen alpha convention."""
    alpha = LRN_ALPHA * LRN_SIZE if paper_convention else LRN_ALPHA
    return nn.LocalResponseNorm(LRN_SIZE, alpha=alpha, beta=LRN_BETA, k=LRN_K)


def classifier_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout -> fc 4096 -> ReLU -> Dropout -> fc 4096 -> ReLU -> fc (torchvision's order)."""
    return nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(in_features, 4096), nn.ReLU(inplace=True),
        nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )


class AlexNet(nn.Module):
    """torchvision's AlexNet ("One weird trick" single-tower variant)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = classifier_head(256 * 6 * 6, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class AlexNetOriginal(nn.Module):
    """The published two-group AlexNet (Caffe ``bvlc_alexnet``), 227x227 input."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                 paper_lrn: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True),  # 55
            local_response_norm(paper_lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),                                        # 27
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2), nn.ReLU(inplace=True),
            local_response_norm(paper_lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),                                        # 13
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                                        # 6
        )
        self.classifier = classifier_head(256 * 6 * 6, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(task="classification", input_size=(3, 224, 224), num_classes=1000,
                params=61_100_840, family="AlexNet (torchvision)", test_input=(63, 63),
                min_input_size=(63, 63))
def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """AlexNet, torchvision layout (adaptive average pooling to 6x6)."""
    return AlexNet(num_classes, in_channels, dropout)


@register_model(task="classification", input_size=(3, 227, 227), num_classes=1000,
                params=60_965_224, family="AlexNet (Krizhevsky 2012 / Caffe)",
                test_input=(227, 227), fixed_input_size=True)
def alexnet_original(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                     paper_lrn: bool = False) -> AlexNetOriginal:
    """AlexNet as published: two groups, LRN, 227x227 (``paper_lrn``: the paper's LRN alpha)."""
    return AlexNetOriginal(num_classes, in_channels, dropout, paper_lrn)
