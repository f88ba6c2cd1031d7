"""`edgecnn run` and `edgecnn bench` through the real entry point: output and error contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error, run_console_script
from PIL import Image
from tiny_models import tiny_model

from edgecnn.runtime import Engine


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    paths = []
    for index, size in enumerate([(48, 80), (100, 70)]):
        path = folder / f"photo{index}.{'png' if index else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def labelled_tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", batch=2,
                      labels=["ant", "bee", "cat", "dog"])


def test_run_json_matches_the_engine(cli, resnet18_64, photos):
    result = cli("run", resnet18_64, *photos, "--top-k", "3", "--json", "--provider", "cpu")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["name"] == "resnet18" and report["precision"] == "fp32"
    assert report["providers"] == ["CPUExecutionProvider"]
    expected = Engine(resnet18_64, "cpu").predict(photos, top_k=3)
    assert [entry["image"] for entry in report["results"]] == [str(path) for path in photos]
    for entry, prediction in zip(report["results"], expected):
        # a model without labels: the index, and no label key
        assert [item["index"] for item in entry["top_k"]] == [index for index, _ in prediction]
        assert not any("label" in item for item in entry["top_k"])
        np.testing.assert_allclose([item["probability"] for item in entry["top_k"]],
                                   [p for _, p in prediction], atol=1e-6)


def test_run_prints_labels(cli, labelled_tiny, photos, tmp_path):
    photo = tmp_path / ("long-name-" * 20 + "[bold]shot[1].jpg")  # not rich markup, not wrapped
    photo.write_bytes(photos[0].read_bytes())
    result = cli("run", labelled_tiny.path, photo, "--top-k", "2", "--threads", "1",
                 "--provider", "cpu")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny_classification (classification, fp32) on CPUExecutionProvider")
    assert lines[1] == str(photo)
    expected = Engine(labelled_tiny.path, "cpu").predict(photos[0], 2)
    assert [line.split()[1] for line in lines[2:]] == [label for label, _ in expected]


def test_run_segmentation_summary(cli, tmp_path, photos):
    model = tiny_model(tmp_path / "seg.onnx", task="segmentation", classes=3, labels=["a", "b", "c"])
    result = cli("run", model.path, photos[1], "--json")
    assert result.code == 0, result.stderr
    (entry,) = json.loads(result.stdout)["results"]
    class_map = Engine(model.path).predict(photos[1])
    assert entry["shape"] == [8, 8]
    assert {item["label"]: item["pixels"] for item in entry["classes"]} == {
        "abc"[index]: int((class_map == index).sum()) for index in np.unique(class_map)}


def test_bench_json_figures_are_consistent(labelled_tiny):
    # A fresh process, as a user runs it: peak RSS is the process's, so pytest's would include
    # every model the suite loaded before.
    result = run_console_script("bench", labelled_tiny.path, "--runs", "30", "--warmup", "2",
                                "--threads", "1", "--provider", "cpu", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    latency = report["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["batch"] == 2 and report["runs"] == 30 and report["threads"] == 1
    # throughput = items / mean latency
    assert report["throughput"] == pytest.approx(2 * 1000 / latency["mean"], rel=1e-3)
    assert report["providers"] == ["CPUExecutionProvider"] and report["precision"] == "fp32"
    assert 20 < report["peak_rss_mb"] < 150  # numpy + onnxruntime + a tiny model; torch alone is ~218


def test_bench_table(cli, resnet18_64):
    result = cli("bench", resnet18_64, "--runs", "3", "--warmup", "1", "--batch", "2")
    assert result.code == 0, result.stderr
    assert "p50" in result.stdout and "items/s" in result.stdout and "peak RSS" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("batch / threads  2 / ") for line in lines)  # values aligned
    assert all(line == line.rstrip() for line in lines)  # nothing padded for a pipe


# -- errors: one line, exit 2 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, resnet18_64):
    folder = tmp_path_factory.mktemp("broken")
    (folder / "notes.onnx").write_text("this is not a model\n")
    data = resnet18_64.read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("this is not an image\n")
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    return folder


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("model, fragment", [
    ("missing.onnx", "model file not found"),
    ("notes.onnx", "cannot load"),
    ("truncated.onnx", "cannot load"),
])
def test_unusable_model_files(cli, broken_files, command, model, fragment):
    images = [broken_files / "ok.png"] if command == "run" else []
    assert_one_line_error(cli(command, broken_files / model, *images), 2, fragment, model)


def test_unreadable_and_missing_images(cli, resnet18_64, broken_files):
    assert_one_line_error(cli("run", resnet18_64, broken_files / "notes.png"), 2,
                          "cannot read image", "notes.png")
    assert_one_line_error(cli("run", resnet18_64, broken_files / "gone.jpg"), 2,
                          "image not found", "gone.jpg")


def test_wrong_batch_for_a_fixed_batch_model(cli, labelled_tiny):
    assert_one_line_error(cli("bench", labelled_tiny.path, "--batch", "3"), 2,
                          "expected batch 2 (fixed in the model), got --batch 3")


def test_model_without_metadata(cli, tmp_path, broken_files):
    model = tiny_model(tmp_path / "bare.onnx", metadata=False)
    assert_one_line_error(cli("run", model.path, broken_files / "ok.png"), 2, "no edgecnn metadata")
    assert cli("bench", model.path, "--runs", "2", "--warmup", "0", "--json").code == 0


@pytest.mark.parametrize("args, fragment", [
    (["--provider", "gpu"], "unknown provider 'gpu'"),
    (["--threads", "0"], "--threads must be between 1 and"),
    (["--threads", "10000"], "--threads must be between 1 and"),
    (["--top-k", "0"], "--top-k must be an integer >= 1"),
])
def test_bad_options(cli, labelled_tiny, broken_files, args, fragment):
    assert_one_line_error(cli("run", labelled_tiny.path, broken_files / "ok.png", *args), 2, fragment)


def test_embedded_inference_example(resnet18_64, photos):
    """examples/embedded_inference.py prints the engine's top 5 and never imports torch."""
    import subprocess
    import sys

    from conftest import REPO

    script = REPO / "examples" / "embedded_inference.py"
    probe = (f"import runpy, sys; sys.argv = ['x', {str(resnet18_64)!r}, {str(photos[0])!r}]; "
             f"runpy.run_path({str(script)!r}, run_name='__main__'); "
             "print('torch loaded' if 'torch' in sys.modules else 'torch-free')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected_engine = Engine(resnet18_64)  # the example's provider="auto": CPU here, CUDA on a GPU
    assert lines[0] == f"resnet18 on {expected_engine.providers[0]}"
    assert lines[-1] == "torch-free"
    expected = expected_engine.predict(photos[0], top_k=5)
    assert [line.split() for line in lines[1:6]] == [[f"{p:.2%}", str(label)] for label, p in expected]


def test_missing_provider_is_one_warning_line(cli, labelled_tiny, photos):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDAExecutionProvider is installed here")
    result = cli("run", labelled_tiny.path, photos[0], "--provider", "cuda", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["providers"] == ["CPUExecutionProvider"]
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: provider cuda is not installed (installed: ")
    assert line.endswith("; using cpu")
