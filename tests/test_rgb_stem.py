"""The int8 rewrite of the 7×7/2 RGB stem (export/rgb_stem.py): exact in float, applied only
where it fits, and in the quantized model the stem runs as integer convolutions with no float
detour, as accurately as the convolution it replaces."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error
from edgecnn.export import rgb_stem
from edgecnn.export.calibration import InputSet, random_inputs
from edgecnn.runtime.onnx_file import get_metadata, set_minimal_ir_version
from edgecnn.export.parity import compare
from edgecnn.export.quantize import quantize_model
from edgecnn.export.quantize_recipes import Int8Static, int8_rewrites, int8_static
from edgecnn.export.rgb_stem import find_stem, split_stem

RNG = np.random.default_rng(0)


def stem_model(channels=3, kernel=7, stride=2, pads=3, width=32, relu=True, filters=16,
               height=30) -> onnx.ModelProto:
    """image (N, channels, height, width) -> Conv (random weights and bias) [-> Relu] -> MaxPool."""
    weight = RNG.standard_normal((filters, channels, kernel, kernel)).astype(np.float32)
    bias = RNG.standard_normal(filters).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"], name="stem",
                              kernel_shape=[kernel, kernel], strides=[stride, stride],
                              pads=[pads] * 4)]
    if relu:
        nodes.append(helper.make_node("Relu", ["conv"], ["relu"], name="relu"))
    nodes.append(helper.make_node("MaxPool", [nodes[-1].output[0]], ["pooled"], name="pool",
                                  kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "stem",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", filters, "h", "w"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_minimal_ir_version(model)  # onnx's newest IR is newer than older onnxruntimes read
    return model


def run(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("height", [30, 31])
def test_split_stem_is_exact(relu, height):
    model = stem_model(relu=relu, height=height)
    stem = find_stem(model)
    assert stem is not None and (stem.relu is not None) == relu
    rewritten = split_stem(model, stem)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node].count("Conv") == 2
    inputs = RNG.standard_normal((2, 3, height, 32)).astype(np.float32)  # batch 2: dynamic axis
    expected, actual = run(model, inputs), run(rewritten, inputs)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
    assert len(model.graph.node) == 2 + relu  # the input model is left as it was


@pytest.mark.parametrize("change", [
    dict(channels=4), dict(kernel=5, pads=2), dict(stride=1), dict(pads=2), dict(width=30),
    dict(filters=12)], ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items()))
def test_find_stem_only_where_the_rewrite_fits(change):
    assert find_stem(stem_model(**change)) is None


def test_find_stem_needs_a_static_width():
    model = stem_model()
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    assert find_stem(model) is None


def test_branch_weights_place_every_tap_once():
    weight = RNG.standard_normal((8, 3, 7, 7)).astype(np.float32)
    branches = rgb_stem.branch_weights(weight)
    for quads in branches.values():
        assert quads.shape == (8, 12, 7, 2)
        # each of the 7 taps of each colour appears exactly once; the 8th slot is zero
        # (where each one goes: test_split_stem_is_exact)
        assert np.isclose(np.abs(quads).sum(), np.abs(weight).sum())
        assert (quads != 0).sum() == (weight != 0).sum()


# -- in the quantized model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized_pair(resnet18_64, tmp_path_factory):
    """resnet18-64 quantized with the rewrite and, for reference, without it."""
    work = tmp_path_factory.mktemp("stem")
    meta = get_metadata(onnx.load(str(resnet18_64)))
    calibration = work / "calib.npy"
    np.save(calibration, random_inputs(meta.input, 24, seed=1))
    split = quantize_model(resnet18_64, work / "split.onnx", calibration=calibration)
    # Tuned for OpenVINO, which runs the plain stem faster (docs/openvino.md): no rewrite.
    whole = quantize_model(resnet18_64, work / "whole.onnx", calibration=calibration,
                           target="openvino")
    return split, whole, random_inputs(meta.input, 8, seed=2)


def optimized_graph(path, work) -> onnx.GraphProto:
    """The graph onnxruntime's CPU provider runs (what its QDQ fusions made of the file)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(work / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(work / "optimized.onnx")).graph


def test_quantized_stem_runs_in_integers(quantized_pair, tmp_path):
    split, _, _ = quantized_pair
    graph = optimized_graph(split.path, tmp_path)
    first_pool = next(i for i, node in enumerate(graph.node) if "MaxPool" in node.op_type)
    stem_ops = [node.op_type for node in graph.node[:first_pool]]
    # Float input -> uint8 once; then only integer ops up to the max-pool.
    assert stem_ops.count("QuantizeLinear") == 1 and "DequantizeLinear" not in stem_ops
    assert stem_ops.count("QLinearConv") == 2 and "Conv" not in stem_ops
    # the shift and the interleaving run on the uint8 tensors, with no float detour
    assert stem_ops.count("Pad") == stem_ops.count("Concat") == 1 and "QLinearConcat" not in stem_ops
    # in the file: uint8 in (from QuantizeLinear), uint8 out (to DequantizeLinear)
    file_graph = onnx.load(str(split.path)).graph
    producers = {output: node.op_type for node in file_graph.node for output in node.output}
    for op_type, data_inputs in (("Pad", 1), ("Concat", 2)):
        node = next(node for node in file_graph.node if node.op_type == op_type)
        assert [producers[name] for name in node.input[:data_inputs]] == ["QuantizeLinear"] * data_inputs
        assert {n.op_type for n in file_graph.node if node.output[0] in n.input} == {"DequantizeLinear"}


def test_split_stem_is_as_accurate_as_the_whole_conv(quantized_pair, resnet18_64):
    split, whole, inputs = quantized_pair
    assert split.quantization["graph_rewrites"] == [rgb_stem.DESCRIPTION]
    assert "graph_rewrites" not in whole.quantization
    assert (split.quantization["target"], whole.quantization["target"]) == ("cpu", "openvino")
    reference = run(onnx.load(str(resnet18_64)), inputs)
    split_error = compare(reference, run(onnx.load(str(split.path)), inputs)).rel_l2
    whole_error = compare(reference, run(onnx.load(str(whole.path)), inputs)).rel_l2
    # the same quantization grid for the stem's output; its weights are split per branch
    assert split_error <= 1.1 * whole_error, (split_error, whole_error)


def test_stem_kept_in_float_is_not_split_and_calibrates_apart(resnet18_64, tmp_path):
    """The --accuracy-budget search quantizes one model with the stem in int8 (split) and in
    float (not split) in turn, reusing the calibration cache: each graph gets its ranges."""
    source = onnx.load(str(resnet18_64))
    stem = find_stem(source)
    meta = get_metadata(source)
    calibration = InputSet(random_inputs(meta.input, 8, seed=1), "random", None, 8)
    cache = tmp_path / "calibration.json"
    split, split_float = int8_static(source, calibration, Int8Static(), [], cache)
    whole, whole_float = int8_static(source, calibration, Int8Static(), [stem.conv.name], cache)
    # the float models they were quantized from: the split rewrite, and the source itself
    assert whole_float is source and f"{stem.conv.name}_even" in {
        node.name for node in split_float.graph.node}
    recipe = Int8Static()
    assert int8_rewrites(source, [], recipe) == [rgb_stem.DESCRIPTION]
    assert int8_rewrites(source, [stem.conv.name], recipe) == []
    names = lambda model: {node.name for node in model.graph.node}
    assert stem.conv.name not in names(split) and stem.conv.name in names(whole)
    weights = {init.name: init for init in whole.graph.initializer}
    conv = next(node for node in whole.graph.node if node.name == stem.conv.name)
    assert weights[conv.input[1]].data_type == TensorProto.FLOAT
    inputs = random_inputs(meta.input, 4, seed=3)
    reference = run(source, inputs)
    for model in (split, whole):
        assert compare(reference, run(model, inputs)).sqnr_db > 20  # as in test_quantize.py


def test_quantize_target_option(cli, resnet18_64, tmp_path):
    """`--target openvino` keeps the plain stem (one Conv reads the input); a target that is
    not a provider edgecnn tunes for is one line, exit 2, nothing written."""
    out = tmp_path / "ov.onnx"
    done = cli("quantize", resnet18_64, "-o", out, "--calibration", "random",
               "--calibration-size", "8", "--target", "openvino", "--json")
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["quantization"]["target"] == "openvino"
    assert "graph_rewrites" not in report["quantization"]
    graph = onnx.load(str(out)).graph
    assert not any(node.op_type in ("Pad", "Concat") for node in graph.node)
    done = cli("quantize", resnet18_64, "-o", tmp_path / "x.onnx", "--calibration", "random",
               "--target", "npu")
    assert_one_line_error(done, 2, "--target must be one of cpu, openvino, got 'npu'")
    done = cli("export", "resnet18", "--input-size", "64", "-o", tmp_path / "e.onnx",
               "--target", "openvino")
    assert_one_line_error(done, 2, "--target tunes the file that --quantize writes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov.onnx"]
    done = cli("export", "resnet18", "--input-size", "64", "-o", tmp_path / "e.onnx", "--quantize",
               "int8", "--calibration", "random", "--calibration-size", "8", "--target",
               "openvino", "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["quantization"]["quantization"]["target"] == "openvino"
