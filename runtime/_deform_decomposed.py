"""The ``decomposed`` body of ai.edgecnn::DeformConv2d: deformable conv from older ONNX ops only.

Torch-free; the onnx package is passed in (imported lazily by ``edgecnn.runtime.deform``).

Every size comes from the inputs' runtime shapes and every hyper-parameter from the calling
node's attributes (``Constant`` nodes whose value references strides, pads, dilations, group and
offset_group), so one body serves every call site, any batch and any input size. The ops are
Shape, Gather, Reshape, Range, CastLike, arithmetic, Concat, Squeeze/Unsqueeze, GridSample,
MatMul and Identity (no DeformConv, no If): all run in onnxruntime 1.17 and have TensorRT 8.6
importers (GridSample since TensorRT 8.6).

The computation, per (image, offset group) plane:

1. Sampling positions in input pixels, ``out * stride - pad + tap * dilation + offset``, for
   every tap and output position, normalised for GridSample (``align_corners=0``:
   ``(2 * p + 1) / size - 1``, valid for any size, 1 included).
2. GridSample (bilinear, zero padding: ONNX DeformConv's sampling) of the plane's channels at
   those positions gives the deformed im2col (N * G, C / G, kh * kw * out_h, out_w), already in
   the channel-major order of the conv weights; the DCNv2 mask multiplies it.
3. One MatMul per conv group applies the kernel, giving NCHW directly; then the bias.
"""

from __future__ import annotations

GRID_SAMPLE_LINEAR = {16: "bilinear", 20: "linear"}  # the mode's name changed in opset 20


class _Body:
    """Appends nodes to a function body with generated value names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes = []

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        output = f"t{len(self.nodes)}_{op_type}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (a tensor attribute: onnx 1.15's function shape inference, as
        in onnxruntime 1.17, does not see the shape of a ``value_ints`` constant)."""
        tensor = self.helper.make_tensor("value", self.onnx.TensorProto.INT64, [len(values)], values)
        return self.op("Constant", value=tensor)

    def floating(self, value: float) -> str:
        """A scalar of X's floating-point type."""
        return self.op("CastLike", self.op("Constant", value_float=value), "X")

    def attribute(self, name: str, attribute_type) -> str:
        """A 1-D int64 constant holding the calling node's attribute ``name``."""
        value_name = "value_ints" if attribute_type == self.onnx.AttributeProto.INTS else "value_int"
        reference = self.helper.make_attribute_ref(value_name, attribute_type, ref_attr_name=name)
        output = f"t{len(self.nodes)}_{name}"
        node = self.helper.make_node("Constant", [], [output])
        node.attribute.append(reference)
        self.nodes.append(node)
        if attribute_type == self.onnx.AttributeProto.INT:
            return self.op("Reshape", output, self.ints(1))
        return output

    def dims(self, tensor: str, *indices: int) -> list[str]:
        """Dimensions of ``tensor`` as 1-D int64 tensors of one element."""
        shape = self.op("Shape", tensor)
        return [self.op("Gather", shape, self.ints(index)) for index in indices]

    def element(self, vector: str, index: int) -> str:
        return self.op("Gather", vector, self.ints(index))

    def shape(self, *parts: str) -> str:
        return self.op("Concat", *parts, axis=0)

    def range(self, count: str) -> str:
        zero, one = (self.op("Constant", value_int=v) for v in (0, 1))
        return self.op("Range", zero, self.op("Squeeze", count, self.ints(0)), one)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", a, b)

    def div(self, a: str, b: str) -> str:
        return self.op("Div", a, b)


def _normalized_positions(body: _Body, axis: int, kernel: str, out: str, size: str,
                          strides: str, pads: str, dilations: str, offsets: str) -> str:
    """GridSample coordinates (N, G, kh, kw, out_h, out_w) along one spatial axis (0: y, 1: x)."""
    one = body.ints(1)
    taps = body.sub(body.mul(body.range(kernel), body.element(dilations, axis)),
                    body.element(pads, axis))
    outs = body.mul(body.range(out), body.element(strides, axis))
    # (kh, 1, out_h, 1) for y, (1, kw, 1, out_w) for x: broadcast against the offsets.
    tap_shape = body.shape(kernel, one, one, one) if axis == 0 else body.shape(one, kernel, one, one)
    out_shape = body.shape(one, one, out, one) if axis == 0 else body.shape(one, one, one, out)
    base = body.add(body.op("Reshape", taps, tap_shape), body.op("Reshape", outs, out_shape))
    position = body.add(body.op("Gather", offsets, body.op("Constant", value_int=axis), axis=4),
                        body.op("CastLike", base, "X"))
    doubled = body.add(body.mul(position, body.floating(2.0)), body.floating(1.0))
    return body.sub(body.div(doubled, body.op("CastLike", size, "X")), body.floating(1.0))


def build_decomposed_body(onnx, *, modulated: bool, with_bias: bool, opset: int) -> list:
    """Nodes computing ``Y`` from ``X, W, offset[, B][, mask]`` (function input names)."""
    body = _Body(onnx)
    ints_type, int_type = onnx.AttributeProto.INTS, onnx.AttributeProto.INT
    channels, height, width = body.dims("X", 1, 2, 3)
    out_channels, group_channels, kernel_h, kernel_w = body.dims("W", 0, 1, 2, 3)
    out_h, out_w = body.dims("offset", 2, 3)
    strides, pads, dilations = (body.attribute(name, ints_type)
                                for name in ("strides", "pads", "dilations"))
    groups = body.attribute("group", int_type)
    offset_groups = body.attribute("offset_group", int_type)
    taps = body.mul(kernel_h, kernel_w)
    positions = body.mul(out_h, out_w)
    plane_channels = body.div(channels, offset_groups)
    keep, rest = body.ints(0), body.ints(-1)  # Reshape: copy the dimension / infer it

    # 1. Normalised sampling positions, as GridSample's (N * G, kh * kw * out_h, out_w, 2) grid.
    offsets = body.op("Reshape", "offset", body.shape(
        keep, offset_groups, kernel_h, kernel_w, body.ints(2), out_h, out_w))
    common = dict(strides=strides, pads=pads, dilations=dilations, offsets=offsets)
    grid_y = _normalized_positions(body, 0, kernel_h, out_h, height, **common)
    grid_x = _normalized_positions(body, 1, kernel_w, out_w, width, **common)
    grid = body.op("Concat", *(body.op("Unsqueeze", g, body.ints(-1)) for g in (grid_x, grid_y)),
                   axis=-1)
    grid = body.op("Reshape", grid, body.shape(rest, body.mul(taps, out_h), out_w, body.ints(2)))

    # 2. The deformed im2col of each plane, then the mask.
    planes = body.op("Reshape", "X", body.shape(rest, plane_channels, height, width))
    mode = GRID_SAMPLE_LINEAR[20 if opset >= 20 else 16]
    columns = body.op("GridSample", planes, grid, align_corners=0, mode=mode,
                      padding_mode="zeros")
    if modulated:
        columns = body.op("Reshape", columns, body.shape(
            rest, offset_groups, plane_channels, taps, positions))
        mask = body.op("Reshape", "mask", body.shape(keep, offset_groups, body.ints(1), taps,
                                                     positions))
        columns = body.mul(columns, mask)
    columns = body.op("Reshape", columns, body.shape(
        rest, groups, body.mul(group_channels, taps), positions))

    # 3. (groups, O / groups, C / groups * kh * kw) @ columns -> (N, groups, O / groups, L).
    kernel = body.op("Reshape", "W", body.shape(
        groups, body.div(out_channels, groups), body.mul(group_channels, taps)))
    output = body.op("Reshape", body.op("MatMul", kernel, columns),
                     body.shape(rest, out_channels, out_h, out_w))
    if with_bias:
        output = body.add(output, body.op("Reshape", "B", body.ints(1, -1, 1, 1)))
    body.nodes.append(onnx.helper.make_node("Identity", [output], ["Y"]))
    return body.nodes
