"""One-node ONNX models around the deformable conv, and random cases with their eager result.

``Case`` holds numpy inputs and the conv hyper-parameters; ``eager(case)`` is what
``edgecnn.ops.deform_conv2d`` computes; ``standard_model`` wraps ONNX's own DeformConv (opset 19)
and ``custom_model`` our ai.edgecnn::DeformConv2d with a given lowering (``bare_model``: none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from edgecnn.runtime.onnx_file import set_minimal_ir_version
from edgecnn.ops import deform_conv2d
from edgecnn.ops.deform_conv import output_size
from edgecnn.runtime import deform


@dataclass
class Case:
    x: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    bias: np.ndarray | None = None
    mask: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def groups(self) -> int:
        return self.x.shape[1] // self.weight.shape[1]

    @property
    def offset_groups(self) -> int:
        kernel = self.weight.shape[2] * self.weight.shape[3]
        return self.offset.shape[1] // (2 * kernel)

    def attributes(self) -> dict:
        return dict(strides=list(self.stride), pads=list(self.padding) * 2,
                    dilations=list(self.dilation), group=self.groups,
                    offset_group=self.offset_groups)

    def feeds(self) -> dict:
        named = {"X": self.x, "W": self.weight, "offset": self.offset, "B": self.bias,
                 "mask": self.mask}
        return {name: value for name, value in named.items() if value is not None}


def random_case(rng: np.random.Generator, *, batch=2, channels=4, size=(6, 7), out_channels=6,
                kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                offset_groups=1, bias=True, mask=True, offset_scale=2.0, far=True,
                dtype=np.float32) -> Case:
    """Random inputs; offsets N(0, offset_scale) pixels, plus far-out ones when ``far``."""
    out_h, out_w = (output_size(s, k, st, p, d)
                    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))
    taps = kernel[0] * kernel[1]
    offset = rng.standard_normal((batch, 2 * offset_groups * taps, out_h, out_w)) * offset_scale
    if far:
        offset[0, 0, 0, 0], offset[-1, -1, -1, -1], offset[0, 1, -1, 0] = 1e4, -3e3, 57.5
    return Case(
        x=rng.standard_normal((batch, channels, *size)).astype(dtype),
        weight=rng.standard_normal((out_channels, channels // groups, *kernel)).astype(dtype),
        offset=offset.astype(dtype),
        bias=rng.standard_normal(out_channels).astype(dtype) if bias else None,
        mask=rng.uniform(0, 1.5, (batch, offset_groups * taps, out_h, out_w)).astype(dtype)
        if mask else None,
        stride=stride, padding=padding, dilation=dilation)


def eager(case: Case) -> np.ndarray:
    tensor = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    with torch.no_grad():
        return deform_conv2d(tensor(case.x), tensor(case.offset), tensor(case.weight),
                             tensor(case.bias), case.stride, case.padding, case.dilation,
                             tensor(case.mask)).numpy()


def _model(node: onnx.NodeProto, case: Case, opset: int, domains=()) -> onnx.ModelProto:
    feeds = case.feeds()
    # Batch and spatial sizes symbolic: one session runs any size the conv accepts.
    dynamic = {"X": ["N", feeds["X"].shape[1], "H", "W"],
               "offset": ["N", feeds["offset"].shape[1], "out_h", "out_w"],
               "mask": ["N", case.offset_groups * case.weight.shape[2] * case.weight.shape[3],
                        "out_h", "out_w"]}
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                            dynamic.get(name, list(value.shape)))
              for name, value in feeds.items()]
    graph = helper.make_graph([node], "deform", values,
                              [helper.make_tensor_value_info(
                                  "Y", TensorProto.FLOAT,
                                  ["N", case.weight.shape[0], "out_h", "out_w"])])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    set_minimal_ir_version(model)  # onnx's newest IR is newer than older onnxruntimes read
    return model


def _inputs(case: Case) -> list[str]:
    names = ["X", "W", "offset", "B" if case.bias is not None else "",
             "mask" if case.mask is not None else ""]
    while names[-1] == "":
        names.pop()
    return names


def standard_model(case: Case) -> onnx.ModelProto:
    """ONNX's DeformConv (opset 19) on ``case``'s inputs."""
    node = helper.make_node("DeformConv", _inputs(case), ["Y"], **case.attributes())
    return _model(node, case, 19)


def bare_model(case: Case, opset: int) -> onnx.ModelProto:
    """ai.edgecnn::DeformConv2d without a function body, as torch.onnx exports it (not runnable
    until ``deform.set_deform_lowering``)."""
    node = helper.make_node(deform.OP_TYPE, _inputs(case), ["Y"], domain=deform.DOMAIN,
                            **case.attributes())
    return _model(node, case, opset, [deform.DOMAIN])


def custom_model(case: Case, lowering: str, opset: int) -> onnx.ModelProto:
    """ai.edgecnn::DeformConv2d with its function body in ``lowering``."""
    return deform.set_deform_lowering(bare_model(case, opset), lowering)
