"""edgecnn.ops.deform_conv2d and DeformConv2d: semantics against independent references.

References: F.conv2d (zero offsets; integer offsets on a shifted input), onnx.reference's
DeformConv and onnxruntime's DeformConv kernel (fractional and far out-of-range offsets), the
DeformConv cases shipped with the onnx package; then gradients, torch.export, bad input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator

from deform_helpers import Case, custom_model, eager, random_case, standard_model
from edgecnn.export.parity import compare
from edgecnn.ops import DeformConv2d, deform_conv2d
from edgecnn.runtime import load_session

# (in, out, kernel, stride, padding, dilation, groups, offset_groups)
SETTINGS = [
    (4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1),
    (6, 6, (3, 3), (2, 1), (0, 2), (1, 2), 3, 2),
    (4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 4, 4),  # depthwise
    (4, 8, (2, 3), (2, 2), (1, 0), (2, 1), 2, 1),
    (3, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, 3),
]


def _case(setting, rng, **options) -> Case:
    channels, out, kernel, stride, padding, dilation, groups, offset_groups = setting
    return random_case(rng, channels=channels, out_channels=out, kernel=kernel, stride=stride,
                       padding=padding, dilation=dilation, groups=groups,
                       offset_groups=offset_groups, size=(7, 8), **options)


@pytest.mark.parametrize("setting", SETTINGS)
def test_zero_offsets_equal_conv2d(setting):
    case = _case(setting, np.random.default_rng(0), mask=False, dtype=np.float64)
    case.offset[:] = 0
    expected = F.conv2d(*(torch.from_numpy(a) for a in (case.x, case.weight, case.bias)),
                        stride=case.stride, padding=case.padding, dilation=case.dilation,
                        groups=case.groups).numpy()
    np.testing.assert_allclose(eager(case), expected, rtol=0, atol=1e-12)


def test_integer_offsets_equal_conv_of_shifted_input():
    """Offset group g moves every tap by (dy_g, dx_g): a conv of the input shifted that way."""
    rng = np.random.default_rng(1)
    case = random_case(rng, channels=4, out_channels=3, offset_groups=2, size=(9, 8), mask=False,
                       far=False, dtype=np.float64)
    border = 4  # >= padding + the largest shift: zeros wherever a tap lands outside
    bordered = np.pad(case.x, ((0, 0), (0, 0), (border, border), (border, border)))
    shifted = np.zeros((2, 4, 9 + 2, 8 + 2))  # the conv's padded input (padding 1), shifted
    offset = case.offset.reshape(2, 2, 9, 2, *case.offset.shape[2:])  # a view: sets the case
    for group, (dy, dx) in enumerate([(2, -1), (-3, 1)]):
        offset[:, group, :, 0], offset[:, group, :, 1] = dy, dx
        top, left = border - 1 + dy, border - 1 + dx
        channels = slice(2 * group, 2 * group + 2)
        shifted[:, channels] = bordered[:, channels, top:top + 11, left:left + 10]
    expected = F.conv2d(torch.from_numpy(shifted), torch.from_numpy(case.weight),
                        torch.from_numpy(case.bias)).numpy()
    np.testing.assert_allclose(eager(case), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("setting", SETTINGS[:4])
def test_fractional_and_far_offsets_match_onnx_reference_and_onnxruntime(setting):
    """Random offsets of ~2 px plus some thousands of pixels out, with mask and bias.

    The three compute in float32 (onnx.reference's positions in float64), so they agree to
    float32 rounding: rel_l2 <= 1e-6, ten times inside the fp32 parity bound.
    """
    case = _case(setting, np.random.default_rng(2), offset_scale=2.0)
    model = standard_model(case)
    reference = ReferenceEvaluator(model).run(None, case.feeds())[0]
    kernel = load_session(model.SerializeToString()).run(None, case.feeds())[0]
    ours = eager(case)
    assert compare(reference, ours).rel_l2 <= 1e-6
    assert compare(kernel, ours).rel_l2 <= 1e-6
    assert np.abs(ours).max() > 1  # a real output


def _onnx_package_cases() -> list[tuple[str, onnx.NodeProto, list, np.ndarray]]:
    """The DeformConv cases of onnx/backend/test/case/node/deformconv.py (and any data dirs)."""
    from onnx.backend.test.case.node import deformconv

    cases = []

    def capture(node, inputs, outputs, name, **kwargs):
        cases.append((name, node, inputs, outputs[0]))

    original = deformconv.expect
    deformconv.expect = capture
    try:
        for name in dir(deformconv.DeformConv):
            if name.startswith("export"):
                getattr(deformconv.DeformConv, name)()
    finally:
        deformconv.expect = original
    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    for directory in sorted(data.glob("test_*deform*")):  # not in every onnx wheel
        model = onnx.load(str(directory / "model.onnx"))
        tensors = [onnx.numpy_helper.to_array(onnx.load_tensor(str(path)))
                   for path in sorted((directory / "test_data_set_0").glob("input_*.pb"))]
        expected = onnx.numpy_helper.to_array(
            onnx.load_tensor(str(directory / "test_data_set_0" / "output_0.pb")))
        cases.append((directory.name, model.graph.node[0], tensors, expected))
    return cases


def test_onnx_package_deformconv_cases():
    """Our op, and our ONNX function in both lowerings, reproduce onnx's own DeformConv cases."""
    cases = _onnx_package_cases()
    assert len(cases) >= 4
    for name, node, inputs, expected in cases:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        named = dict(zip(node.input, inputs))
        x, weight, offset = (named[n] for n in node.input[:3])
        pads = attributes.get("pads", [0, 0, 0, 0])
        case = Case(x=x, weight=weight, offset=offset,
                    bias=named.get(node.input[3]) if len(node.input) > 3 else None,
                    mask=named.get(node.input[4]) if len(node.input) > 4 else None,
                    stride=tuple(attributes.get("strides", (1, 1))), padding=tuple(pads[:2]),
                    dilation=tuple(attributes.get("dilations", (1, 1))))
        assert case.offset_groups == attributes.get("offset_group", 1)
        np.testing.assert_allclose(eager(case), expected, rtol=1e-6, atol=1e-5, err_msg=name)
        for lowering, opset in (("native", 19), ("decomposed", 18)):
            session = load_session(custom_model(case, lowering, opset).SerializeToString())
            np.testing.assert_allclose(session.run(None, case.feeds())[0], expected, rtol=1e-6,
                                       atol=1e-5, err_msg=f"{name} {lowering}")


def test_gradcheck_input_offset_weight_bias_mask():
    case = random_case(np.random.default_rng(3), batch=2, channels=4, out_channels=4, size=(5, 6),
                       stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, offset_groups=2,
                       offset_scale=1.5, far=False, dtype=np.float64)
    tensors = [torch.from_numpy(a).requires_grad_() for a in
               (case.x, case.offset, case.weight, case.bias, case.mask)]

    def run(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, case.stride, case.padding, case.dilation,
                             mask)

    assert torch.autograd.gradcheck(run, tensors)
    run(*tensors).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors)


def test_torch_export_shows_one_node_with_dynamic_batch():
    module = DeformConv2d(4, 6, 3, stride=2, padding=1, modulated=True).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.randn(2, 4, 9, 9),),
                                  dynamic_shapes=({0: batch},))
    calls = [node for node in program.graph.nodes if node.op == "call_function"]
    deform_calls = [node for node in calls if node.target == torch.ops.edgecnn.deform_conv2d.default]
    assert len(deform_calls) == 1
    assert not any("index" in str(node.target) or "embedding" in str(node.target) for node in calls)
    out = program.module()(torch.randn(3, 4, 9, 9))
    assert tuple(out.shape) == (3, 6, 5, 5)


def test_module_names_and_zero_initialisation():
    """weight/bias named like nn.Conv2d; at init (zero offsets, mask 1) it is that conv."""
    torch.manual_seed(0)
    for modulated in (False, True):
        module = DeformConv2d(4, 6, 3, padding=1, groups=2, offset_groups=2, modulated=modulated)
        keys = set(module.state_dict())
        assert keys == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
        assert module.conv_offset.out_channels == 2 * 9 * (3 if modulated else 2)
        conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
        conv.load_state_dict({"weight": module.weight, "bias": module.bias})
        x = torch.randn(2, 4, 7, 7)
        with torch.no_grad():
            offset, mask = module.offsets_and_mask(x)
            assert offset.abs().max() == 0 and (mask is None or bool((mask == 1).all()))
            torch.testing.assert_close(module(x), conv(x), rtol=1e-5, atol=1e-5)


BAD_SHAPES = [
    ("offset channels", dict(offset=(2, 17, 6, 7)), "offset must have shape", "(2, 18, 6, 7)"),
    ("offset size", dict(offset=(2, 18, 3, 7)), "offset must have shape", "(2, 18, 6, 7)"),
    ("offset batch", dict(offset=(1, 18, 6, 7)), "offset must have shape", "(2, 18, 6, 7)"),
    ("offset groups", dict(offset=(2, 54, 6, 7)), "offset_groups dividing", "(2, 54, 6, 7)"),
    ("mask channels", dict(mask=(2, 18, 6, 7)), "mask must have shape", "(2, 9, 6, 7)"),
    ("mask size", dict(mask=(2, 9, 6, 6)), "mask must have shape", "(2, 9, 6, 7)"),
    ("groups", dict(weight=(6, 3, 3, 3)), "divisible by weight.shape[1]", ""),
    ("output groups", dict(weight=(5, 2, 3, 3)), "output channels (5) must be divisible", ""),
    ("bias", dict(bias=(5,)), "bias must have shape (6,)", ""),
]


@pytest.mark.parametrize("what,shapes,message,expected", BAD_SHAPES, ids=[b[0] for b in BAD_SHAPES])
def test_inconsistent_shapes_raise_value_error_naming_the_expected_shape(what, shapes, message,
                                                                        expected):
    sizes = dict(x=(2, 4, 6, 7), offset=(2, 18, 6, 7), weight=(6, 4, 3, 3), bias=(6,),
                 mask=(2, 9, 6, 7))
    sizes.update(shapes)
    tensors = {name: torch.randn(size) for name, size in sizes.items()}
    with pytest.raises(ValueError) as error:
        deform_conv2d(tensors["x"], tensors["offset"], tensors["weight"], tensors["bias"],
                      padding=1, mask=tensors["mask"])
    assert message in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("integer", ["input", "offset", "weight", "mask"])
def test_integer_tensors_raise_type_error(integer):
    tensors = dict(input=torch.randn(1, 2, 5, 5), offset=torch.zeros(1, 18, 5, 5),
                   weight=torch.randn(3, 2, 3, 3), mask=torch.ones(1, 9, 5, 5))
    tensors[integer] = tensors[integer].round().to(torch.int64)
    with pytest.raises(TypeError, match=f"{integer} must be a floating-point tensor"):
        deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], padding=1,
                      mask=tensors["mask"])


@pytest.mark.parametrize("other", ["offset", "weight", "bias", "mask"])
def test_mixed_dtypes_raise_value_error(other):
    tensors = dict(input=torch.randn(1, 2, 5, 5), offset=torch.zeros(1, 18, 5, 5),
                   weight=torch.randn(3, 2, 3, 3), bias=torch.randn(3),
                   mask=torch.ones(1, 9, 5, 5))
    tensors[other] = tensors[other].double()
    with pytest.raises(ValueError, match=f"one dtype and device, got .*{other} torch.float64"):
        deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
                      padding=1, mask=tensors["mask"])


def test_mixed_devices_raise_value_error():
    """The meta device stands in for a GPU: the check runs before any computation."""
    tensors = [torch.randn(1, 2, 5, 5), torch.zeros(1, 18, 5, 5), torch.randn(3, 2, 3, 3)]
    for index in range(3):
        moved = [t.to("meta") if i == index else t for i, t in enumerate(tensors)]
        with pytest.raises(ValueError, match="share one dtype and device.* on meta"):
            deform_conv2d(*moved, padding=1)


def test_module_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        DeformConv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="divisible by offset_groups"):
        DeformConv2d(6, 4, 3, offset_groups=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    case = random_case(np.random.default_rng(4), groups=2, offset_groups=2)
    tensors = [torch.from_numpy(a) for a in (case.x, case.offset, case.weight, case.bias, case.mask)]
    cuda = [t.cuda().requires_grad_() for t in tensors]
    out = deform_conv2d(cuda[0], cuda[1], cuda[2], cuda[3], case.stride, case.padding,
                        case.dilation, cuda[4])
    out.sum().backward()
    assert compare(eager(case), out.detach().cpu().numpy()).rel_l2 <= 1e-5
    assert all(t.grad is not None for t in cuda)
