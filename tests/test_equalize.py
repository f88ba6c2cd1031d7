"""`quantize --equalize` (export/equalize.py) and `--per-tensor` on planted_cnn, whose conv2 has
an output channel 100x the others that conv3 reads 100x smaller, on relu6_cnn (the same plant
across ReLU6, exported as Clip(0, 6); tests/tiny_models.py) and on mobilenet_v2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import assert_one_line_error
from tiny_models import PLANTED_CHANNEL, planted_cnn, relu6_cnn

from edgecnn.export.parity import compare
from edgecnn.export.quantize import quantize_model, run_model

INPUTS = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("depthwise", [False, True])
def test_equalization_is_exact_in_float(tmp_path, depthwise):
    from edgecnn.export.equalize import conv_pairs, equalize_pairs

    model = onnx.load(str(planted_cnn(tmp_path / "planted.onnx", depthwise=depthwise)))
    assert [(pair.first.name, pair.second.name) for pair in conv_pairs(model)] == [
        ("conv1", "conv2"), ("conv2", "conv3")]
    equalized = equalize_pairs(model)
    assert compare(run_model(model, INPUTS)[0], run_model(equalized, INPUTS)[0]).rel_l2 <= 1e-5
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in equalized.graph.initializer}
    ranges = np.abs(weights["conv2.weight"]).reshape(8, -1).max(axis=1)
    assert ranges.max() < 5 * np.median(ranges)  # the 100x channel is brought in line


@pytest.mark.parametrize("depthwise", [False, True])
def test_equalize_raises_the_int8_sqnr(tmp_path, depthwise):
    path = planted_cnn(tmp_path / "planted.onnx", depthwise=depthwise)
    reference = run_model(onnx.load(str(path)), INPUTS)[0]
    sqnr = {}
    for per_tensor in (False, True):
        for equalize in (False, True):
            output = tmp_path / f"int8-{per_tensor}-{equalize}.onnx"
            quantize_model(path, output, calibration=INPUTS, check=False, per_tensor=per_tensor,
                           equalize=equalize)
            quantized = run_model(onnx.load(str(output)), INPUTS)[0]
            sqnr[per_tensor, equalize] = compare(reference, quantized).sqnr_db
    # measured: 13.4 -> 38.2 dB per channel, 2.7 -> 33.5 dB per tensor (depthwise: 17.8 -> 45.4,
    # 0.8 -> 39.2)
    assert sqnr[False, True] > sqnr[False, False] + 15 and sqnr[False, True] > 30, sqnr
    assert sqnr[True, True] > sqnr[True, False] + 20 and sqnr[True, True] > 25, sqnr


def _sqnr_gain(path, per_tensor: bool) -> tuple[float, float, onnx.ModelProto]:
    """(int8 SQNR of the logits without, with --equalize; the equalized int8 model)."""
    reference = run_model(onnx.load(str(path)), INPUTS)[0]
    sqnr = []
    for equalize in (False, True):
        output = path.with_name(f"int8-{per_tensor}-{equalize}.onnx")
        quantize_model(path, output, calibration=INPUTS, check=False, per_tensor=per_tensor,
                       equalize=equalize)
        quantized = onnx.load(str(output))
        sqnr.append(compare(reference, run_model(quantized, INPUTS)[0]).sqnr_db)
    return sqnr[0], sqnr[1], quantized


def test_relu6_pairs_are_equalized_exactly(tmp_path):
    from edgecnn.export.equalize import conv_pairs, equalize_pairs

    model = onnx.load(str(relu6_cnn(tmp_path / "relu6.onnx")))
    assert [(pair.first.name, pair.clip.name, pair.second.name) for pair in conv_pairs(model)] \
        == [("conv1", "relu6_1", "conv2"), ("conv2", "relu6_2", "conv3")]
    equalized = equalize_pairs(model)
    assert compare(run_model(model, INPUTS)[0], run_model(equalized, INPUTS)[0]).rel_l2 <= 1e-5
    # Each Clip(0, 6) is now Clip(0, max bound) -> Min(6 / s), one bound per channel; the shared
    # 6, read by no node now, is gone.
    assert [node.op_type for node in equalized.graph.node][:6] == [
        "Conv", "Clip", "Min", "Conv", "Clip", "Min"]
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in equalized.graph.initializer}
    assert "max_val" not in weights and float(weights["min_val"]) == 0
    bounds = [weights[node.input[1]] for node in equalized.graph.node if node.op_type == "Min"]
    assert all(bound.shape == (1, 8, 1, 1) for bound in bounds)
    clips = [node for node in equalized.graph.node if node.op_type == "Clip"]
    assert [float(weights[clip.input[2]]) for clip in clips] == [bound.max() for bound in bounds]
    # the planted channels (divided by ~100 relative to the others) get the lowest bounds
    assert [bound.argmin() for bound in bounds] == [PLANTED_CHANNEL, PLANTED_CHANNEL + 2]
    ranges = np.abs(weights["conv1.weight"]).reshape(8, -1).max(axis=1)
    assert ranges.max() < 5 * np.median(ranges)


def test_relu6_equalize_raises_the_int8_sqnr(tmp_path):
    path = relu6_cnn(tmp_path / "relu6.onnx")
    per_channel = _sqnr_gain(path, per_tensor=False)
    per_tensor = _sqnr_gain(path, per_tensor=True)
    # measured: per channel 30.5 -> 39.9 dB, per tensor 21.9 -> 38.4 dB
    assert per_channel[1] > per_channel[0] + 6 and per_channel[1] > 35, per_channel[:2]
    assert per_tensor[1] > per_tensor[0] + 12 and per_tensor[1] > 33, per_tensor[:2]
    # The Min nodes stay float ops (onnxruntime has no int8 Min) between a DequantizeLinear and
    # a QuantizeLinear; the Clip before them is folded into its conv's output Q.
    quantized = per_tensor[2]
    producers = {out: node for node in quantized.graph.node for out in node.output}
    mins = [node for node in quantized.graph.node if node.op_type == "Min"]
    assert len(mins) == 2
    assert all(producers[node.input[0]].op_type == "DequantizeLinear" for node in mins)
    assert not any(node.op_type in ("Relu", "Clip") for node in quantized.graph.node)


def test_mobilenet_v2_relu6_pairs_are_equalized_exactly(zoo_onnx):
    from edgecnn.export.equalize import conv_pairs, equalize_pairs

    model = onnx.load(str(zoo_onnx("mobilenet_v2")))
    pairs = conv_pairs(model)
    # the stem -> the first dw, then 17 inverted residuals: expansion -> dw (16: the first has
    # no expansion) and dw -> projection (17); the last 1x1 conv's ReLU6 feeds the pool
    assert sum(pair.clip is not None for pair in pairs) == 34
    inputs = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    equalized = equalize_pairs(model)
    assert compare(run_model(model, inputs)[0], run_model(equalized, inputs)[0]).rel_l2 <= 1e-5
    assert sum(node.op_type == "Min" for node in equalized.graph.node) == 34


def test_cli_per_tensor_and_equalize_are_recorded(cli, tmp_path):
    path = planted_cnn(tmp_path / "planted.onnx")
    np.save(tmp_path / "calibration.npy", INPUTS)
    result = cli("quantize", path, "-o", tmp_path / "int8.onnx", "--calibration",
                 tmp_path / "calibration.npy", "--per-tensor", "--equalize", "--json")
    assert result.code == 0, result.stderr
    details = json.loads(result.stdout)["quantization"]
    assert details["weights"].startswith("int8 symmetric per-tensor")
    assert "equalization" in details["equalized"]
    model = onnx.load(str(tmp_path / "int8.onnx"))
    scales = {init.name: init for init in model.graph.initializer}
    weight_scales = [scales[node.input[1]] for node in model.graph.node
                     if node.op_type == "DequantizeLinear" and node.input[0].endswith(".weight_quantized")]
    assert weight_scales and all(not scale.dims or scale.dims == [1] for scale in weight_scales)


@pytest.mark.parametrize("mode", ["int8-dynamic", "fp16"])
@pytest.mark.parametrize("flag", ["--equalize", "--per-tensor"])
def test_static_int8_options_with_other_modes_are_refused(cli, tmp_path, mode, flag):
    path = planted_cnn(tmp_path / "planted.onnx")
    result = cli("quantize", path, "-o", tmp_path / "out.onnx", "--mode", mode, flag)
    assert_one_line_error(result, 2, f"{flag} applies to mode int8", mode)
    assert not (tmp_path / "out.onnx").exists()
