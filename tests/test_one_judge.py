"""One parity judge: `check`, `quantize` and `export --quantize` give a file the same verdict.

They used to apply different policies: `check mobilenet_v2 --precision fp16` passed (the model's
own fp16 bound, 2e-2) while `quantize --mode fp16` and `export --quantize fp16` failed it against
the default 5e-3, and only `check` had an int8 floor. The bounds now travel in the file's
metadata and every command judges with `edgecnn.export.parity.judge`.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecnn.export.quantize_recipes import Int8Static
from edgecnn.runtime.onnx_file import get_metadata


def test_mobilenet_v2_fp16_gets_one_verdict_from_all_three_commands(cli, zoo_onnx, tmp_path):
    fp32 = zoo_onnx("mobilenet_v2")  # 64 px, seed 0
    bounds = get_metadata(onnx.load(str(fp32), load_external_data=False)).tolerances
    assert bounds["fp16"] == pytest.approx(2e-2)  # the model's measured bound, in the file

    quantized = cli("quantize", fp32, "--mode", "fp16", "-o", tmp_path / "q.onnx")
    exported = cli("export", "mobilenet_v2", "--input-size", "64", "--quantize", "fp16",
                   "-o", tmp_path / "e.onnx")
    checked = cli("check", "mobilenet_v2", "--precision", "fp16", "--input-size", "64")
    checked_file = cli("check", "mobilenet_v2", tmp_path / "q.onnx")
    for result in (quantized, exported, checked, checked_file):
        assert result.code == 0, result.stdout + result.stderr
    assert "(tolerance 0.02) ok" in quantized.stdout and "criterion rel_l2 <= 0.02" in checked.stdout


def _plant_weight_scale_error(model: onnx.ModelProto) -> None:
    """One conv's weight scale off by 2x: a 7-bit/8-bit range mix-up in the quantizer."""
    scales = {node.input[0]: node.input[1] for node in model.graph.node
              if node.op_type == "DequantizeLinear"}
    name = scales["layer2.1.conv1.weight_quantized"]
    scale = next(init for init in model.graph.initializer if init.name == name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))


@pytest.fixture
def calibration(tmp_path):
    """Inputs drawn like the ones `check` compares on (standard normal)."""
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(5).standard_normal((32, 3, 64, 64)).astype(np.float32))
    return path


@pytest.fixture
def planted(monkeypatch):
    original = Int8Static.quantize

    def quantize_with_error(self, job, exclude):
        model = original(self, job, exclude)
        _plant_weight_scale_error(model)
        return model

    monkeypatch.setattr(Int8Static, "quantize", quantize_with_error)


def test_int8_with_a_planted_weight_scale_error_fails_all_three(cli, zoo_onnx, tmp_path,
                                                                calibration, planted):
    fp32 = zoo_onnx("resnet18")
    quantized = cli("quantize", fp32, "--calibration", calibration, "-o", tmp_path / "q.onnx")
    exported = cli("export", "resnet18", "--input-size", "64", "--quantize", "int8",
                   "--calibration", calibration, "-o", tmp_path / "e.onnx")
    for result in (quantized, exported):
        assert result.code == 1, result.stdout + result.stderr
        assert "beyond the int8 bound" in result.stderr and "nothing written" in result.stderr
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "e.onnx").exists()

    broken = cli("quantize", fp32, "--calibration", calibration, "-o", tmp_path / "b.onnx",
                 "--no-check")
    assert broken.code == 0, broken.stderr
    checked = cli("check", "resnet18", tmp_path / "b.onnx")
    assert checked.code == 1, checked.stdout + checked.stderr
    assert "FAIL" in checked.stdout


def test_the_same_int8_recipe_without_the_error_passes_all_three(cli, zoo_onnx, tmp_path,
                                                                 calibration):
    fp32 = zoo_onnx("resnet18")
    quantized = cli("quantize", fp32, "--calibration", calibration, "-o", tmp_path / "q.onnx")
    exported = cli("export", "resnet18", "--input-size", "64", "--quantize", "int8",
                   "--calibration", calibration, "-o", tmp_path / "e.onnx")
    checked = cli("check", "resnet18", tmp_path / "q.onnx")
    for result in (quantized, exported, checked):
        assert result.code == 0, result.stdout + result.stderr
    assert "(tolerance 0.1) ok" in quantized.stdout


def test_bf16_bound_is_eight_times_the_fp16_bound():
    """bf16 keeps 8 significant bits to fp16's 11: its bound follows a model's fp16 bound."""
    from edgecnn import models
    from edgecnn.export.parity import model_bounds, model_bound

    assert model_bounds()["bf16"] == pytest.approx(8 * 5e-3)
    assert model_bound("bf16", models.get_spec("mobilenet_v2")) == pytest.approx(8 * 2e-2)
    assert model_bounds({"bf16": 1e-2})["bf16"] == 1e-2  # a model may set its own
