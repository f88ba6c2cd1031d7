"""edgecnn quantize: int8 static (QDQ), int8 dynamic and fp16 on exported models; the CLI;
calibration sources; --keep-float; bad input. Accuracy on real data: test_quantize_accuracy.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from onnx import numpy_helper
from PIL import Image
from tiny_models import tiny_model

from edgecnn.export.calibration import load_calibration, random_inputs
from edgecnn.export.parity import compare
from edgecnn.export.quantize import quantize_model
from edgecnn.export.quantize_recipes import _fully_typed, float16_weights
from edgecnn.runtime import Engine, ModelMetadata

RNG = np.random.default_rng(0)


def metadata_of(path: Path) -> ModelMetadata:
    model = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def io_names(path: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    return [v.name for v in graph.input], [v.name for v in graph.output]


@pytest.fixture(scope="module")
def calibration_npy(resnet18_64, tmp_path_factory) -> Path:
    """32 resnet18-64 inputs made from random pixels, preprocessed like images."""
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, random_inputs(metadata_of(resnet18_64).input, 32, seed=1))
    return path


@pytest.fixture(scope="module")
def resnet_int8(resnet18_64, calibration_npy, tmp_path_factory):
    progress = []
    output = tmp_path_factory.mktemp("int8") / "resnet18_int8.onnx"
    result = quantize_model(resnet18_64, output, calibration=calibration_npy, calibration_size=24,
                            on_progress=lambda task, done, total: progress.append((task, done, total)))
    return result, progress


@pytest.fixture(scope="module")
def resnet_fp16(resnet18_64, tmp_path_factory):
    return quantize_model(resnet18_64, tmp_path_factory.mktemp("fp16") / "resnet18_fp16.onnx",
                          mode="fp16")


# -- int8 static --------------------------------------------------------------------------------

def test_int8_static_is_qdq_per_channel_with_uint8_activations(resnet_int8, resnet18_64):
    result, _ = resnet_int8
    model = onnx.load(str(result.path))
    counts = Counter(node.op_type for node in model.graph.node)
    source_convs = op_counts(resnet18_64)["Conv"]
    # every conv kept, fed by DequantizeLinear; the RGB stem as two (export/rgb_stem.py)
    assert source_convs == 20 and counts["Conv"] == source_convs + 1
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for conv in (node for node in model.graph.node if node.op_type == "Conv"):
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        weight = initializers[weight_dq.input[0]]
        scale = numpy_helper.to_array(initializers[weight_dq.input[1]])
        assert weight.data_type == onnx.TensorProto.INT8
        assert scale.shape == (weight.dims[0],)  # one scale per output channel
        assert np.abs(numpy_helper.to_array(weight)).max() <= 64  # 7-bit (reduce_range)
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
    activation_zero_points = [numpy_helper.to_array(initializers[node.input[2]])
                              for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
    # Add, MaxPool and Gemm are quantized too (the whole graph stays integer on CPU).
    quantized_consumers = {node.op_type for node in model.graph.node
                           if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                                  for i in node.input)}
    assert {"Conv", "Add", "MaxPool", "Gemm"} <= quantized_consumers


def test_int8_metadata_names_and_size(resnet_int8, resnet18_64):
    result, progress = resnet_int8
    meta = metadata_of(result.path)
    assert meta.precision == "int8" and meta.model == "resnet18"
    assert meta.input == metadata_of(resnet18_64).input
    assert meta.quantization["method"] == "minmax"
    assert meta.quantization["calibration"] == "array"
    assert meta.quantization["calibration_size"] == 24
    assert meta.quantization["calibration_path"] == "calib.npy"
    assert io_names(result.path) == io_names(resnet18_64) == (["input"], ["logits"])
    assert result.size_ratio <= 0.26
    # 24 samples in equal batches of at most 16 (dynamic batch axis: 12 + 12): 0, 12, 24 run;
    # then the bias correction, conv after conv (resnet18's 20, the RGB stem split in two: 21).
    assert progress[:3] == [("calibrating", 0, 24), ("calibrating", 12, 24),
                            ("calibrating", 24, 24)]
    assert progress[3:] == [("correcting biases", done, 21) for done in range(1, 22)]


def test_int8_agrees_with_fp32_on_unseen_inputs(resnet_int8, resnet18_64):
    result, _ = resnet_int8
    x = random_inputs(metadata_of(resnet18_64).input, 8, seed=99)
    fp32 = Engine(resnet18_64, threads=1).run(x)["logits"]
    int8 = Engine(result.path, threads=1).run(x)["logits"]
    metrics = compare(fp32, int8)
    # Random weights, 20 quantized convs: measured 30 dB; 20 dB still means the logits agree
    # to 10% in norm, while a broken scale (e.g. calibration ignored) gives < 5 dB.
    assert metrics.sqnr_db > 20
    assert result.parity.sqnr_db > 20


# -- fp16, int8 dynamic ---------------------------------------------------------------------

def test_fp16_keeps_float32_io_and_matches(resnet_fp16, resnet18_64):
    meta = metadata_of(resnet_fp16.path)
    assert meta.precision == "fp16" and meta.quantization["io"] == "float32"
    model = onnx.load(str(resnet_fp16.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = [init for init in model.graph.initializer if len(init.dims) == 4]
    assert conv_weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in conv_weights)
    assert 0.49 < resnet_fp16.size_ratio < 0.51
    x = random_inputs(meta.input, 4, seed=5)
    metrics = compare(Engine(resnet18_64, threads=1).run(x)["logits"],
                      Engine(resnet_fp16.path, threads=1).run(x)["logits"])
    assert metrics.rel_l2 <= 5e-3 and metrics.top1_agreement == 1.0


def test_fp16_of_a_model_without_value_info(resnet_fp16, resnet18_64, tmp_path):
    """A file without intermediate types (not from edgecnn) goes through the converter's own
    shape inference and gives the same fp16 model as the fully typed export."""
    bare = onnx.load(str(resnet18_64))
    del bare.graph.value_info[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    converted = quantize_model(tmp_path / "bare.onnx", tmp_path / "bare16.onnx", mode="fp16")
    assert _fully_typed(onnx.load(str(resnet18_64))) and not _fully_typed(bare)
    x = random_inputs(metadata_of(resnet18_64).input, 2, seed=6)
    np.testing.assert_array_equal(Engine(converted.path, threads=1).run(x)["logits"],
                                  Engine(resnet_fp16.path, threads=1).run(x)["logits"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fp16_weights_map_like_onnxruntime_in_a_fraction_of_its_time(dtype):
    """The converter's weight mapping (tiny values to fp16's smallest, large finite ones to its
    largest, 0, inf and NaN kept), bit for bit, on every edge and on 16M random weights (a
    VGG's fc layers hold 100M), in under half the time (measured: a fifth)."""
    import time

    from onnxruntime.transformers import float16

    edges = [0.0, -0.0, 1e-9, -1e-9, 5.96e-08, -5.96e-08, 1e-7, 65504.0, -65504.0, 7e4, -7e4,
             3e38, -3e38, np.inf, -np.inf, np.nan, 1.0, -2.5, 6.1e-5]
    values = np.concatenate([np.array(edges), RNG.standard_normal(16_000_000) * 3]).astype(dtype)
    started = time.perf_counter()
    expected = float16.convert_np_to_float16(values)
    theirs = time.perf_counter() - started
    started = time.perf_counter()
    mapped = float16_weights(values)
    ours = time.perf_counter() - started
    assert mapped.dtype == np.float16
    np.testing.assert_array_equal(mapped.view(np.uint16), expected.view(np.uint16))
    assert ours < theirs / 2, (ours, theirs)


def test_fp16_io_option_and_dynamic_int8(cli, resnet18_64, tmp_path):
    fp16_io = tmp_path / "fp16_io.onnx"
    assert cli("quantize", resnet18_64, "-o", fp16_io, "--mode", "fp16", "--fp16-io").code == 0
    model = onnx.load(str(fp16_io))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert io_names(fp16_io) == (["input"], ["logits"])

    dynamic = tmp_path / "dynamic.onnx"
    done = cli("quantize", resnet18_64, "-o", dynamic, "--mode", "int8-dynamic", "--json")
    assert done.code == 0 and done.stderr == ""
    report = json.loads(done.stdout)
    assert report["precision"] == "int8" and report["quantization"]["mode"] == "dynamic"
    assert op_counts(dynamic)["DynamicQuantizeLinear"] > 0
    assert report["size_ratio"] <= 0.26 and report["parity"]["top1_agreement"] == 1.0


# -- CLI, metadata, info ----------------------------------------------------------------------

def test_cli_quantize_json_and_info(cli, resnet_int8, calibration_npy, resnet18_64, tmp_path):
    output = tmp_path / "q.onnx"
    done = cli("quantize", resnet18_64, "-o", output, "--calibration", calibration_npy,
               "--calibration-size", "16", "--method", "percentile", "--json")
    assert done.code == 0, done.stderr
    assert done.stderr == ""  # no progress, no warning under --json with real calibration data
    report = json.loads(done.stdout)
    assert report["quantization"]["method"] == "percentile"
    assert report["quantization"]["calibration_size"] == 16
    info = cli("info", output)
    assert info.code == 0
    assert "precision     int8" in info.stdout and "method=percentile" in info.stdout
    lines = info.stdout.splitlines()
    assert "              method=percentile" in lines  # one quantization field per line
    assert all(line == line.rstrip() for line in lines)  # nothing padded for a pipe
    info_json = json.loads(cli("info", output, "--json").stdout)
    assert info_json["metadata"]["precision"] == "int8"


def test_random_calibration_warns(cli, resnet18_64, tmp_path):
    output = tmp_path / "random.onnx"
    done = cli("quantize", resnet18_64, "-o", output, "--calibration", "random",
               "--calibration-size", "4", "--json")
    assert done.code == 0
    assert "warning: calibrating on random inputs" in done.stderr
    assert "accuracy is not guaranteed" in done.stderr
    report = json.loads(done.stdout)
    assert report["quantization"]["calibration"] == "random"
    assert any("random" in message for message in report["warnings"])


def test_keep_float_by_op_type_and_node_name(resnet18_64, calibration_npy, tmp_path):
    source = onnx.load(str(resnet18_64))
    first_conv = next(node.name for node in source.graph.node if node.op_type == "Conv")
    result = quantize_model(resnet18_64, tmp_path / "keep.onnx", calibration=calibration_npy,
                            calibration_size=8, keep_float=["Gemm", first_conv])
    model = onnx.load(str(result.path))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    kept = {node.name: node for node in model.graph.node if node.name in result.kept_float}
    assert set(kept) == {first_conv, next(n.name for n in source.graph.node if n.op_type == "Gemm")}
    initializers = {init.name: init for init in model.graph.initializer}
    for node in kept.values():  # float weights straight from an fp32 initializer, no DQ
        assert initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT
        assert producers.get(node.input[1]) is None
    assert metadata_of(result.path).quantization["kept_float"] == result.kept_float


def test_image_folder_calibration_uses_runtime_preprocessing(zoo_onnx, tmp_path):
    lenet5 = zoo_onnx("lenet5")
    folder = tmp_path / "images" / "class_a"
    folder.mkdir(parents=True)
    for index in range(6):
        Image.fromarray(RNG.integers(0, 256, (40, 30), dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    warnings = []
    info = metadata_of(lenet5).input
    calibration = load_calibration(tmp_path / "images", info, size=None, warn=warnings.append)
    assert calibration.inputs.shape == (6, 1, 28, 28) and calibration.skipped == 1
    assert warnings == [f"skipped 1 unreadable image file(s) in {tmp_path / 'images'}"]
    from edgecnn.runtime.preprocess import preprocess_images
    expected = preprocess_images(sorted(folder.glob("*.png")), info)
    np.testing.assert_array_equal(calibration.inputs, expected)
    subset = load_calibration(tmp_path / "images", info, size=3, seed=0)
    assert subset.inputs.shape == (3, 1, 28, 28) and subset.available == 7
    # A seeded random subset, not the first files: the first 3 readable ones in the seed's
    # shuffle of the 7 sorted files (index 6, broken.jpg, is skipped), in file order.
    picked = sorted([i for i in np.random.default_rng(0).permutation(7) if i != 6][:3])
    assert picked != [0, 1, 2]
    np.testing.assert_array_equal(subset.inputs, expected[picked])


def test_export_quantize_writes_only_the_quantized_file(cli, tmp_path):
    output = tmp_path / "lenet5_int8.onnx"
    done = cli("export", "lenet5", "-o", output, "--quantize", "int8", "--calibration", "random",
               "--calibration-size", "8", "--json")
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["path"] == str(output) and report["quantization"]["precision"] == "int8"
    assert [path.name for path in tmp_path.iterdir()] == ["lenet5_int8.onnx"]
    assert metadata_of(output).precision == "int8"
    assert report["size_bytes"] == output.stat().st_size


def test_export_quantize_no_check_skips_every_comparison(cli, tmp_path):
    output = tmp_path / "lenet_fp16.onnx"
    done = cli("export", "lenet", "-o", output, "--quantize", "fp16", "--no-check", "--json")
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["parity"] is None and report["quantization"]["parity"] is None
    assert metadata_of(output).precision == "fp16"


def test_model_without_metadata_takes_flags(cli, tmp_path):
    bare = tiny_model(tmp_path / "bare.onnx", metadata=False, size=(16, 16), classes=8)
    output = tmp_path / "bare_int8.onnx"
    done = cli("quantize", bare.path, "-o", output, "--calibration", "random",
               "--calibration-size", "4", "--mean", "0.5", "0.5", "0.5", "--std", "0.25,0.25,0.25")
    assert done.code == 0, done.stderr
    meta = metadata_of(output)
    assert meta.precision == "int8" and meta.input.shape == [3, 16, 16]
    assert meta.input.mean == [0.5] * 3 and meta.input.std == [0.25] * 3


# -- bad input: one line, exit 2, nothing written -------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    unreadable = root / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"\x89PNG garbage")
    (unreadable / "b.jpg").write_bytes(b"")
    np.save(root / "wrong.npy", np.zeros((4, 3, 32, 32), np.float32))
    tiny_model(root / "bare.onnx", metadata=False)
    return root


@pytest.mark.parametrize("args, fragments", [
    (["--calibration", "{root}/missing"], ["calibration folder not found", "missing"]),
    (["--calibration", "{root}/empty"], ["has no .jpg/.jpeg/.png/"]),
    (["--calibration", "{root}/unreadable"], ["none of the 2 image files could be read"]),
    (["--calibration", "{root}/wrong.npy"], ["array shape [4, 3, 32, 32] is not the model's input [N, 3, 64, 64]"]),
    (["--calibration", "random", "--keep-float", "NoSuchOp"], ["neither a node name nor an op type"]),
    (["--calibration", "random", "--keep-float", "Conw"], ["close names: Conv"]),
    (["--mode", "int4"], ["--mode must be one of int8, int8-dynamic, fp16"]),
    ([], ["int8 needs calibration data"]),
    (["--calibration", "random", "--accuracy-budget", "1"], ["--accuracy-budget needs a validation set"]),
])
def test_bad_input_is_one_line_exit_2(cli, bad_inputs, resnet18_64, tmp_path, args, fragments):
    output = tmp_path / "out.onnx"
    args = [arg.format(root=bad_inputs) for arg in args]
    assert_one_line_error(cli("quantize", resnet18_64, "-o", output, *args), 2, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["quantize", "--mode", "fp16"], ["export"]])
def test_an_empty_output_path_is_bad_input_not_the_default(cli, resnet18_64, tmp_path,
                                                           monkeypatch, command):
    """-o "" (an unset shell variable) wrote the default name in the current folder."""
    monkeypatch.chdir(tmp_path)
    source = [resnet18_64] if command[0] == "quantize" else ["lenet"]
    assert_one_line_error(cli(command[0], *source, "-o", "", *command[1:]), 2,
                          "--output is an empty path")
    assert list(tmp_path.iterdir()) == []


def test_no_metadata_and_already_quantized_are_refused(cli, bad_inputs, resnet_int8, resnet_fp16, tmp_path):
    output = tmp_path / "out.onnx"
    bare = bad_inputs / "bare.onnx"
    # fp16 reads no image: a file without metadata needs no preprocessing flags, and a mean of
    # the wrong count is still an error
    assert_one_line_error(cli("quantize", bare, "-o", output, "--mode", "fp16", "--mean", "0.5"), 2,
                          "--mean must be a list of one number per channel (3)")
    result, _ = resnet_int8
    assert_one_line_error(cli("quantize", result.path, "-o", output, "--mode", "fp16"), 2,
                          "is already int8; quantize the fp32 model instead")
    assert_one_line_error(cli("quantize", resnet_fp16.path, "-o", output, "--calibration", "random"),
                          2, "is already fp16")
    # Without the metadata the graph itself gives it away.
    stripped = onnx.load(str(result.path))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "stripped.onnx"))
    assert_one_line_error(cli("quantize", tmp_path / "stripped.onnx", "-o", output, "--mode", "fp16",
                              "--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"), 2,
                          "is already quantized (it has DequantizeLinear, QuantizeLinear nodes)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stripped.onnx"]


# -- the ai.edgecnn::DeformConv2d custom op ---------------------------------------------------

def _deform_nodes(model: onnx.ModelProto) -> list:
    return [node for node in model.graph.node if (node.domain, node.op_type) == ("ai.edgecnn", "DeformConv2d")]


def _reaches_quantize(model: onnx.ModelProto, tensor: str) -> bool:
    """Following float ops downstream from ``tensor``, is there a QuantizeLinear?"""
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier, seen = [tensor], set()
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type == "QuantizeLinear":
                return True
            if node.name not in seen and node.op_type != "DeformConv2d":
                seen.add(node.name)
                frontier += list(node.output)
    return False


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_custom_op_stays_float_and_agrees(zoo_onnx, tmp_path, mode):
    source = zoo_onnx("deform_testnet")
    output = tmp_path / f"deform_{mode}.onnx"
    result = quantize_model(source, output, mode=mode, calibration="random" if mode == "int8" else None,
                            calibration_size=64, on_warning=lambda message: None)
    model = onnx.load(str(output))
    fp32_nodes = _deform_nodes(onnx.load(str(source)))
    nodes = _deform_nodes(model)
    assert len(nodes) == len(fp32_nodes) == 2  # not inlined, not dropped
    assert [f"{f.domain}::{f.name}" for f in model.functions] == ["ai.edgecnn::DeformConv2d"]
    assert {imp.domain: imp.version for imp in model.opset_import}["ai.edgecnn"] == 1
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    for node in nodes:
        weight = node.input[1]
        if mode == "int8":
            # Float in, float out: activations arrive through DequantizeLinear, the weight is
            # an fp32 initializer, and the result is re-quantized further down.
            assert producers[node.input[0]] == producers[node.input[2]] == "DequantizeLinear"
            assert initializers[weight].data_type == onnx.TensorProto.FLOAT
            assert _reaches_quantize(model, node.output[0])
        else:
            assert all(producers[name] == "Cast" for name in node.input if name)
    assert metadata_of(output).precision == ("int8" if mode == "int8" else "fp16")
    x = random_inputs(metadata_of(source).input, 16, seed=42)
    metrics = compare(Engine(source, threads=1).run(x)["logits"], Engine(output, threads=1).run(x)["logits"])
    assert metrics.top1_agreement == 1.0
    # Measured on these unseen inputs: int8 49 dB, fp16 71 dB.
    assert metrics.sqnr_db > (30 if mode == "int8" else 55)
    assert result.parity.top1_agreement == 1.0


def test_validation_sources(tmp_path):
    from edgecnn.errors import BadInput
    from edgecnn.export.calibration import load_validation
    from edgecnn.runtime import InputInfo

    info = InputInfo(shape=[1, 8, 8], color="GRAY", mean=[0.5], std=[0.5])
    for folder, count in (("one", 2), ("zero", 3)):
        (tmp_path / "val" / folder).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                tmp_path / "val" / folder / f"{index}.png")
    by_order = load_validation(tmp_path / "val", info)  # no labels: sorted folder order
    assert by_order.inputs.shape == (5, 1, 8, 8) and by_order.labels.tolist() == [0, 0, 1, 1, 1]
    by_name = load_validation(tmp_path / "val", info, ["zero", "one"])  # the model's labels
    assert by_name.labels.tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(BadInput, match="sub-folder\\(s\\) one are not labels of the model"):
        load_validation(tmp_path / "val", info, ["zero", "two"])
    (tmp_path / "val" / "one" / "broken.png").write_bytes(b"not a png")
    warnings = []
    with_broken = load_validation(tmp_path / "val", info, warn=warnings.append)
    assert with_broken.skipped == 1 and warnings == [f"skipped 1 unreadable image file(s) in {tmp_path / 'val'}"]
    np.testing.assert_array_equal(with_broken.inputs, by_order.inputs)  # labels stay aligned
    assert with_broken.labels.tolist() == by_order.labels.tolist()
    (tmp_path / "val" / "one" / "broken.png").unlink()
    np.savez(tmp_path / "val.npz", inputs=by_order.inputs, labels=by_order.labels)
    from_array = load_validation(tmp_path / "val.npz", info)
    np.testing.assert_array_equal(from_array.inputs, by_order.inputs)
    assert from_array.labels.tolist() == by_order.labels.tolist()
    np.save(tmp_path / "val.npy", by_order.inputs)
    with pytest.raises(BadInput, match="a validation set needs labels"):
        load_validation(tmp_path / "val.npy", info)
    np.savez(tmp_path / "bad.npz", inputs=by_order.inputs, labels=np.zeros(3, np.int64))
    with pytest.raises(BadInput, match="labels must be 5 integers"):
        load_validation(tmp_path / "bad.npz", info)


def test_constant_calibration_data_warns(zoo_onnx):
    """All-zero (or any constant) calibration fits the scales to nothing the model will see;
    quantize's comparison on the same rows then passes (it said nothing)."""
    warnings = []
    info = metadata_of(zoo_onnx("lenet5")).input
    load_calibration(np.zeros((8, 1, 28, 28), np.float32), info, warn=warnings.append)
    assert warnings == ["calibration data is constant (every value 0): the int8 scales fit "
                        "nothing the model will see; give real inputs"]
    warnings.clear()
    load_calibration(RNG.standard_normal((8, 1, 28, 28)).astype(np.float32), info,
                     warn=warnings.append)
    assert warnings == []
