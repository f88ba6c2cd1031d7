"""Files edgecnn did not write: `info`, `run`, `bench` and the Engine on plain torch.onnx.export
output (dynamo with external data, legacy opset 13 with `input.1`), NHWC, dynamic H/W, several
inputs and outputs, and no edgecnn metadata (preprocessing from flags / ``preprocessing=``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, load, save
from PIL import Image

from conftest import assert_one_line_error
from foreign_models import CLASSES, TinyClassifier, TwoInputsTwoOutputs, export_dynamo, export_legacy

from edgecnn.errors import BadInput
from edgecnn.runtime import Engine, InputInfo
from edgecnn.runtime.postprocess import softmax
from edgecnn.runtime.preprocess import preprocess_images

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("foreign")
    x = torch.randn(1, 3, 32, 32)
    return {
        "dynamo": export_dynamo(TinyClassifier(), folder / "dynamo.onnx", (x,)),
        "dynamo_dynamic_hw": export_dynamo(TinyClassifier(), folder / "dynamic.onnx",
                                           (torch.randn(2, 3, 32, 32),), dynamic_hw=True),
        "legacy": export_legacy(TinyClassifier(), folder / "legacy.onnx", (x,)),
        "legacy_nhwc": export_legacy(TinyClassifier(nhwc=True), folder / "nhwc.onnx",
                                     (torch.randn(1, 32, 32, 3),)),
        "legacy_dynamic_nhwc": export_legacy(TinyClassifier(nhwc=True), folder / "nhwc_hw.onnx",
                                             (torch.randn(1, 32, 32, 3),), dynamic_hw=True,
                                             input_names=["pixels"]),
        "two_inputs": export_legacy(TwoInputsTwoOutputs(), folder / "two.onnx",
                                    (x, torch.ones(1, 1)), input_names=["image", "scale"],
                                    output_names=["logits", "features"]),
    }


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return path


def _torch(module, *arrays):
    with torch.no_grad():
        result = module.eval()(*map(torch.from_numpy, arrays))
    return [t.numpy() for t in result] if isinstance(result, tuple) else [result.numpy()]


@pytest.mark.parametrize("name, shape, nhwc", [
    ("dynamo", (1, 3, 32, 32), False), ("dynamo_dynamic_hw", (3, 3, 24, 40), False),
    ("legacy", (1, 3, 32, 32), False), ("legacy_nhwc", (1, 32, 32, 3), True),
    ("legacy_dynamic_nhwc", (2, 20, 28, 3), True)])
def test_engine_runs_foreign_files_like_torch(files, name, shape, nhwc):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    engine = Engine(files[name], "cpu")
    assert engine.metadata is None
    outputs = engine.run(x)
    np.testing.assert_allclose(next(iter(outputs.values())), _torch(TinyClassifier(nhwc=nhwc), x)[0],
                               rtol=1e-4, atol=1e-5)


def test_legacy_input_name_is_used(files):
    engine = Engine(files["legacy"], "cpu", preprocessing={"mean": MEAN})
    assert [spec.name for spec in engine.inputs] == ["input.1"]
    assert engine.metadata.input.name == "input.1"
    assert len(engine.predict(np.zeros((30, 30, 3), np.uint8), top_k=2)) == 2


def _expected_top(photo: Path, module, info: InputInfo) -> list[int]:
    batch = preprocess_images([photo], info)
    probabilities = softmax(_torch(module, batch)[0])[0]
    return [int(index) for index in np.argsort(-probabilities, kind="stable")]


@pytest.mark.parametrize("form", [["--mean", *map(str, MEAN), "--std", *map(str, STD)],
                                  ["--mean", ",".join(map(str, MEAN)), "--std=" + ",".join(map(str, STD))]])
def test_run_takes_the_preprocessing_flags(cli, files, photo, form):
    result = cli("run", files["dynamo"], photo, "--json", "--provider", "cpu",
                 "--top-k", CLASSES, *form)
    assert result.code == 0, result.stderr
    ranks = [entry["index"] for entry in json.loads(result.stdout)["results"][0]["top_k"]]
    info = InputInfo(name="input", shape=[3, 32, 32], mean=MEAN, std=STD)
    assert ranks == _expected_top(photo, TinyClassifier(), info)


def test_run_nhwc_and_bgr_files(cli, files, photo):
    result = cli("run", files["legacy_nhwc"], photo, "--json", "--color", "BGR", "--top-k", CLASSES,
                 "--crop-fraction", "1")
    assert result.code == 0, result.stderr
    ranks = [entry["index"] for entry in json.loads(result.stdout)["results"][0]["top_k"]]
    rgb = InputInfo(name="input.1", shape=[3, 32, 32], layout="NHWC", crop_fraction=1.0)
    batch = preprocess_images([photo], rgb)
    mean, std = np.float32(rgb.mean), np.float32(rgb.std)
    bgr = ((batch * std + mean)[..., ::-1] - mean) / std  # the BGR pixels, normalized alike
    expected = np.argsort(-_torch(TinyClassifier(nhwc=True), np.ascontiguousarray(bgr))[0][0],
                          kind="stable")
    assert ranks == [int(index) for index in expected]


def test_run_without_metadata_or_flags_names_them(cli, files, photo):
    assert_one_line_error(cli("run", files["dynamo"], photo), 2, "no edgecnn metadata",
                          "--mean --std --input-size", "--input-name", "edgecnn annotate")


def test_dynamic_height_width_needs_an_input_size(cli, files, photo):
    assert_one_line_error(cli("run", files["dynamo_dynamic_hw"], photo, "--mean", "0.5", "0.5",
                              "0.5"), 2, "--input-size is needed", "dynamic height or width")
    result = cli("run", files["dynamo_dynamic_hw"], photo, "--input-size", "48", "40", "--json",
                 "--top-k", CLASSES)
    assert result.code == 0, result.stderr
    ranks = [entry["index"] for entry in json.loads(result.stdout)["results"][0]["top_k"]]
    assert ranks == _expected_top(photo, TinyClassifier(), InputInfo(shape=[3, 48, 40]))
    nhwc = cli("run", files["legacy_dynamic_nhwc"], photo, "--input-size", "36", "--layout",
               "nhwc", "--json")
    assert nhwc.code == 0, nhwc.stderr


def test_an_input_size_against_the_fixed_graph_is_one_line(cli, files, photo):
    assert_one_line_error(cli("run", files["dynamo"], photo, "--input-size", "64"), 2,
                          "--input-size must match the fixed height 32")


@pytest.mark.parametrize("args, fragment", [
    (["--mean", "0.5", "0.5"], "--mean must be a list of one number per channel (3)"),
    (["--std", "0.2", "0", "0.2"], "--std must be > 0"),
    (["--mean", "nan", "0", "0"], "--mean must be a finite number"),
    (["--color", "GRAY"], "--color must be RGB or BGR for a 3-channel input, got 'GRAY'"),
    (["--crop-fraction", "1.5"], "--crop-fraction must be in [0.05, 1]"),
    (["--task", "detection"], "--task must be one of classification, segmentation"),
    (["--input-name", "image"], "--input-name must be one of the graph's inputs ('input')"),
    (["--scale", "0"], "--scale must be > 0"),
])
def test_bad_preprocessing_flags_are_one_line(cli, files, photo, args, fragment):
    assert_one_line_error(cli("run", files["dynamo"], photo, *args), 2, fragment)


def test_several_inputs_and_outputs(cli, files, photo):
    two = files["two_inputs"]
    assert_one_line_error(cli("run", two, photo), 2, "no edgecnn metadata", "--input-name")
    assert_one_line_error(cli("run", two, photo, "--crop-fraction", "1"), 2,
                          "--input-name is needed", "2 inputs ('image', 'scale')")
    assert_one_line_error(cli("run", two, photo, "--input-name", "image"), 2,
                          "predict feeds images to 'image' only", "'scale'", "Engine.run")
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    scale = np.full((1, 1), 2.0, np.float32)
    outputs = Engine(two, "cpu").run({"image": image, "scale": scale})
    for got, want in zip(outputs.values(), _torch(TwoInputsTwoOutputs(), image, scale)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    info = json.loads(cli("info", two, "--json").stdout)
    assert [value["name"] for value in info["inputs"]] == ["image", "scale"]
    assert [value["name"] for value in info["outputs"]] == ["logits", "features"]
    bench = cli("bench", two, "--runs", "2", "--warmup", "0", "--json")
    assert bench.code == 0, bench.stderr
    bench = json.loads(bench.stdout)
    assert bench["batch"] == 1 and bench["latency_ms"]["p50"] > 0


def test_info_counts_the_external_data(cli, files, tmp_path):
    model = files["dynamo"]
    data = model.parent / "dynamo.onnx.data"
    info = json.loads(cli("info", model, "--json").stdout)
    assert info["size_bytes"] == model.stat().st_size + data.stat().st_size
    assert info["external_data"] == ["dynamo.onnx.data"] and info["metadata"] is None
    text = cli("info", model).stdout
    assert "with its external data dynamo.onnx.data" in text and "edgecnn annotate" in text
    # what edgecnn's exporter does to BatchNorm says nothing of a file another tool wrote,
    # even once edgecnn's metadata is written into it
    assert "BatchNorm" not in text and f"{info['parameters']:,} values in" in text
    annotated = tmp_path / "annotated.onnx"
    assert cli("annotate", files["legacy"], "-o", annotated).code == 0
    text = cli("info", annotated).stdout
    assert "preprocess" in text and "BatchNorm" not in text  # the metadata's rows, no claim


@pytest.mark.parametrize("name", ["dynamo", "legacy", "legacy_nhwc"])
def test_bench_on_fixed_foreign_files(cli, files, name):
    result = cli("bench", files[name], "--runs", "2", "--warmup", "0", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["batch"] == 1


def test_bench_sizes_dynamic_axes_from_the_flags(cli, files):
    model = files["dynamo_dynamic_hw"]
    assert_one_line_error(cli("bench", model, "--runs", "1"), 2, "dynamic axis 2",
                          "--input-size", "edgecnn annotate")
    result = cli("bench", model, "--runs", "2", "--warmup", "0", "--input-size", "40", "24",
                 "--batch", "3", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["batch"] == 3
    nhwc = cli("bench", files["legacy_dynamic_nhwc"], "--runs", "1", "--warmup", "0",
               "--input-size", "20", "--layout", "NHWC", "--json")
    assert nhwc.code == 0, nhwc.stderr
    assert json.loads(nhwc.stdout)["batch"] == 1
    from edgecnn.runtime.bench import random_inputs  # H and W where NHWC has them (was 3x20)

    engine = Engine(files["legacy_dynamic_nhwc"], "cpu",
                    preprocessing={"input_size": [20, 24], "layout": "NHWC"})
    assert random_inputs(engine, 2)["pixels"].shape == (2, 20, 24, 3)


def test_engine_preprocessing_messages_name_the_setting(files):
    with pytest.raises(BadInput, match=r"^mean must be a list of one number per channel"):
        Engine(files["dynamo"], "cpu", preprocessing={"mean": [0.5]})
    with pytest.raises(BadInput, match=r"^preprocessing has no setting 'means'"):
        Engine(files["dynamo"], "cpu", preprocessing={"means": [0.5]})
    with pytest.raises(BadInput, match=r"^input_size is needed"):
        Engine(files["dynamo_dynamic_hw"], "cpu", preprocessing={"color": "RGB"})
    engine = Engine(files["legacy_nhwc"], "cpu", preprocessing={"std": (0.5, 0.5, 0.5)})
    assert engine.metadata.input.layout == "NHWC" and engine.metadata.input.shape == [3, 32, 32]
    assert engine.metadata.task == "classification" and engine.metadata.input.color == "RGB"


@pytest.fixture(scope="module")
def softmax_files(tmp_path_factory, files) -> dict[str, Path]:
    """Files that end in Softmax: both exporters, and edgecnn's int8 of one (QDQ after it)."""
    from edgecnn.export.quantize import quantize_model

    folder = tmp_path_factory.mktemp("softmax")
    x = torch.randn(1, 3, 32, 32)
    made = {"dynamo": export_dynamo(TinyClassifier(softmax=True), folder / "dynamo.onnx", (x,)),
            "legacy": export_legacy(TinyClassifier(softmax=True), folder / "legacy.onnx", (x,))}
    inputs = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    made["int8"] = quantize_model(made["legacy"], folder / "int8.onnx", calibration=inputs,
                                  check=False).path
    return made


@pytest.mark.parametrize("name", ["dynamo", "legacy", "int8"])
def test_a_model_that_ends_in_softmax_is_not_softmaxed_again(cli, softmax_files, photo, name):
    """Its output is probabilities already: run reports them as they are (a second softmax
    squashed them towards 1/classes: 0.29 became 0.22 here, and 0.9 of 1000 classes 0.0025)."""
    engine = Engine(softmax_files[name], "cpu", preprocessing={"mean": MEAN, "std": STD})
    assert engine.scores_are_probabilities
    expected = engine.scores(preprocess_images([photo], engine.metadata.input))[0]
    assert abs(expected.sum() - 1) < 0.05  # the file's own softmax
    best = engine.predict(photo, top_k=CLASSES, labelled=False)
    assert [index for index, _ in best] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([p for _, p in best], np.sort(expected)[::-1], rtol=1e-6)
    result = cli("run", softmax_files[name], photo, "--json", "--provider", "cpu",
                 "--top-k", CLASSES, "--mean", *map(str, MEAN), "--std", *map(str, STD))
    assert result.code == 0, result.stderr
    reported = [entry["probability"] for entry in json.loads(result.stdout)["results"][0]["top_k"]]
    np.testing.assert_allclose(reported, np.sort(expected)[::-1], atol=1e-6)


def test_logits_still_become_probabilities(files, photo):
    engine = Engine(files["legacy"], "cpu", preprocessing={"mean": MEAN, "std": STD})
    assert not engine.scores_are_probabilities
    logits = engine.scores(preprocess_images([photo], engine.metadata.input))[0]
    best = engine.predict(photo, top_k=1, labelled=False)
    np.testing.assert_allclose(best[0][1], softmax(logits).max(), rtol=1e-6)


def _labelled_folder(tmp_path: Path, photo: Path) -> Path:
    """An ImageFolder of the photo once per class (sub-folders 0 .. CLASSES - 1)."""
    labelled = tmp_path / "labelled"
    for index in range(CLASSES):
        (labelled / str(index)).mkdir(parents=True)
        (labelled / str(index) / "a.png").write_bytes(photo.read_bytes())
    return labelled


def _pooled_classifier(tmp_path: Path, last: list) -> Path:
    """A SqueezeNet-shaped file: conv -> global pooling, its output (1, 5, 1, 1), then ``last``
    (nodes from "pooled" to "out")."""
    from onnx import numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((CLASSES, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["data", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"] if last else ["out"]),
             *last]
    graph = helper.make_graph(
        nodes, "pooled", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, CLASSES, 1, 1])], [weight])
    path = tmp_path / "pooled.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    return path


@pytest.mark.parametrize("last, probabilities", [
    ([], False), ([helper.make_node("Softmax", ["pooled"], ["out"], axis=1)], True)])
def test_a_class_vector_of_n_classes_1_1_is_classification(cli, tmp_path, photo, last,
                                                           probabilities):
    """(N, classes, 1, 1), as SqueezeNet's published files give it, is one score per class:
    classification by default, its top-k taken over the classes (was: a 1x1 "segmentation", and
    --task classification refused the shape)."""
    path = _pooled_classifier(tmp_path, last)
    engine = Engine(path, "cpu", preprocessing={"mean": MEAN, "std": STD})
    assert engine.metadata.task == "classification"
    assert engine.scores_are_probabilities is probabilities
    raw = engine.run(preprocess_images([photo], engine.metadata.input))["out"].reshape(CLASSES)
    expected = np.sort(raw if probabilities else softmax(raw))[::-1]
    best = engine.predict(photo, top_k=CLASSES, labelled=False)
    np.testing.assert_allclose([p for _, p in best], expected, rtol=1e-6)
    for task in ([], ["--task", "classification"]):
        result = cli("run", path, photo, "--json", "--top-k", CLASSES, "--mean", *map(str, MEAN),
                     "--std", *map(str, STD), *task)
        assert result.code == 0, result.stderr
        top = json.loads(result.stdout)["results"][0]["top_k"]
        np.testing.assert_allclose([entry["probability"] for entry in top], expected, atol=1e-6)
    labelled = _labelled_folder(tmp_path, photo)  # evaluate takes it too
    annotated = tmp_path / "annotated.onnx"  # evaluate takes files that carry metadata
    result = cli("annotate", path, "-o", annotated, "--mean", *map(str, MEAN), "--std",
                 *map(str, STD))
    assert result.code == 0, result.stderr
    result = cli("evaluate", annotated, labelled, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["samples"] == CLASSES


def _uint8_classifier(tmp_path: Path) -> Path:
    """A file that takes uint8 NHWC pixels (TensorFlow-converted models do) and casts them."""
    from onnx import numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((CLASSES, 3, 3, 3)).astype(np.float32) / 50, "w")
    nodes = [helper.make_node("Cast", ["pixels"], ["float"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["float"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["out"])]
    graph = helper.make_graph(
        nodes, "uint8", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, CLASSES])], [weight])
    path = tmp_path / "uint8.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_an_integer_input_takes_pixels_as_they_are(cli, tmp_path, photo):
    """A uint8 input gets the pixels themselves: scale 1, mean 0, std 1 by default (the
    ImageNet defaults were cast to uint8: negative values wrapped, every image alike)."""
    path = _uint8_classifier(tmp_path)
    engine = Engine(path, "cpu", preprocessing={"layout": "NHWC"})
    info = engine.metadata.input
    assert (info.scale, info.mean, info.std) == (1.0, [0.0] * 3, [1.0] * 3)
    pixels = preprocess_images([photo], info)
    assert pixels.min() >= 0 and pixels.max() > 1 and np.all(pixels == np.rint(pixels))
    expected = softmax(engine.run(pixels.astype(np.uint8))["out"])[0]
    best = engine.predict(photo, top_k=CLASSES, labelled=False)
    np.testing.assert_allclose([p for _, p in best], np.sort(expected)[::-1], rtol=1e-6)
    annotated = tmp_path / "annotated.onnx"
    assert cli("annotate", path, "-o", annotated).code == 0
    assert Engine(annotated, "cpu").metadata.input.scale == 1.0


@pytest.mark.parametrize("flags", [["--mean", "0.5", "0.5", "0.5"], ["--scale", "255"],
                                   ["--std", "2", "2", "2"]])
def test_normalizing_an_integer_input_is_one_line(cli, tmp_path, photo, flags):
    path = _uint8_classifier(tmp_path)
    assert_one_line_error(cli("run", path, photo, *flags), 2, "input 'pixels' takes uint8",
                          "scale 1, mean 0 and std 1")
    assert_one_line_error(cli("annotate", path, "-o", tmp_path / "a.onnx", *flags), 2,
                          "input 'pixels' takes uint8")
    assert not (tmp_path / "a.onnx").exists()


def test_an_int8_image_input_is_refused():
    from edgecnn.runtime.preprocess_settings import check_raw_pixels

    raw = InputInfo(name="pixels", shape=[3, 8, 8], scale=1.0, mean=[0.0] * 3, std=[1.0] * 3)
    check_raw_pixels(raw, "uint8")
    with pytest.raises(BadInput, match="takes int8, which cannot hold pixels 0-255"):
        check_raw_pixels(raw, "int8")


def test_a_first_output_of_another_rank_is_not_taken_for_segmentation(tmp_path):
    """Only a 4-D output other than (N, classes, 1, 1) defaults to segmentation, as before."""
    flatten = helper.make_node("Flatten", ["pooled"], ["flat"])
    unsqueeze = helper.make_node("Unsqueeze", ["flat"], ["out"], axes=[2])  # (1, 5, 1)
    path = _pooled_classifier(tmp_path, [flatten, unsqueeze])
    model = load(path)
    model.graph.output[0].type.tensor_type.shape.ClearField("dim")
    for size in (1, CLASSES, 1):
        model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = size
    save(model, path)
    engine = Engine(path, "cpu", preprocessing={"mean": MEAN, "std": STD})
    assert engine.metadata.task == "classification"


def test_evaluate_takes_the_preprocessing_flags(cli, files, photo, tmp_path):
    """evaluate reads a file without metadata from the same flags as run (was: refused, with a
    message naming run's flags), the same figures as the file annotated with them."""
    labelled = _labelled_folder(tmp_path, photo)
    flags = ["--mean", *map(str, MEAN), "--std", *map(str, STD)]
    annotated = tmp_path / "annotated.onnx"
    assert cli("annotate", files["legacy"], "-o", annotated, *flags).code == 0
    expected = json.loads(cli("evaluate", annotated, labelled, "--json").stdout)["models"][0]
    result = cli("evaluate", files["legacy"], labelled, "--json", *flags)
    assert result.code == 0, result.stderr
    got = json.loads(result.stdout)["models"][0]
    assert (got["top1"], got["confusion"]) == (expected["top1"], expected["confusion"])
    assert_one_line_error(cli("evaluate", files["legacy"], labelled), 2, "no edgecnn metadata")


def test_info_says_when_the_output_is_probabilities(cli, softmax_files, files):
    result = cli("info", softmax_files["legacy"])
    assert result.code == 0 and "(probabilities: the graph ends in Softmax)" in result.stdout
    for path, expected in ((softmax_files["int8"], True), (files["legacy"], False)):
        report = json.loads(cli("info", path, "--json").stdout)
        assert report["outputs"][0]["probabilities"] is expected
        assert report["outputs"][0].get("probability_op") == ("Softmax" if expected else None)
    assert "probabilities" not in cli("info", files["legacy"]).stdout
