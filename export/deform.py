"""torch -> ONNX for the deformable conv: ``edgecnn::deform_conv2d`` -> ai.edgecnn::DeformConv2d.

``TRANSLATION_TABLE`` is the ``custom_translation_table`` entry for torch.onnx's dynamo exporter:
each ``torch.ops.edgecnn.deform_conv2d`` node becomes ONE ``DeformConv2d`` node of domain
``ai.edgecnn`` (inputs X, W, offset, B?, mask?; attributes strides, pads, dilations, group,
offset_group). The FunctionProto that makes it runnable is attached afterwards by
``edgecnn.runtime.deform.set_deform_lowering`` (see ``to_onnx``).
"""

from __future__ import annotations

import onnxscript
import torch

import edgecnn.ops.deform_conv  # noqa: F401  (registers torch.ops.edgecnn.deform_conv2d)
from edgecnn.runtime.deform import DOMAIN, OP_TYPE, VERSION, register_schema

register_schema()  # onnxscript looks the op's schema up when the translation calls it
_EDGECNN_OPSET = onnxscript.values.Opset(DOMAIN, VERSION)


def deform_conv2d_to_onnx(input, weight, offset, bias, mask, stride, padding, dilation,
                          groups: int, offset_groups: int):
    """The translation of one ``edgecnn::deform_conv2d`` call (torch.onnx passes the op's args)."""
    return getattr(_EDGECNN_OPSET, OP_TYPE)(
        input, weight, offset, bias, mask,
        strides=[int(v) for v in stride], pads=[int(v) for v in padding] * 2,
        dilations=[int(v) for v in dilation], group=int(groups), offset_group=int(offset_groups))


TRANSLATION_TABLE = {torch.ops.edgecnn.deform_conv2d.default: deform_conv2d_to_onnx}
