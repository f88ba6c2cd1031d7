"""Deformable convolution v1/v2 in pure PyTorch: the torch.library op ``edgecnn::deform_conv2d``.

``deform_conv2d`` has torchvision's signature and semantics: every output position (i, j) and
kernel tap (ki, kj) samples the input at

    y = i * stride_h - pad_h + ki * dilation_h + offset_dy
    x = j * stride_w - pad_w + kj * dilation_w + offset_dx

with bilinear interpolation and zeros outside the image, optionally scaled by ``mask`` (DCNv2),
and the samples are reduced with ``weight`` like an ordinary (grouped) convolution.

The computation is vectorised over batch, offset groups, taps and positions: ``embedding_bag``
adds up the four bilinear corners, read from a zero-bordered channels-last copy of the input
(positions are clamped into that border first, so far out-of-range samples read zeros without
any masking), and one batched matmul applies the weights. Positions are computed in input
pixels exactly as onnxruntime's DeformConv kernel does, so eager and ONNX agree to rounding.

The op is opaque to torch.export (a fake kernel gives its output shape), so an exported
program shows ONE ``edgecnn.deform_conv2d`` node; ``edgecnn.export.deform`` turns it into ONE
``ai.edgecnn::DeformConv2d`` ONNX node. Its backward recomputes the pure-PyTorch forward under
autograd (first-order gradients for input, offset, weight, bias and mask).

``deform_conv2d`` and ``DeformConv2d`` also work under ``torch.jit.script`` (the op is called as
``torch.ops.edgecnn.deform_conv2d``, so scripted modules save and load) and
``torch.fx.symbolic_trace`` (like torch.nn.functional, ``deform_conv2d`` dispatches on
``__torch_function__``, so it is ONE ``call_function`` node whose target is ``deform_conv2d``).
The shape checks run in the op's kernels (real and fake), so they apply under script, to a
traced GraphModule when it runs and under torch.export alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_variadic

# An int or an (h, w) pair, spelled with the typing module so that TorchScript reads it.
IntPair = Union[int, List[int], Tuple[int, int]]

# Zero border added around the input: 1 row/column before, 2 after. Positions clamped to
# [-1, size] then read only zeros outside the image, exactly like bilinear zero padding.
_BORDER_BEFORE, _BORDER_AFTER = 1, 2


def _checked_pair(value, name: str) -> List[int]:
    pair = [value, value] if isinstance(value, int) else (
        list(value) if isinstance(value, Sequence) else [])
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _pair(value: IntPair, name: str) -> List[int]:
    """[h, w] from an int or a pair. Scriptable; under script the op's kernel checks the length."""
    if not torch.jit.is_scripting():
        return _checked_pair(value, name)
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, list):
        return value
    return [value[0], value[1]]


def output_size(in_size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution (the same formula as nn.Conv2d)."""
    return (in_size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _groups_from_shapes(input: Tensor, offset: Tensor, weight: Tensor) -> Tuple[int, int]:
    """(groups, offset_groups) as the shapes give them (scriptable); 0 where a shape is too
    broken to tell, and _check_arguments then names the problem."""
    taps = weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 0
    if input.dim() != 4 or offset.dim() != 4 or taps < 1 or weight.shape[1] < 1:
        return 0, 0
    return input.shape[1] // weight.shape[1], offset.shape[1] // (2 * taps)


def _offset_error(offset: Tensor, batch: int, channels: int, kernel: tuple[int, int],
                  out_size: tuple[int, int], options: str) -> ValueError:
    """The offset shapes that would fit, one per offset_groups dividing the input channels."""
    (kernel_h, kernel_w), taps = kernel, kernel[0] * kernel[1]
    valid = ", ".join(str((batch, 2 * groups * taps, *out_size))
                      for groups in range(1, channels + 1) if channels % groups == 0)
    given = offset.shape[1]
    why = (f"offset_groups {given // (2 * taps)}" if given % (2 * taps) == 0 else
           f"{given} channels, not a multiple of 2*{kernel_h}*{kernel_w} = {2 * taps}")
    return ValueError(
        f"deform_conv2d: offset must have shape (N, 2*offset_groups*{kernel_h}*{kernel_w}, "
        f"{out_size[0]}, {out_size[1]}) with offset_groups dividing the {channels} input "
        f"channels: one of {valid} ({options}); got {tuple(offset.shape)} ({why})")


def _check_arguments(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                     mask: Tensor | None, stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int], groups: int, offset_groups: int) -> None:
    """Validate shapes, dtypes, devices and options (the op's kernels run this, so it also runs
    under TorchScript, FX and torch.export); groups and offset_groups must match the shapes."""
    named = {"input": input, "offset": offset, "weight": weight, "bias": bias, "mask": mask}
    for name, tensor in named.items():
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f"deform_conv2d: {name} must be a floating-point tensor, got {tensor.dtype}")
    present = {name: tensor for name, tensor in named.items() if tensor is not None}
    tensors = present.values()
    if len({t.dtype for t in tensors}) > 1 or len({t.device for t in tensors}) > 1:
        got = ", ".join(f"{name} {t.dtype} on {t.device}" for name, t in present.items())
        raise ValueError(f"deform_conv2d: {', '.join(present)} must share one dtype and device, "
                         f"got {got}")
    for name in ("input", "offset", "weight", "mask"):
        if named[name] is not None and named[name].dim() != 4:
            raise ValueError(f"deform_conv2d: {name} must be 4-D, got shape {tuple(named[name].shape)}")
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if (not len(stride) == len(padding) == len(dilation) == 2 or min(stride) < 1
            or min(dilation) < 1 or min(padding) < 0):
        raise ValueError(f"deform_conv2d: stride, padding and dilation must be pairs, stride and "
                         f"dilation >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}, dilation={dilation}")
    batch, channels, height, width = input.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    if group_channels < 1 or channels % group_channels:
        raise ValueError(f"deform_conv2d: input channels ({channels}) must be divisible by "
                         f"weight.shape[1] ({group_channels}), the channels per group")
    shape_groups = channels // group_channels
    if out_channels % shape_groups:
        raise ValueError(f"deform_conv2d: output channels ({out_channels}) must be divisible by "
                         f"groups ({shape_groups})")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"deform_conv2d: bias must have shape ({out_channels},), "
                         f"got {tuple(bias.shape)}")
    taps = kernel_h * kernel_w
    out_h = output_size(height, kernel_h, stride[0], padding[0], dilation[0])
    out_w = output_size(width, kernel_w, stride[1], padding[1], dilation[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"deform_conv2d: input {height}x{width} is too small for a "
                         f"{kernel_h}x{kernel_w} kernel with padding {padding} and dilation {dilation}")
    shape_offset_groups = offset.shape[1] // (2 * taps)
    if (shape_offset_groups < 1 or offset.shape[1] % (2 * taps) or channels % shape_offset_groups
            or tuple(offset.shape) != (batch, offset.shape[1], out_h, out_w)):
        raise _offset_error(offset, batch, channels, (kernel_h, kernel_w), (out_h, out_w),
                            f"kernel {kernel_h}x{kernel_w}, stride {stride}, padding {padding}, "
                            f"dilation {dilation}")
    expected = (batch, shape_offset_groups * taps, out_h, out_w)
    if mask is not None and tuple(mask.shape) != expected:
        raise ValueError(f"deform_conv2d: mask must have shape (N, offset_groups*{kernel_h}*"
                         f"{kernel_w}, {out_h}, {out_w}) = {expected} with the offset's "
                         f"offset_groups {shape_offset_groups}, got {tuple(mask.shape)}")
    if (groups, offset_groups) != (shape_groups, shape_offset_groups):
        raise ValueError(f"deform_conv2d: groups={groups} and offset_groups={offset_groups} "
                         f"disagree with the shapes, which give groups={shape_groups} and "
                         f"offset_groups={shape_offset_groups}")


def _sampling_columns(input: Tensor, offset: Tensor, mask: Tensor | None,
                      kernel: tuple[int, int], stride: Sequence[int], padding: Sequence[int],
                      dilation: Sequence[int], offset_groups: int) -> Tensor:
    """The deformed im2col, channels-last: (N, out_h * out_w, kh * kw, C)."""
    batch, channels, height, width = input.shape
    kernel_h, kernel_w = kernel
    taps, out_h, out_w = kernel_h * kernel_w, offset.shape[2], offset.shape[3]
    positions = out_h * out_w
    arange = dict(device=input.device, dtype=torch.int64)

    # Integer part of each sampling position: output position * stride - pad + tap * dilation.
    tap_y = (torch.arange(kernel_h, **arange) * dilation[0] - padding[0]).repeat_interleave(kernel_w)
    tap_x = (torch.arange(kernel_w, **arange) * dilation[1] - padding[1]).repeat(kernel_h)
    out_y = (torch.arange(out_h, **arange) * stride[0]).repeat_interleave(out_w)
    out_x = (torch.arange(out_w, **arange) * stride[1]).repeat(out_h)
    offset = offset.reshape(batch, offset_groups, taps, 2, positions)
    y = offset[:, :, :, 0] + (tap_y[:, None] + out_y[None, :]).to(input.dtype)  # (N, G, K, L)
    x = offset[:, :, :, 1] + (tap_x[:, None] + out_x[None, :]).to(input.dtype)
    # A NaN position reads zeros, like a far one (and onnxruntime's DeformConv): clamp keeps NaN.
    y = torch.nan_to_num(y, nan=-1.0).clamp(-1, height)
    x = torch.nan_to_num(x, nan=-1.0).clamp(-1, width)
    y_low, x_low = y.floor(), x.floor()
    frac_y, frac_x = y - y_low, x - x_low
    keep_y, keep_x = 1 - frac_y, 1 - frac_x
    weights = torch.stack([keep_y * keep_x, keep_y * frac_x, frac_y * keep_x, frac_y * frac_x], -1)
    if mask is not None:
        weights = weights * mask.reshape(batch, offset_groups, taps, positions, 1)

    # The bordered input as a table of rows: one row = the C/G channels of one pixel of one
    # (image, offset group) plane.
    padded_h = height + _BORDER_BEFORE + _BORDER_AFTER
    padded_w = width + _BORDER_BEFORE + _BORDER_AFTER
    padded = F.pad(input, (_BORDER_BEFORE, _BORDER_AFTER, _BORDER_BEFORE, _BORDER_AFTER))
    table = padded.view(batch, offset_groups, channels // offset_groups, padded_h, padded_w)
    # contiguous: reshape may return a strided view here, and embedding_bag reads strided
    # rows about 15x slower.
    table = table.permute(0, 1, 3, 4, 2).contiguous().view(-1, channels // offset_groups)
    plane = torch.arange(batch * offset_groups, **arange).view(batch, offset_groups, 1, 1)
    top_left = ((y_low.long() + _BORDER_BEFORE) * padded_w + x_low.long() + _BORDER_BEFORE
                + plane * (padded_h * padded_w))
    corners = torch.stack([top_left, top_left + 1, top_left + padded_w,
                           top_left + padded_w + 1], -1)
    # One bag per (image, position, tap, offset group): embedding_bag adds the four corner rows
    # weighted by the bilinear weights, in one fused (and differentiable) kernel.
    order = (0, 3, 2, 1, 4)  # (N, G, K, L, 4) -> (N, L, K, G, 4)
    columns = F.embedding_bag(corners.permute(order).reshape(-1, 4), table, mode="sum",
                              per_sample_weights=weights.permute(order).reshape(-1, 4))
    return columns.view(batch, positions, taps, channels)


def _deform_conv2d_math(input: Tensor, weight: Tensor, offset: Tensor, bias: Tensor | None,
                        mask: Tensor | None, stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int], groups: int, offset_groups: int) -> Tensor:
    """The forward computation in differentiable PyTorch ops (no validation)."""
    batch = input.shape[0]
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[2], offset.shape[3]
    taps, group_out = kernel_h * kernel_w, out_channels // groups
    columns = _sampling_columns(input, offset, mask, (kernel_h, kernel_w), stride, padding,
                                dilation, offset_groups)
    # (N, groups, L, K * C/groups) @ (groups, K * C/groups, O/groups): a copy only if groups > 1.
    columns = columns.view(batch, out_h * out_w, taps, groups, group_channels)
    columns = columns.permute(0, 3, 1, 2, 4).reshape(batch, groups, out_h * out_w,
                                                     taps * group_channels)
    kernels = weight.reshape(groups, group_out, group_channels, taps).permute(0, 3, 2, 1)
    out = torch.matmul(columns, kernels.reshape(groups, taps * group_channels, group_out))
    out = out.transpose(2, 3).reshape(batch, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, out_channels, 1, 1)


@torch.library.custom_op("edgecnn::deform_conv2d", mutates_args=())
def _deform_conv2d_op(input: Tensor, weight: Tensor, offset: Tensor, bias: Tensor | None,
                      mask: Tensor | None, stride: Sequence[int], padding: Sequence[int],
                      dilation: Sequence[int], groups: int, offset_groups: int) -> Tensor:
    _check_arguments(input, offset, weight, bias, mask, stride, padding, dilation, groups,
                     offset_groups)
    return _deform_conv2d_math(input, weight, offset, bias, mask, stride, padding, dilation,
                               groups, offset_groups)


@_deform_conv2d_op.register_fake
def _deform_conv2d_fake(input, weight, offset, bias, mask, stride, padding, dilation, groups,
                        offset_groups):
    _check_arguments(input, offset, weight, bias, mask, stride, padding, dilation, groups,
                     offset_groups)
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:5])
    ctx.options = inputs[5:]


def _backward(ctx, grad_output: Tensor):
    """Recompute the forward under autograd and differentiate it (first-order gradients)."""
    saved = ctx.saved_tensors
    wanted = [t is not None and need for t, need in zip(saved, ctx.needs_input_grad[:5])]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(want) if t is not None else None
                  for t, want in zip(saved, wanted)]
        out = _deform_conv2d_math(*leaves, *ctx.options)
        sources = [leaf for leaf, want in zip(leaves, wanted) if want]
        grads = iter(torch.autograd.grad(out, sources, grad_output, allow_unused=True)
                     if sources else ())
    return (*(next(grads) if want else None for want in wanted), None, None, None, None, None)


_deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  mask: Optional[Tensor] = None) -> Tensor:
    """Deformable convolution (DCN v1; v2 with ``mask``), torchvision's signature and semantics.

    Args:
        input: (N, C, H, W).
        offset: (N, 2 * offset_groups * kh * kw, out_h, out_w): a (dy, dx) pair per kernel tap,
            taps row-major, grouped by offset group; offset_groups is inferred from the shape.
        weight: (out_channels, C / groups, kh, kw); groups is inferred as C // weight.shape[1].
        bias: (out_channels,) or None.
        stride, padding, dilation: an int or an (h, w) pair (tuple or list).
        mask: (N, offset_groups * kh * kw, out_h, out_w) modulation (DCNv2) or None.

    Raises ValueError for inconsistent shapes (naming the expected shape) or tensors of
    different dtypes or devices, and TypeError for non-floating-point tensors (under
    TorchScript they surface as RuntimeError carrying the same message).

    Works under ``torch.jit.script`` and, through ``__torch_function__`` like torch.nn.functional,
    under ``torch.fx.symbolic_trace``: a traced call is ONE ``call_function`` node with this
    function as its target, and its arguments are checked when the GraphModule runs.
    """
    if not torch.jit.is_scripting():
        if has_torch_function_variadic(input, offset, weight, bias, mask):
            return handle_torch_function(
                deform_conv2d, (input, offset, weight, bias, mask), input, offset, weight,
                bias=bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    # The op's kernels validate everything, groups and offset_groups included.
    groups, offset_groups = _groups_from_shapes(input, offset, weight)
    return torch.ops.edgecnn.deform_conv2d(
        input, weight, offset, bias, mask, _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(dilation, "dilation"), groups, offset_groups)


class DeformConv2d(nn.Module):
    """A deformable convolution that predicts its own offsets (and mask when ``modulated``).

    ``weight`` and ``bias`` are named and shaped like nn.Conv2d's, so the 3x3 convolution of a
    plain checkpoint loads into it. ``conv_offset`` (same kernel, stride, padding and dilation)
    predicts 2 * offset_groups * kh * kw offsets, plus offset_groups * kh * kw mask logits when
    ``modulated``; it is zero-initialised, so at initialisation every offset is 0 and the module
    computes exactly the plain convolution.

    The DCNv2 mask is ``2 * sigmoid(logits)``: 1 at the zero initialisation (the plain
    convolution again) and within (0, 2). The paper's ``sigmoid`` would start at 0.5 and halve
    the output of every converted layer, so a plain checkpoint would no longer reproduce the
    plain network.

    The module scripts (``torch.jit.script``, and saves and loads) and traces with
    ``torch.fx.symbolic_trace`` (its ``deform_conv2d`` call is one node).
    """

    # State the checkpoint of a plain network does not have: edgecnn's load_weights lets a
    # checkpoint leave these out, and they keep their (zero) initialisation.
    optional_state_keys = ("conv_offset.weight", "conv_offset.bias")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, offset_groups: int = 1, bias: bool = True,
                 modulated: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if in_channels % offset_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by offset_groups "
                             f"({offset_groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(_pair(kernel_size, "kernel_size"))
        self.stride = tuple(_pair(stride, "stride"))
        self.padding = tuple(_pair(padding, "padding"))
        self.dilation = tuple(_pair(dilation, "dilation"))
        self.groups, self.offset_groups, self.modulated = groups, offset_groups, modulated
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, offset_groups * taps * (3 if modulated else 2),
                                     self.kernel_size, self.stride, self.padding, self.dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation for weight/bias; zeros for the offset (mask) predictor."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.reset_offset_predictor()

    @torch.no_grad()
    def reset_offset_predictor(self) -> None:
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offsets_and_mask(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        predicted = self.conv_offset(x)
        if not self.modulated:
            return predicted, None
        split = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return predicted[:, :split], 2 * torch.sigmoid(predicted[:, split:])

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, offset_groups={self.offset_groups}, "
                f"bias={self.bias is not None}, modulated={self.modulated}")


@torch.no_grad()
def randomize_offset_predictors(model: nn.Module, seed: int = 0, pixels: float = 1.0,
                                slope: float = 0.02) -> nn.Module:
    """Give every DeformConv2d's offset (and mask) predictor random weights.

    The zero initialisation makes a deformable conv a plain conv, which would let a broken
    deformable export pass a parity check. The predictor's bias gets N(0, ``pixels``) (offsets
    of about a pixel: fractional, and outside small feature maps), its weights
    N(0, ``slope`` / sqrt(fan_in)), so offsets also vary with position and input. The input
    dependence is kept small on purpose: offsets that follow activations closely make a deep
    random network chaotic (with unit-scale weights resnet50_dcnv2's float32 and float64
    eager outputs differ by 2.6%), and a parity check would then measure the chaos.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, DeformConv2d):
            predictor = module.conv_offset
            fan_in = predictor.weight[0].numel()
            predictor.weight.copy_(torch.randn(predictor.weight.shape, generator=generator)
                                   * (slope / math.sqrt(fan_in)))
            predictor.bias.copy_(torch.randn(predictor.bias.shape, generator=generator) * pixels)
    return model


def uses_deform_conv(model: nn.Module) -> bool:
    """Whether ``model`` contains a DeformConv2d (its export needs the custom op)."""
    return any(isinstance(module, DeformConv2d) for module in model.modules())
