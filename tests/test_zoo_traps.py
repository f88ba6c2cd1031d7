"""The architectures' parity traps (docs/zoo.md), one focused test each: exact values and shapes.

Small modules (taken from the zoo where a zoo model has the trap) are exported with the real
exporter (``to_onnx``) and run in onnxruntime at two batch sizes through the dynamic batch axis.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_one_line_error
from edgecnn import models
from edgecnn.export import build_model, compare, to_onnx
from edgecnn.models.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, local_response_norm
from edgecnn.models.fcn import Upsample, bilinear_kernel
from edgecnn.runtime import load_session

FP32 = 1e-5


def exported(module: nn.Module, *inputs: torch.Tensor) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Export ``module`` at ``inputs[0]`` (dynamic batch) and run every input in onnxruntime."""
    proto = to_onnx(module.eval(), inputs[0])
    session = load_session(proto.SerializeToString())
    return proto, [session.run(None, {"input": x.numpy()})[0] for x in inputs]


def eager(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(x).numpy()


def nodes(proto: onnx.ModelProto, op_type: str) -> list[dict]:
    return [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for node in proto.graph.node if node.op_type == op_type]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- ceil_mode pooling --------------------------------------------------------------------

def test_googlenet_ceil_mode_max_pooling(zoo_onnx):
    pool = models.create("googlenet").maxpool1  # 3/2, ceil_mode: 32 -> 16 (floor would be 15)
    x1, x3 = randn(1, 4, 32, 32), randn(3, 4, 32, 32, seed=1)
    proto, (out1, out3) = exported(pool, x1, x3)
    assert out1.shape == (1, 4, 16, 16) and out3.shape == (3, 4, 16, 16)
    np.testing.assert_array_equal(out3, eager(pool, x3))
    # The last window is cut by the edge: it covers rows/columns 30-31 only.
    np.testing.assert_array_equal(out1[0, :, -1, -1], x1[0, :, 30:, 30:].amax(dim=(1, 2)).numpy())
    np.testing.assert_array_equal(out1[0, :, 0, -1], x1[0, :, 0:3, 30:].amax(dim=(1, 2)).numpy())
    # Every max pool of the exported GoogLeNet keeps ceil_mode (4 stem pools + 9 branch pools).
    pools = nodes(onnx.load(str(zoo_onnx("googlenet")), load_external_data=False), "MaxPool")
    assert len(pools) == 13 and all(p.get("ceil_mode") == 1 for p in pools)


def test_mnist_cnn_same_average_pooling_divides_by_real_pixels():
    """Keras 'same' pooling 7 -> 4: the edge window holds one pixel and is divided by one."""
    pool = models.create("mnist_cnn").features[-1]
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode
    ramp = torch.arange(7 * 7, dtype=torch.float32).reshape(1, 1, 7, 7).repeat(3, 2, 1, 1)
    proto, (out1, out3) = exported(pool, ramp[:1], ramp)
    assert out3.shape == (3, 2, 4, 4)
    np.testing.assert_allclose(out3, eager(pool, ramp), rtol=0, atol=1e-6)
    assert out3[0, 0, -1, -1] == ramp[0, 0, 6, 6]                      # one pixel, divisor 1
    assert out3[0, 0, -1, 0] == pytest.approx(float(ramp[0, 0, 6, 0:2].mean()))
    assert out3[0, 0, 0, 0] == pytest.approx(float(ramp[0, 0, 0:2, 0:2].mean()))
    (attributes,) = nodes(proto, "AveragePool")
    assert attributes["ceil_mode"] == 1 and attributes.get("count_include_pad", 0) == 0


# ---- count_include_pad --------------------------------------------------------------------

@pytest.mark.parametrize("include_pad, corner", [(True, 4 / 9), (False, 1.0)])
def test_average_pooling_count_include_pad(include_pad, corner):
    pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=include_pad)
    ones = torch.ones(2, 3, 7, 7)
    proto, (out, noisy) = exported(pool, ones, randn(3, 3, 7, 7))
    assert out.shape == (2, 3, 4, 4)
    assert out[0, 0, 0, 0] == pytest.approx(corner, abs=1e-7)            # 4 real of 9 taps
    assert out[0, 0, 0, 1] == pytest.approx(6 / 9 if include_pad else 1.0, abs=1e-7)
    assert out[0, 0, 1, 1] == pytest.approx(1.0, abs=1e-7)
    assert compare(eager(pool, randn(3, 3, 7, 7)), noisy).rel_l2 <= FP32
    assert nodes(proto, "AveragePool")[0].get("count_include_pad", 0) == int(include_pad)


# ---- LRN ----------------------------------------------------------------------------------

def lrn_reference(x: np.ndarray, alpha: float) -> np.ndarray:
    """b_c = a_c / (k + alpha * sum over the 5-channel window of a^2) ^ beta (alpha as given)."""
    squares = np.pad(x.astype(np.float64) ** 2, ((0, 0), (LRN_SIZE // 2, LRN_SIZE // 2),
                                                  (0, 0), (0, 0)))
    window = sum(squares[:, i:i + x.shape[1]] for i in range(LRN_SIZE))
    return x / (LRN_K + alpha * window) ** LRN_BETA


@pytest.mark.parametrize("paper", [False, True])
def test_alexnet_original_lrn(paper):
    model = models.create("alexnet_original", paper_lrn=paper)
    lrn = model.features[2]
    assert isinstance(lrn, nn.LocalResponseNorm) and lrn.size == 5 and lrn.k == 2
    x = randn(2, 16, 5, 5) * 30  # large activations, so the normalisation really bites
    # PyTorch (and ONNX) divide alpha by size; the paper does not.
    paper_alpha = LRN_ALPHA if paper else LRN_ALPHA / LRN_SIZE
    expected = lrn_reference(x.numpy(), paper_alpha)
    np.testing.assert_allclose(eager(lrn, x), expected, rtol=1e-5)
    other = lrn_reference(x.numpy(), LRN_ALPHA / LRN_SIZE if paper else LRN_ALPHA)
    assert np.abs(other - expected).max() > 0.05 * np.abs(expected).max()  # conventions differ
    _, (out2, out3) = exported(lrn, x, randn(3, 16, 5, 5, seed=3) * 30)
    assert compare(expected, out2).rel_l2 <= FP32
    assert compare(eager(lrn, randn(3, 16, 5, 5, seed=3) * 30), out3).rel_l2 <= FP32
    assert local_response_norm(paper).alpha == pytest.approx(LRN_ALPHA * (LRN_SIZE if paper else 1))


# ---- adaptive average pooling at non-divisible sizes --------------------------------------

def adaptive_avg_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's bins: [floor(i*H/out), ceil((i+1)*H/out)), overlapping when not divisible."""
    height, width = x.shape[-2:]
    result = np.empty(x.shape[:2] + (out_h, out_w), dtype=np.float64)
    for i in range(out_h):
        top, bottom = (i * height) // out_h, -((-(i + 1) * height) // out_h)
        for j in range(out_w):
            left, right = (j * width) // out_w, -((-(j + 1) * width) // out_w)
            result[:, :, i, j] = x[:, :, top:bottom, left:right].mean(axis=(-2, -1))
    return result


@pytest.mark.parametrize("in_size, out_size", [((1, 1), (6, 6)),   # alexnet at 63x63
                                               ((2, 3), (7, 7)),   # vgg, upsampling bins
                                               ((5, 9), (3, 4)),   # overlapping bins
                                               ((7, 7), (6, 6))])
def test_adaptive_average_pooling_non_divisible(in_size, out_size):
    pool = nn.AdaptiveAvgPool2d(out_size)
    x2, x3 = randn(2, 3, *in_size), randn(3, 3, *in_size, seed=1)
    _, (out2, out3) = exported(pool, x2, x3)
    assert out3.shape == (3, 3, *out_size)
    assert compare(adaptive_avg_reference(x2.numpy(), *out_size), out2).rel_l2 <= FP32
    assert compare(eager(pool, x3), out3).rel_l2 <= FP32


# ---- ConvTranspose2d: output size and bilinear initialisation (FCN) -----------------------

def test_bilinear_kernel_values():
    np.testing.assert_allclose(bilinear_kernel(2)[0], [1 / 16, 3 / 16, 3 / 16, 1 / 16])
    np.testing.assert_allclose(bilinear_kernel(2)[1], [3 / 16, 9 / 16, 9 / 16, 3 / 16])
    assert bilinear_kernel(8).shape == (16, 16) and float(bilinear_kernel(8).max()) < 1


@pytest.mark.parametrize("factor, in_size, target", [(2, (4, 5), (7, 10)), (8, (3, 4), (19, 32))])
def test_transposed_upsampling_size_and_bilinear_init(factor, in_size, target):
    upsample = Upsample(3, factor, "transposed").eval()
    deconv = upsample.deconv
    assert deconv.weight[0, 1].abs().sum() == 0  # bilinear on the class diagonal only
    x = randn(1, 3, *in_size)
    full = eager(deconv, x)
    assert full.shape == (1, 3, in_size[0] * factor, in_size[1] * factor)  # (n-1)f - f + 2f
    resized = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False).numpy()
    inner = slice(factor, -factor)  # away from the zero-padded border the two agree
    np.testing.assert_allclose(full[..., inner, inner], resized[..., inner, inner], atol=1e-5)

    class Cropped(nn.Module):  # the FCN use: upsample then crop to the skip's size
        def forward(self, inp):
            return upsample(inp, target)

    _, (out1, out3) = exported(Cropped(), x, randn(3, 3, *in_size, seed=1))
    assert out1.shape == (1, 3, *target) and out3.shape == (3, 3, *target)
    np.testing.assert_allclose(out1, full[..., :target[0], :target[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height, width", [(32, 32), (33, 47), (100, 75)])
def test_fcn_masks_have_the_input_size(height, width):
    model = models.create("fcn_resnet18", num_classes=5)
    assert eager(model, randn(1, 3, height, width)).shape == (1, 5, height, width)


# ---- nearest and bilinear Resize, align_corners=False -------------------------------------

RESIZE_ATTRIBUTES = {
    "bilinear": {"mode": b"linear", "coordinate_transformation_mode": b"half_pixel"},
    "nearest": {"mode": b"nearest", "coordinate_transformation_mode": b"asymmetric",
                "nearest_mode": b"floor"},
}


def assert_resizes(proto: onnx.ModelProto, mode: str) -> None:
    resizes = nodes(proto, "Resize")
    assert len(resizes) == 3 and not nodes(proto, "ConvTranspose")
    for resize in resizes:
        assert {key: resize.get(key) for key in RESIZE_ATTRIBUTES[mode]} == RESIZE_ATTRIBUTES[mode]


def test_fcn_bilinear_resize_upsampling():
    model = models.create("fcn_resnet18", num_classes=4, upsample="bilinear")
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    x2, x3 = randn(2, 3, 40, 36), randn(3, 3, 40, 36, seed=1)
    proto, (out2, out3) = exported(model, x2, x3)
    assert out3.shape == (3, 4, 40, 36)
    assert compare(eager(model, x2), out2).rel_l2 <= FP32
    assert compare(eager(model, x3), out3).rel_l2 <= FP32
    assert_resizes(proto, "bilinear")


def test_fcn_nearest_resize_upsampling_from_the_cli(cli, tmp_path):
    out = tmp_path / "fcn_nearest.onnx"
    result = cli("export", "fcn_resnet18", "--option", "upsample=nearest", "--num-classes", "4",
                 "--input-size", "40", "36", "-o", out, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["parity"]["rel_l2"] <= FP32  # batch 2 against eager
    assert_resizes(onnx.load(str(out)), "nearest")
    model = build_model("fcn_resnet18", num_classes=4, upsample="nearest")
    x = randn(3, 3, 40, 36, seed=1)
    masks = load_session(out).run(None, {"input": x.numpy()})[0]
    assert masks.shape == (3, 4, 40, 36) and compare(eager(model, x), masks).rel_l2 <= FP32


_BAD_CLI_OPTIONS = [  # (model, --option value, the error's fragment)
    ("fcn_resnet18", "upsample=cubic", "upsample must be one of transposed, bilinear, nearest"),
    ("lenet", "depth=3", "unexpected keyword argument 'depth'"),
    ("lenet", "depth", "--option takes KEY=VALUE"),
    ("lenet", "num_classes=5", "--option cannot set num_classes: each is an argument of its own"),
    ("lenet", "seed=1", "--option cannot set seed"),
    ("lenet", "weights=a.pt", "--option cannot set weights"),
    ("lenet", "in-channels=1", "--option cannot set in_channels"),
]


def test_model_options_from_the_cli_are_checked(cli, tmp_path):
    for name, option, fragment in _BAD_CLI_OPTIONS:
        result = cli("export", name, "--option", option, "-o", tmp_path / "x.onnx")
        assert_one_line_error(result, 2, fragment)
    assert list(tmp_path.iterdir()) == []
    from edgecnn.cli._parsing import parse_model_options

    assert parse_model_options(["paper-lrn=True", "dropout=0.25", "n=3", "upsample=nearest"]) == {
        "paper_lrn": True, "dropout": 0.25, "n": 3, "upsample": "nearest"}
    from edgecnn.errors import BadInput
    from edgecnn.export import export_model

    with pytest.raises(BadInput, match="model_options cannot set num_classes, seed: each is an argument of its own"):
        export_model("lenet", tmp_path / "x.onnx", model_options={"seed": 1, "num_classes": 5})
    assert list(tmp_path.iterdir()) == []


def test_nearest_resize_picks_floor_source_pixels():
    upsample = Upsample(1, 8, "nearest")

    class Resize(nn.Module):
        def forward(self, inp):
            return upsample(inp, (7, 10))

    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    _, (out,) = exported(Resize(), x)
    rows, cols = (np.arange(7) * 3) // 7, (np.arange(10) * 4) // 10
    np.testing.assert_array_equal(out[0, 0], x[0, 0].numpy()[rows][:, cols])


# ---- Dropout never reaches the graph ------------------------------------------------------

def test_models_with_dropout_modules():
    """tests/test_zoo.py finds no Dropout node in any model's export; these models do hold
    nn.Dropout, so that check is not vacuous."""
    for name in ("mnist_cnn", "alexnet", "nin", "googlenet", "mobilenet_v2"):
        with torch.device("meta"):
            model = models.create(name)
        assert any(isinstance(m, nn.Dropout) for m in model.modules()), name


# ---- unequal strides ----------------------------------------------------------------------

@pytest.mark.parametrize("layer, out_hw", [
    (nn.Conv2d(3, 4, 3, stride=(2, 1), padding=1), (5, 8)),
    (nn.Conv2d(3, 4, (3, 1), stride=(1, 2), dilation=(2, 1), padding=(2, 0)), (9, 4)),
    (nn.MaxPool2d((3, 1), stride=(2, 1)), (4, 8)),
    (nn.AvgPool2d((2, 3), stride=(2, 1), padding=(0, 1), count_include_pad=False), (4, 8)),
    (nn.ConvTranspose2d(3, 4, 3, stride=(2, 1), padding=1, output_padding=(1, 0)), (18, 8)),
])
def test_unequal_strides(layer, out_hw):
    x2, x3 = randn(2, 3, 9, 8), randn(3, 3, 9, 8, seed=1)
    _, (out2, out3) = exported(layer, x2, x3)
    channels = layer.out_channels if hasattr(layer, "out_channels") else 3
    assert out3.shape == (3, channels, *out_hw)
    assert compare(eager(layer, x2), out2).rel_l2 <= FP32
    assert compare(eager(layer, x3), out3).rel_l2 <= FP32
