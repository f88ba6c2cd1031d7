"""The ``decomposed`` body of ai.edgecnn::DeformConv2d: deformable conv from older ONNX ops only.

Torch-free; the onnx package is passed in (imported lazily by ``edgecnn.runtime.deform``).

Every size comes from the inputs' runtime shapes and every hyper-parameter from the calling
node's attributes (``Constant`` nodes whose value references strides, pads, dilations, group and
offset_group), so one body serves every call site, any batch and any input size. The ops are
Shape, Gather, Reshape, Slice, Range, Cast/CastLike, arithmetic, Abs, Min/Max, Equal, Where,
Concat, Squeeze/Unsqueeze, GridSample and MatMul (no DeformConv, no If, no IsNaN): all run in
onnxruntime 1.17 and have TensorRT 8.6 importers (GridSample since TensorRT 8.6).

The computation, per (image, offset group) plane:

0. The output size from X, W and the attributes, checked against the offset's (and mask's).
1. Sampling positions in input pixels, ``out * stride - pad + tap * dilation + offset``, for
   every tap and output position, clamped to [-1, size] (NaN to -1) as in the eager op, then
   normalised for GridSample (``align_corners=0``: ``(2 * p + 1) / size - 1``, valid for any
   size, 1 included).
2. GridSample (bilinear, zero padding: ONNX DeformConv's sampling; in float below opset 20,
   where onnxruntime's GridSample has no other kernel) of the plane's channels at those
   positions gives the deformed im2col (N * G, C / G, kh * kw * out_h, out_w), already in the
   channel-major order of the conv weights; the DCNv2 mask multiplies it.
3. One MatMul per conv group applies the kernel, giving NCHW directly; then the bias.
4. A Concat with an empty slice of the offset, so that onnx's shape inference knows Y's shape.
"""

from __future__ import annotations


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
    # As the eager op: a NaN position reads zeros (-1 is in the zero border), and positions are
    # clamped to [-1, size] before normalising, because GridSample's own arithmetic on huge or
    # infinite coordinates reads pixels of the image again.
    minus_one = body.floating(-1.0)
    # (NaN is the one value not Equal to itself: Equal has TensorRT 8.6 importers, IsNaN not.)
    position = body.op("Where", body.op("Equal", position, position), position, minus_one)
    position = body.op("Min", body.op("Max", position, minus_one), body.op("CastLike", size, "X"))
    doubled = body.add(body.mul(position, body.floating(2.0)), body.floating(1.0))
    return body.sub(body.div(doubled, body.op("CastLike", size, "X")), body.floating(1.0))


def _output_size_check(body: _Body, size: tuple[str, str], kernel: tuple[str, str],
                       strides: str, pads: str, dilations: str, modulated: bool) -> str:
    """A one-element 1 that exists only if the offset (and mask) have the convolution's output
    spatial size, as ONNX DeformConv checks: without it, an offset of another size would silently
    give an output of its size.

    The check is a Reshape of a one-element tensor to ``1 + |offset_h - out_h| + |offset_w -
    out_w| (+ the mask's)`` elements, which fails unless every difference is 0. The sampling
    positions are multiplied by its result, so everything downstream depends on it."""
    one = body.ints(1)
    differences = []
    for axis in (0, 1):
        padded = body.add(size[axis], body.add(body.element(pads, axis), body.element(pads, axis + 2)))
        reach = body.mul(body.element(dilations, axis), body.sub(kernel[axis], one))
        expected = body.add(body.div(body.sub(body.sub(padded, reach), one),
                                     body.element(strides, axis)), one)
        for tensor in ("offset", "mask") if modulated else ("offset",):
            differences.append(body.op("Abs", body.sub(body.dims(tensor, 2 + axis)[0], expected)))
    check = one
    for difference in differences:
        check = body.add(check, difference)
    # (Not followed by another Reshape: onnxruntime would fuse the two and drop the check.)
    checked = body.op("Reshape", one, check)  # fails: "offset or mask of the wrong spatial size"
    body.nodes[-1].name = "offset_and_mask_must_match_the_output_size"
    return checked


def build_decomposed_body(onnx, *, modulated: bool, with_bias: bool, opset: int) -> list:
    """Nodes computing ``Y`` from ``X, W, offset[, B][, mask]`` (function input names)."""
    body = _Body(onnx)
    ints_type, int_type = onnx.AttributeProto.INTS, onnx.AttributeProto.INT
    channels, height, width = body.dims("X", 1, 2, 3)
    out_channels, group_channels, kernel_h, kernel_w = body.dims("W", 0, 1, 2, 3)
    strides, pads, dilations = (body.attribute(name, ints_type)
                                for name in ("strides", "pads", "dilations"))
    # The output's size comes straight from Shape(offset), so that onnx's shape inference of a
    # call (which onnxruntime's symbolic_shape_infer relies on for this op) finds (N, O, out_h,
    # out_w); the positions are computed from the checked sizes.
    batch, out_h, out_w = body.dims("offset", 0, 2, 3)
    checked = _output_size_check(body, (height, width), (kernel_h, kernel_w), strides, pads,
                                 dilations, modulated)
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
    grid_y = _normalized_positions(body, 0, kernel_h, body.mul(out_h, checked), height, **common)
    grid_x = _normalized_positions(body, 1, kernel_w, body.mul(out_w, checked), width, **common)
    grid = body.op("Concat", *(body.op("Unsqueeze", g, body.ints(-1)) for g in (grid_x, grid_y)),
                   axis=-1)
    grid = body.op("Reshape", grid, body.shape(rest, body.mul(taps, out_h), out_w, body.ints(2)))

    # 2. The deformed im2col of each plane, then the mask.
    planes = body.op("Reshape", "X", body.shape(rest, plane_channels, height, width))
    if opset >= 20:
        columns = body.op("GridSample", planes, grid, align_corners=0, mode="linear",
                          padding_mode="zeros")
    else:  # onnxruntime's GridSample-16 has float kernels only: double and half sample in float
        as_float = {"to": onnx.TensorProto.FLOAT}
        columns = body.op("GridSample", body.op("Cast", planes, **as_float),
                          body.op("Cast", grid, **as_float), align_corners=0, mode="bilinear",
                          padding_mode="zeros")
        columns = body.op("CastLike", columns, "X")
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
                     body.shape(batch, out_channels, out_h, out_w))
    if with_bias:
        output = body.add(output, body.op("Reshape", "B", body.ints(1, -1, 1, 1)))
    # onnx's shape inference cannot follow the computed Reshape shapes, so Y's batch and spatial
    # sizes would be unknown to it (and onnxruntime's symbolic_shape_infer, which asks it for
    # this op, would stop at the next Add). Concatenating an empty (N, 0, out_h, out_w) slice of
    # the offset pins them: Concat takes its other dimensions from its inputs. The bias (the
    # decomposed lowering always has one, see set_deform_lowering) gives the channels.
    empty = body.op("Slice", "offset", body.ints(0), body.ints(0), body.ints(1))
    body.nodes.append(onnx.helper.make_node("Concat", [empty, output], ["Y"], axis=1))
    return body.nodes
