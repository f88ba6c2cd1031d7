"""The ``decomposed`` body of ai.edgecnn::DeformConv2d: deformable conv from older ONNX ops only.

Torch-free; the onnx package is passed in (imported lazily by ``edgecnn.runtime.deform``).

Every size comes from the inputs' runtime shapes and every hyper-parameter from the calling
node's attributes (``Constant`` nodes whose value references strides, pads, dilations, group and
offset_group), so one body serves every call site, any batch and any input size. The ops are
Shape, Gather, Reshape, Transpose, Pad, Range, Cast/CastLike, Floor, Min/Max, Where, Equal,
arithmetic, Concat, Unsqueeze, ReduceSum and MatMul (no DeformConv, no GridSample, no If):
all run in onnxruntime 1.17 and have TensorRT 8.6 importers.

The algorithm mirrors ``edgecnn.ops.deform_conv`` (and onnxruntime's DeformConv kernel):

1. Sampling positions in input pixels: ``out * stride - pad + tap * dilation + offset``,
   clamped to [-1, size] so that positions far outside the image land in a zero border.
2. The input gets that border (1 before, 2 after) and is laid out channels-last as a table of
   rows, each row ``u`` consecutive channels of one pixel (``u`` divides both the channels per
   conv group and per offset group, so one row shares one offset group and one conv group).
3. One Gather fetches the four bilinear corners of every (conv group, position, tap, row); the
   bilinear weights (times the DCNv2 mask) weight them and a ReduceSum adds the corners.
4. One MatMul per conv group applies the kernel; a transpose gives NCHW, then the bias.
"""

from __future__ import annotations

_TAPS_AXIS = 1  # offset group axis of the (N, G, K, L) position tensors


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
        """A 1-D int64 constant."""
        return self.op("Constant", value_ints=list(values))

    def attribute(self, name: str, attribute_type) -> str:
        """A constant holding the calling node's attribute ``name`` (1-D int64 tensor)."""
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

    def scalar(self, vector: str) -> str:
        return self.op("Squeeze", vector, self.ints(0))

    def shape(self, *parts: str) -> str:
        return self.op("Concat", *parts, axis=0)

    def range(self, count: str) -> str:
        zero, one = (self.op("Constant", value_int=v) for v in (0, 1))
        return self.op("Range", zero, self.scalar(count), one)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", a, b)

    def div(self, a: str, b: str) -> str:
        return self.op("Div", a, b)


def _row_width(body: _Body, group_channels: str, offset_group_channels: str) -> str:
    """Channels per gathered row: divides both the conv-group and the offset-group channels.

    The common cases (one divides the other) give the larger of the two possible widths;
    otherwise rows of one channel (correct, slower).
    """
    def divides(a, b):  # a divides b
        return body.op("Equal", body.mul(body.div(b, a), a), b)

    fallback = body.op("Where", divides(offset_group_channels, group_channels),
                       offset_group_channels, body.ints(1))
    return body.op("Where", divides(group_channels, offset_group_channels), group_channels, fallback)


def build_decomposed_body(onnx, *, modulated: bool, with_bias: bool) -> list:
    """Nodes computing ``Y`` from ``X, W, offset[, B][, mask]`` (function input names)."""
    body = _Body(onnx)
    ints_type, int_type = onnx.AttributeProto.INTS, onnx.AttributeProto.INT
    batch, channels, height, width = body.dims("X", 0, 1, 2, 3)
    out_channels, group_channels, kernel_h, kernel_w = body.dims("W", 0, 1, 2, 3)
    out_h, out_w = body.dims("offset", 2, 3)
    strides = body.attribute("strides", ints_type)
    pads = body.attribute("pads", ints_type)
    dilations = body.attribute("dilations", ints_type)
    groups = body.attribute("group", int_type)
    offset_groups = body.attribute("offset_group", int_type)

    def element(vector, index):
        return body.op("Gather", vector, body.ints(index))

    taps = body.mul(kernel_h, kernel_w)
    positions = body.mul(out_h, out_w)
    unit = _row_width(body, group_channels, body.div(channels, offset_groups))
    units = body.div(channels, unit)                  # rows per pixel
    units_per_group = body.div(group_channels, unit)  # rows per conv group and pixel
    border = (1, 2)  # zero rows/columns before and after the image
    padded_w = body.add(width, body.ints(sum(border)))
    padded_h = body.add(height, body.ints(sum(border)))

    # 1. Sampling positions (N, G, kh, kw, out_h, out_w) in input pixels.
    def axis_positions(kernel, dilation, pad, out, stride, kernel_shape, out_shape):
        taps_ = body.sub(body.mul(body.range(kernel), dilation), pad)
        outs = body.mul(body.range(out), stride)
        grid = body.add(body.op("Reshape", taps_, kernel_shape), body.op("Reshape", outs, out_shape))
        return body.op("CastLike", grid, "X")

    one = body.ints(1)
    base_y = axis_positions(kernel_h, element(dilations, 0), element(pads, 0), out_h,
                            element(strides, 0), body.shape(kernel_h, one, one, one),
                            body.shape(one, one, out_h, one))
    base_x = axis_positions(kernel_w, element(dilations, 1), element(pads, 1), out_w,
                            element(strides, 1), body.shape(one, kernel_w, one, one),
                            body.shape(one, one, one, out_w))
    split_offset = body.op("Reshape", "offset", body.shape(
        body.ints(0), offset_groups, kernel_h, kernel_w, body.ints(2), out_h, out_w))
    low_limit = body.op("CastLike", body.op("Constant", value_float=-1.0), "X")
    unit_float = body.op("CastLike", body.op("Constant", value_float=1.0), "X")

    def clamped(component, base, size):
        position = body.add(body.op("Gather", split_offset, body.op("Constant", value_int=component),
                                    axis=4), base)
        return body.op("Min", body.op("Max", position, low_limit), body.op("CastLike", size, "X"))

    y = clamped(0, base_y, height)
    x = clamped(1, base_x, width)
    y_low, x_low = body.op("Floor", y), body.op("Floor", x)
    frac_y, frac_x = body.sub(y, y_low), body.sub(x, x_low)
    keep_y, keep_x = body.sub(unit_float, frac_y), body.sub(unit_float, frac_x)
    corner_weights = [body.mul(keep_y, keep_x), body.mul(keep_y, frac_x),
                      body.mul(frac_y, keep_x), body.mul(frac_y, frac_x)]
    if modulated:
        mask = body.op("Reshape", "mask", body.shape(
            body.ints(0), offset_groups, kernel_h, kernel_w, out_h, out_w))
        corner_weights = [body.mul(weights, mask) for weights in corner_weights]

    # Flat pixel index of the top-left corner in the bordered image of each sample.
    image = body.op("Reshape", body.range(batch), body.ints(-1, 1, 1, 1, 1, 1))
    row = body.add(body.add(body.mul(image, padded_h), body.op("Cast", y_low, to=7)), one)
    pixel = body.add(body.add(body.mul(row, padded_w), body.op("Cast", x_low, to=7)), one)

    # 2. Rearrange (N, G, K, L) per-sample values to (N, groups, L, K, rows per group).
    offset_group_of_row = body.div(body.mul(body.range(units), unit),
                                   body.div(channels, offset_groups))

    def per_row(values, extra_axes):
        flat = body.op("Reshape", values, body.shape(
            body.ints(0), offset_groups, taps, positions, *[body.ints(-1)] * extra_axes))
        spread = body.op("Gather", flat, offset_group_of_row, axis=_TAPS_AXIS)
        split = body.op("Reshape", spread, body.shape(
            body.ints(0), groups, units_per_group, taps, positions, *[body.ints(-1)] * extra_axes))
        return body.op("Transpose", split, perm=[0, 1, 4, 3, 2] + [5] * extra_axes)

    row_of_unit = body.op("Reshape", body.range(units), body.shape(
        one, groups, one, one, units_per_group))
    top_left = body.add(body.mul(per_row(pixel, 0), units), row_of_unit)
    shifts = [body.ints(0), units, body.mul(padded_w, units),
              body.mul(body.add(padded_w, one), units)]
    rows = body.op("Concat", *[body.op("Unsqueeze", body.add(top_left, shift), body.ints(0))
                               for shift in shifts], axis=0)
    stacked = body.op("Concat", *[body.op("Unsqueeze", w, body.ints(-1)) for w in corner_weights],
                      axis=-1)
    weights = body.op("Unsqueeze", body.op("Transpose", per_row(stacked, 1),
                                           perm=[5, 0, 1, 2, 3, 4]), body.ints(-1))

    # 3. Gather the corners from the channels-last bordered input; weight and add them.
    bordered = body.op("Pad", "X", body.ints(0, 0, border[0], border[0], 0, 0, border[1], border[1]))
    table = body.op("Reshape", body.op("Transpose", bordered, perm=[0, 2, 3, 1]),
                    body.shape(body.ints(-1), unit))
    corners = body.op("Gather", table, rows, axis=0)
    columns = body.op("ReduceSum", body.mul(corners, weights), body.ints(0), keepdims=0)
    columns = body.op("Reshape", columns, body.shape(
        body.ints(0), groups, positions, body.mul(taps, group_channels)))

    # 4. The kernel as (groups, K * C/groups, O/groups), ordered like the columns.
    group_out = body.div(out_channels, groups)
    kernel = body.op("Reshape", "W", body.shape(groups, group_out, group_channels, taps))
    kernel = body.op("Reshape", body.op("Transpose", kernel, perm=[0, 3, 2, 1]),
                     body.shape(groups, body.mul(taps, group_channels), group_out))
    product = body.op("Transpose", body.op("MatMul", columns, kernel), perm=[0, 1, 3, 2])
    output = body.op("Reshape", product, body.shape(body.ints(0), out_channels, out_h, out_w))
    if with_bias:
        output = body.add(output, body.op("Reshape", "B", body.ints(1, -1, 1, 1)))
    body.nodes.append(onnx.helper.make_node("Identity", [output], ["Y"]))
    return body.nodes
