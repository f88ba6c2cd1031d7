"""edgecnn.runtime.Engine: input checks, predict on images, providers, threads."""

from __future__ import annotations

import re
import threading
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from tiny_models import normalize, tiny_model

from edgecnn.errors import BadInput
from edgecnn.runtime import Engine
from edgecnn.runtime.postprocess import softmax
from edgecnn.runtime.providers import CPU, CUDA, TENSORRT, ProviderFallbackWarning

RNG = np.random.default_rng(0)


def random_images(count: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (count, height, width, channels), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_fixed_batch(tmp_path_factory):
    """Batch axis fixed at 2, labelled classes."""
    return tiny_model(tmp_path_factory.mktemp("tiny") / "fixed.onnx", batch=2,
                      labels=["ant", "bee", "cat", "dog"])


@pytest.fixture(scope="module")
def resnet_engine(resnet18_64):
    return Engine(resnet18_64, "cpu", threads=1)  # compared bit for bit with a CPU session


# -- run(): validation ------------------------------------------------------------------------

def test_run_matches_a_bare_session(resnet_engine, resnet18_64):
    x = RNG.standard_normal((2, 3, 64, 64)).astype(np.float32)
    bare = ort.InferenceSession(str(resnet18_64), providers=[CPU]).run(None, {"input": x})[0]
    result = resnet_engine.run(x)
    assert list(result) == ["logits"]
    np.testing.assert_array_equal(result["logits"], bare)
    np.testing.assert_array_equal(resnet_engine.run({"input": x})["logits"], bare)
    assert resnet_engine.metadata.model == "resnet18" and resnet_engine.precision == "fp32"
    assert resnet_engine.providers == [CPU]


@pytest.mark.parametrize("array, message", [
    (np.zeros((1, 3, 64, 64), np.float64),
     "input 'input': expected float32 [batch, 3, 64, 64], got float64 [1, 3, 64, 64]"),
    (np.zeros((3, 64, 64), np.float32), "expected float32 [batch, 3, 64, 64], got float32 [3, 64, 64]"),
    (np.zeros((1, 1, 64, 64), np.float32), "got float32 [1, 1, 64, 64]"),
    (np.zeros((1, 3, 64, 32), np.float32), "got float32 [1, 3, 64, 32]"),
    ([[0.0]], "expected a numpy array or a dict of them, got list"),
    ({"image": np.zeros((1, 3, 64, 64), np.float32)}, "expected inputs ['input'], got ['image']"),
])
def test_run_rejects_wrong_inputs(resnet_engine, array, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resnet_engine.run(array)


def test_run_accepts_any_size_on_a_dynamic_batch_axis(resnet_engine):
    for batch in (1, 3):
        assert resnet_engine.run(np.zeros((batch, 3, 64, 64), np.float32))["logits"].shape == (batch, 1000)


def test_run_reports_nan_and_inf(resnet_engine):
    x = np.zeros((2, 3, 64, 64), np.float32)
    x[0, 0, 0, :3] = np.nan
    x[1, 2, 5, 5] = -np.inf
    with pytest.raises(BadInput, match="expected finite values, got 3 NaN and 1 Inf of 24576"):
        resnet_engine.run(x)
    # Large finite values are fine (a float32 sum of these would overflow to inf).
    assert resnet_engine.run(np.full((1, 3, 64, 64), 3e37, np.float32))["logits"].shape == (1, 1000)


def test_run_checks_a_fixed_batch_axis(tiny_fixed_batch):
    engine = Engine(tiny_fixed_batch.path)
    with pytest.raises(BadInput, match=r"expected float32 \[2, 3, 8, 8\], got float32 \[3, 3, 8, 8\]"):
        engine.run(np.zeros((3, 3, 8, 8), np.float32))


# -- predict(): images ------------------------------------------------------------------------

def test_predict_classification_matches_the_formula(tiny_fixed_batch):
    """5 images through a batch-2 model (chunks 2+2+1, the last padded) == numpy reference."""
    images = random_images(5, 8, 8)
    engine = Engine(tiny_fixed_batch.path)
    predictions = engine.predict(list(images), top_k=3, crop_fraction=1.0)
    probabilities = softmax(tiny_fixed_batch.reference(normalize(images, tiny_fixed_batch.info)))
    assert len(predictions) == 5
    for prediction, expected in zip(predictions, probabilities):
        order = np.argsort(-expected)[:3]
        assert [label for label, _ in prediction] == [tiny_fixed_batch.labels[i] for i in order]
        np.testing.assert_allclose([p for _, p in prediction], expected[order], rtol=1e-5)
    # One image in -> one result; a NHWC batch array is a list of images.
    assert engine.predict(images[1], top_k=3, crop_fraction=1.0) == predictions[1]
    assert engine.predict(images, top_k=3, crop_fraction=1.0) == predictions


def test_predict_accepts_paths_pil_images_and_arrays(resnet_engine, tmp_path):
    image = random_images(1, 90, 120)[0]
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    by_array, by_path, by_pil = resnet_engine.predict([image, path, Image.fromarray(image)])
    assert by_array == by_path == by_pil
    assert len(by_array) == 5 and all(isinstance(index, int) for index, _ in by_array)
    probabilities = [p for _, p in by_array]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


def test_predict_segmentation_returns_class_maps(tmp_path):
    model = tiny_model(tmp_path / "seg.onnx", task="segmentation", classes=5, size=(6, 10))
    images = random_images(3, 6, 10)
    maps = Engine(model.path).predict(list(images), crop_fraction=1.0)
    expected = model.reference(normalize(images, model.info)).argmax(axis=1)
    assert len(maps) == 3 and maps[0].shape == (6, 10)
    np.testing.assert_array_equal(np.stack(maps), expected)
    assert len(np.unique(expected)) > 1  # the maps are not trivially constant


def test_predict_grey_fp16_model(tmp_path):
    """A 1-channel fp16 model: RGB images become luma, the batch is cast to float16."""
    model = tiny_model(tmp_path / "grey16.onnx", channels=1, dtype=np.float16, classes=3)
    rgb = random_images(2, 8, 8)
    luma = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in rgb])[..., None]
    predictions = Engine(model.path).predict(list(rgb), top_k=1, crop_fraction=1.0)
    expected = softmax(model.reference(normalize(luma, model.info)))
    for [(index, probability)], row in zip(predictions, expected):
        assert index == row.argmax()
        assert probability == pytest.approx(row.max(), rel=5e-3)  # fp16 arithmetic


def test_predict_needs_metadata_but_run_does_not(tmp_path):
    model = tiny_model(tmp_path / "bare.onnx", metadata=False)
    engine = Engine(model.path)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(engine.run(x)["logits"], model.reference(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInput, match="has no edgecnn metadata"):
        engine.predict(random_images(1, 8, 8)[0])


def test_predict_rejects_bad_images(resnet_engine, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(BadInput, match="cannot read image .*notes.png"):
        resnet_engine.predict(tmp_path / "notes.png")
    with pytest.raises(BadInput, match="image not found"):
        resnet_engine.predict(str(tmp_path / "missing.jpg"))
    with pytest.raises(BadInput, match="must be uint8"):
        resnet_engine.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(BadInput, match="top_k must be an integer >= 1"):
        resnet_engine.predict(random_images(1, 8, 8)[0], top_k=0)


# -- providers ---------------------------------------------------------------------------------

def test_explicit_missing_provider_is_an_error_without_fallback(resnet18_64):
    if CUDA in ort.get_available_providers():
        pytest.skip("CUDAExecutionProvider is installed here")
    with pytest.raises(BadInput, match=r"provider cuda is not installed \(installed: .*CPUExecutionProvider"):
        Engine(resnet18_64, provider="cuda", fallback=False)


def test_explicit_missing_provider_falls_back_with_a_warning(resnet18_64):
    if TENSORRT in ort.get_available_providers():
        pytest.skip("TensorrtExecutionProvider is installed here")
    with pytest.warns(ProviderFallbackWarning, match="provider tensorrt is not installed.*using"):
        engine = Engine(resnet18_64, provider="tensorrt")
    assert engine.providers[-1] == CPU and TENSORRT not in engine.providers


def test_auto_uses_cpu_silently_when_it_is_all_there_is(resnet18_64):
    if {CUDA, TENSORRT} & set(ort.get_available_providers()):
        pytest.skip("a GPU provider is installed here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Engine(resnet18_64, provider="auto").providers == [CPU]


# -- threads ----------------------------------------------------------------------------------

def test_one_engine_from_four_threads_matches_sequential_calls(resnet18_64):
    engine = Engine(resnet18_64, threads=2)
    inputs = [RNG.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(8)]
    sequential = [engine.run(x)["logits"] for x in inputs]
    results: dict[tuple[int, int, int], np.ndarray] = {}
    start = threading.Barrier(4)

    def worker(thread: int) -> None:
        start.wait()
        for repeat in range(3):
            for index in range(thread, thread + len(inputs)):  # each thread its own order
                results[thread, repeat, index % len(inputs)] = engine.run(inputs[index % len(inputs)])["logits"]

    threads = [threading.Thread(target=worker, args=(thread,)) for thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 * 3 * len(inputs)
    for (_, _, index), output in results.items():
        np.testing.assert_array_equal(output, sequential[index])


def test_predict_takes_the_center_crop_from_the_metadata(zoo_onnx, resnet_engine):
    """Digit models see the whole frame (crop 1.0), ImageNet models Resize+CenterCrop (0.875)."""
    from edgecnn.runtime.preprocess import preprocess_images

    lenet = Engine(zoo_onnx("lenet"))
    assert lenet.metadata.input.crop_fraction == 1.0
    assert resnet_engine.metadata.input.crop_fraction == 0.875
    rng = np.random.default_rng(3)
    digits = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(3)]
    whole = lenet.run(preprocess_images(digits, lenet.metadata.input, crop_fraction=1.0))["logits"]
    cropped = lenet.run(preprocess_images(digits, lenet.metadata.input, crop_fraction=0.875))["logits"]
    assert not np.allclose(whole, cropped, rtol=0, atol=1e-6)  # the crop changes the input...
    predicted = np.zeros_like(whole)
    for row, result in zip(predicted, lenet.predict(digits, top_k=10)):
        for index, probability in result:
            row[index] = probability
    np.testing.assert_allclose(predicted, softmax(whole), rtol=1e-5)  # ...metadata's crop wins
    assert not np.allclose(predicted, softmax(cropped), rtol=1e-5)


def test_counts_without_a_default_refuse_none(resnet_engine):
    """top_k and samples have no None default: None is bad input, not "all classes"."""
    from edgecnn.runtime.postprocess import top_k

    with pytest.raises(BadInput, match=r"^top_k must be an integer >= 1, got None$"):
        top_k(np.zeros((1, 10), np.float32), k=None)
    with pytest.raises(BadInput, match=r"^top_k must be an integer >= 1, got None$"):
        resnet_engine.predict(random_images(1, 8, 8)[0], top_k=None)


def test_an_output_whose_first_axis_is_not_the_batch_is_one_line(cli, tmp_path):
    """A graph that reshapes its scores to (2, -1) gives 2 rows for any batch: run said
    "internal error: generator raised StopIteration" for 3 images, and gave 1 record of a
    2-row output for one image."""
    from onnx import TensorProto, helper, numpy_helper, save

    from conftest import assert_one_line_error

    shape = numpy_helper.from_array(np.array([2, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["scores"])], "rows",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, None])], [shape])
    path = tmp_path / "rows.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    images = []
    for index in range(3):
        images.append(tmp_path / f"{index}.png")
        Image.fromarray(random_images(1, 8, 8)[0]).save(images[-1])
    flags = ["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"]
    for given in (images, images[:1]):
        assert_one_line_error(cli("run", path, *given, "--batch", "3", *flags), 2,
                              "'scores' has 2 rows for", "its first axis is not the batch")
    engine = Engine(path, "cpu", preprocessing={"mean": [0.5] * 3, "std": [0.2] * 3})
    with pytest.raises(BadInput, match="has 2 rows for 1 image"):
        engine.predict(images[0])


def test_a_scalar_first_output_is_one_line(tmp_path):
    """A graph that reduces its input to a scalar: BadInput naming the shape (len() of the 0-d
    scores was a TypeError)."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["score"], keepdims=0)], "scalar",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [])])
    path = tmp_path / "scalar.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    engine = Engine(path, "cpu", preprocessing={"mean": [0.5] * 3, "std": [0.2] * 3})
    with pytest.raises(BadInput, match="has 0 rows for 1 image"):
        engine.predict(random_images(1, 8, 8)[0])


@pytest.mark.parametrize("color", [["RGB"], {"RGB": 1}])
def test_a_color_of_another_type_is_bad_input(tmp_path, color):
    """An unhashable color was a TypeError where the channel axis is dynamic."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["score"], axes=[2, 3])], "dynamic",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "C", 8, 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", "C"])])
    path = tmp_path / "dynamic.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(BadInput, match=r"^color must be one of RGB, BGR, GRAY, got "):
        Engine(path, "cpu", preprocessing={"color": color})
