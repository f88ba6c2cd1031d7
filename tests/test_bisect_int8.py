"""`check --bisect` on int8 (QDQ) files: each module is judged on the dequantized tensor its
output became, so a clean file shows no divergence and a broken weight scale is still found."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import numpy_helper

from edgecnn.export.parity import INT8_SQNR_FLOOR_DB, sqnr_to_rel_l2

INT8_BOUND = sqnr_to_rel_l2(INT8_SQNR_FLOOR_DB)  # 0.1, the bound bisect uses for int8
BLOCKS = [f"layer{stage}.{block}" for stage in (1, 2, 3, 4) for block in (0, 1)]


@pytest.fixture(scope="module")
def resnet18_int8(zoo_onnx, tmp_path_factory):
    """resnet18 (64x64, seed 0) quantized to int8 QDQ, calibrated like `check` calibrates."""
    from edgecnn.export.check import convert_precision

    return convert_precision(zoo_onnx("resnet18"), "int8",
                             tmp_path_factory.mktemp("int8") / "r18.int8.onnx")


def _double_weight_scale(path, module: str, output):
    """A copy of the int8 file whose ``module`` conv dequantizes its weights at twice the scale."""
    model = onnx.load(str(path))
    scales = {node.input[0]: node.input[1] for node in model.graph.node
              if node.op_type == "DequantizeLinear"}
    name = next(scales[k] for k in scales if k.startswith(f"{module}.weight_quantized"))
    scale = next(i for i in model.graph.initializer if i.name == name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    onnx.save(model, str(output))
    return output


def test_clean_int8_resnet18_has_no_false_divergence(cli, resnet18_int8):
    result = cli("check", "resnet18", resnet18_int8, "--samples", "1", "--bisect", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["precision"] == "int8"
    assert summary["bisect"]["tolerance"] == pytest.approx(INT8_BOUND)
    assert summary["bisect"]["first_divergent"] is None, summary["bisect"]
    # None skipped: 8 blocks with their bn1/bn2, 3 downsamples and their BNs, 4 stages,
    # maxpool, avgpool, fc (the folded ReLUs and the quantizer's rewritten stem have no nodes).
    assert summary["bisect"]["compared_layers"] >= 37


def test_int8_blocks_are_compared_on_their_dequantized_outputs(resnet18_int8):
    """The block's closing ReLU is folded into a QuantizeLinear, so its last node (the Add)
    holds the pre-ReLU sum; the block's output is that Q's DequantizeLinear output."""
    from edgecnn.export.bisect import bisect
    from edgecnn.export.build import build_model, random_input

    model = onnx.load(str(resnet18_int8))
    dequantized = {node.output[0] for node in model.graph.node
                   if node.op_type == "DequantizeLinear"}
    x = random_input((2, 3, 64, 64), seed=1).numpy()
    result = bisect(build_model("resnet18", seed=0), model, x, INT8_BOUND)
    by_module = {(layer.module, layer.call): layer for layer in result.layers}
    for module in [*BLOCKS, *(f"{b}.bn1" for b in BLOCKS), *(f"{b}.bn2" for b in BLOCKS),
                   "maxpool", "fc"]:
        layer = by_module[(module, 0)]
        assert layer.tensor in dequantized, (module, layer.tensor)
        assert layer.metrics.rel_l2 <= INT8_BOUND, (module, layer.metrics)
    assert result.first_divergent is None


def test_int8_bisect_finds_a_doubled_weight_scale(cli, resnet18_int8, tmp_path):
    broken = _double_weight_scale(resnet18_int8, "layer2.1.conv1", tmp_path / "broken.onnx")
    result = cli("check", "resnet18", broken, "--samples", "1", "--bisect", "--json")
    summary = json.loads(result.stdout)
    first = summary["bisect"]["first_divergent"]
    # conv1 is folded into bn1 in the graph, so the divergence is reported under bn1's path.
    assert first is not None and first["module"] == "layer2.1.bn1", summary["bisect"]
    assert first["rel_l2"] > INT8_BOUND
