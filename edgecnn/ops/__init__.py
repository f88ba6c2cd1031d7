"""PyTorch operators the zoo needs beyond torch.nn (the deformable convolution)."""

from edgecnn.ops.deform_conv import (
    DeformConv2d,
    deform_conv2d,
    randomize_offset_predictors,
    uses_deform_conv,
)

__all__ = ["DeformConv2d", "deform_conv2d", "randomize_offset_predictors", "uses_deform_conv"]
