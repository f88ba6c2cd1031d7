"""FCN-8s semantic segmentation (Long et al. 2015) on a ResNet-18 backbone.

The backbone's stage outputs at strides 8, 16 and 32 (``ResNet.features``) each get a 1x1
"score" convolution to ``num_classes`` maps. The stride-32 scores are upsampled x2 and added to
the stride-16 scores, that sum upsampled x2 and added to the stride-8 scores, and the result
upsampled x8 to the input size: output ``masks`` N x classes x H x W for any H, W >= 32.

``upsample`` chooses how:

- ``"transposed"`` (default, as in the paper): ``ConvTranspose2d`` with kernel 2f, stride f,
  padding f/2, no bias, initialised to bilinear interpolation on the class diagonal (learnable).
  Its output is exactly f times the input size, which the crop to the skip's (or the input's)
  size trims when an odd size was rounded up on the way down. Inside the image it equals
  bilinear resizing with ``align_corners=False``; at the border it fades to zero (zero padding).
- ``"bilinear"``: ``F.interpolate(mode="bilinear", align_corners=False)`` (ONNX Resize linear,
  half_pixel), no parameters.
- ``"nearest"``: ``F.interpolate(mode="nearest")`` (ONNX Resize nearest, asymmetric/floor).

Parameter count (the chapters give none): ResNet-18 without its classifier 11,176,512 + score
convolutions 18,879 + transposed convolutions 127,008 (2 x 21x21x4x4 + 21x21x16x16) =
11,322,399 by default; 11,195,391 with ``bilinear`` or ``nearest``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.errors import BadInput
from edgecnn.models._registry import register_model
from edgecnn.models.resnet import BasicBlock, ResNet

UPSAMPLE_MODES = ("transposed", "bilinear", "nearest")


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The (2f, 2f) bilinear interpolation kernel of an upsampling by ``factor`` (FCN's filler)."""
    center = factor - 0.5
    taps = 1 - (torch.arange(2 * factor, dtype=torch.float32) - center).abs() / factor
    return taps[:, None] * taps[None, :]


def bilinear_conv_transpose(channels: int, factor: int) -> nn.ConvTranspose2d:
    """ConvTranspose2d upsampling each channel by ``factor``, initialised to bilinear."""
    layer = nn.ConvTranspose2d(channels, channels, kernel_size=2 * factor, stride=factor,
                               padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        for channel in range(channels):
            layer.weight[channel, channel] = bilinear_kernel(factor)
    return layer


class Upsample(nn.Module):
    """Upsample to a given size: a cropped bilinear-initialised ConvTranspose2d, or a Resize."""

    def __init__(self, channels: int, factor: int, mode: str):
        super().__init__()
        self.mode = mode
        self.deconv = bilinear_conv_transpose(channels, factor) if mode == "transposed" else None

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.deconv is not None:
            return self.deconv(x)[:, :, :size[0], :size[1]]
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")


class FCN8s(nn.Module):
    def __init__(self, num_classes: int = 21, in_channels: int = 3, upsample: str = "transposed"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise BadInput(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        self.backbone = ResNet(BasicBlock, (2, 2, 2, 2), in_channels=in_channels)
        del self.backbone.avgpool, self.backbone.fc  # only the stage outputs are used
        self.score_pool3 = nn.Conv2d(128, num_classes, kernel_size=1)  # stride 8
        self.score_pool4 = nn.Conv2d(256, num_classes, kernel_size=1)  # stride 16
        self.score_fr = nn.Conv2d(512, num_classes, kernel_size=1)     # stride 32
        self.upscore2 = Upsample(num_classes, 2, upsample)
        self.upscore_pool4 = Upsample(num_classes, 2, upsample)
        self.upscore8 = Upsample(num_classes, 8, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, stride8, stride16, stride32 = self.backbone.features(x)
        score = self.score_fr(stride32)
        score = self.upscore2(score, stride16.shape[-2:]) + self.score_pool4(stride16)
        score = self.upscore_pool4(score, stride8.shape[-2:]) + self.score_pool3(stride8)
        return self.upscore8(score, x.shape[-2:])


@register_model(task="segmentation", input_size=(3, 224, 224), num_classes=21,
                params=11_322_399, family="FCN-8s (ResNet-18 backbone)", test_input=(72, 56),
                min_input_size=(32, 32))
def fcn_resnet18(num_classes: int = 21, in_channels: int = 3,
                 upsample: str = "transposed") -> FCN8s:
    """FCN-8s on ResNet-18; upsample = transposed (bilinear init) | bilinear | nearest."""
    return FCN8s(num_classes, in_channels, upsample)
