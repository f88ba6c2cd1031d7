"""quantize and check on ONNX files edgecnn did not write (plain torch.onnx.export, both
exporters, weights in a .onnx.data file or inside), and models written with external data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_one_line_error
from foreign_models import TinyClassifier, export_dynamo, export_legacy
from PIL import Image

from edgecnn.runtime import Engine
from edgecnn.runtime import onnx_file
from edgecnn.runtime.external_data import model_size
from edgecnn.runtime.onnx_file import get_metadata, load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SPEC = f"{REPO / 'tests' / 'foreign_models.py'}:TinyClassifier"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("foreign")
    x = torch.randn(1, 3, 32, 32)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(images / f"{index}.png")
    np.save(folder / "inputs.npy", rng.standard_normal((6, 3, 32, 32)).astype(np.float32))
    return {"dynamo": export_dynamo(TinyClassifier(), folder / "dynamo.onnx", (x,)),
            "legacy": export_legacy(TinyClassifier(), folder / "legacy.onnx", (x,)),
            "images": images, "inputs": folder / "inputs.npy"}


@pytest.mark.parametrize("kind", ["dynamo", "legacy"])
@pytest.mark.parametrize("mode, calibration", [("fp16", None), ("int8-dynamic", None),
                                               ("int8", "inputs")])
def test_quantize_needs_no_preprocessing_where_no_image_is_read(cli, files, tmp_path, kind,
                                                                mode, calibration):
    output = tmp_path / "out.onnx"
    extra = ["--calibration", files[calibration]] if calibration else []
    result = cli("quantize", files[kind], "-o", output, "--mode", mode, "--json", *extra)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    # the source's size counts its .onnx.data file (the dynamo exporter's weights)
    assert report["source_size_bytes"] == model_size(files[kind])
    if kind == "dynamo":
        assert report["source_size_bytes"] > files[kind].stat().st_size
    assert get_metadata(load_model(output)) is None  # nothing is invented about its input
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = next(iter(Engine(output).run(x).values()))
    want = next(iter(Engine(files[kind]).run(x).values()))
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max() + 1e-3)


def test_images_need_the_preprocessing(cli, files, tmp_path):
    output = tmp_path / "out.onnx"
    assert_one_line_error(cli("quantize", files["dynamo"], "-o", output, "--calibration",
                              files["images"]), 2, "has no edgecnn metadata",
                          "--mean ... --std ...", "edgecnn annotate")
    assert list(tmp_path.iterdir()) == []
    result = cli("quantize", files["dynamo"], "-o", output, "--calibration", files["images"],
                 "--mean", "0.5", "0.4", "0.3", "--std", "0.2,0.2,0.2", "--json")
    assert result.code == 0, result.stderr
    metadata = get_metadata(load_model(output))
    assert metadata.precision == "int8" and metadata.input.mean == [0.5, 0.4, 0.3]
    assert metadata.input.shape == [3, 32, 32] and metadata.input.name == "input"


@pytest.mark.parametrize("kind", ["dynamo", "legacy"])
def test_check_a_foreign_file_against_its_module(cli, files, kind):
    result = cli("check", SPEC, files[kind], "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["outputs"][0]["rel_l2"] <= 1e-5


def test_bisect_says_why_a_file_without_module_paths_compares_nothing(cli, files):
    """The legacy exporter records no module path on its nodes: bisect has nothing to line up
    with the module, and says so (was: "0 module outputs compared, none over the tolerance")."""
    result = cli("check", SPEC, files["legacy"], "--bisect")
    assert result.code == 0, result.stderr
    assert "bisect: no module output to compare" in result.stdout
    assert "record no module path" in result.stderr and "dynamo=True" in result.stderr
    assert "note: bisect compared nothing" in result.stderr  # a word, not the --bisect flag
    result = cli("check", SPEC, files["dynamo"], "--bisect")
    assert result.code == 0 and "module outputs compared, none over" in result.stdout
    assert "record no module path" not in result.stderr


def test_export_and_quantize_write_external_data_together(cli, tmp_path):
    fp32 = tmp_path / "r18.onnx"
    result = cli("export", "resnet18", "--input-size", "64", "-o", fp32, "--external-data",
                 "--json")
    assert result.code == 0, result.stderr
    data = tmp_path / "r18.onnx.data"
    assert data.stat().st_size > 40e6 > fp32.stat().st_size  # the weights live beside it
    assert json.loads(result.stdout)["size_bytes"] == model_size(fp32)
    int8 = tmp_path / "r18_int8.onnx"
    result = cli("quantize", fp32, "-o", int8, "--calibration", "random",
                 "--calibration-size", "4", "--external-data", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (tmp_path / "r18_int8.onnx.data").is_file()
    assert report["size_bytes"] == model_size(int8) and report["size_ratio"] < 0.3
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert Engine(int8).run(x)["logits"].shape == (2, 1000)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "r18.onnx", "r18.onnx.data", "r18_int8.onnx", "r18_int8.onnx.data"]


def test_a_failed_write_leaves_neither_file(cli, tmp_path, monkeypatch):
    def broken_check(path):
        raise onnx_file.EdgecnnError("the graph is not valid ONNX: planted")

    monkeypatch.setattr(onnx_file, "check_model", broken_check)
    result = cli("export", "lenet", "-o", tmp_path / "lenet.onnx", "--external-data")
    assert result.code == 1 and "planted" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no .onnx, no .data, no temporary folder


@pytest.mark.parametrize("opset", [10, 11, 12])
def test_int8_of_a_file_below_opset_13(cli, files, tmp_path, opset):
    """Per-channel QDQ needs opset 13: an older file is converted first (onnxruntime's quantizer
    wrote a DequantizeLinear that no runtime loads: 'cannot load model as an ONNX model')."""
    source = export_legacy(TinyClassifier(), tmp_path / f"opset{opset}.onnx",
                           (torch.randn(1, 3, 32, 32),), opset=opset)
    output = tmp_path / "int8.onnx"
    result = cli("quantize", source, "-o", output, "--calibration", files["inputs"], "--json")
    assert result.code == 0, result.stderr
    assert all(output["passed"] for output in json.loads(result.stdout)["outputs"])
    assert onnx_file.opset_version(load_model(output)) == 13
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = next(iter(Engine(output).run(x).values()))
    want = next(iter(Engine(source).run(x).values()))
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max() + 1e-3)


def test_int8_of_a_file_newer_than_onnxruntimes_int8_kernels(cli, tmp_path):
    """onnxruntime 1.32 runs QuantizeLinear up to opset 27: the int8 file its quantizer made of
    an opset-28 export did not load ('Could not find an implementation for QuantizeLinear(28)');
    the float model is converted down to the newest opset those kernels run at first."""
    from edgecnn.export.quantize_recipes import newest_int8_opset

    source = tmp_path / "lenet28.onnx"
    assert cli("export", "lenet", "--opset", "28", "-o", source, "--no-check").code == 0
    output = tmp_path / "int8.onnx"
    result = cli("quantize", source, "-o", output, "--calibration", "random", "--json")
    assert result.code == 0, result.stderr
    assert onnx_file.opset_version(load_model(output)) == newest_int8_opset() <= 28
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert next(iter(Engine(output).run(x).values())).shape == (2, 10)


def test_a_file_the_converter_cannot_lift_is_one_line(cli, files, tmp_path, monkeypatch):
    from onnx import version_converter

    def refuse(model, opset):
        raise RuntimeError("No Adapter For Upsample\nmore lines")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    source = export_legacy(TinyClassifier(), tmp_path / "opset11.onnx",
                           (torch.randn(1, 3, 32, 32),), opset=11)
    output = tmp_path / "int8.onnx"
    assert_one_line_error(cli("quantize", source, "-o", output, "--calibration", files["inputs"]),
                          2, "opset 11 is older than the 13 per-channel int8 needs",
                          "No Adapter For Upsample", "quantize with --per-tensor, or export")
    assert not output.exists()
    result = cli("quantize", source, "-o", output, "--calibration", files["inputs"],
                 "--per-tensor")  # per-tensor QDQ is valid at opset 11
    assert result.code == 0, result.stderr
    assert onnx_file.opset_version(load_model(output)) == 11


@pytest.mark.parametrize("mode, calibration, precision", [
    ("fp16", None, "fp16"), ("int8-dynamic", None, "int8"), ("int8", "inputs", "int8")])
def test_a_quantized_file_without_metadata_is_named_by_its_graph(cli, files, tmp_path, mode,
                                                                 calibration, precision):
    """run, evaluate and annotate read the precision from the graph (QDQ or integer ops, fp16
    weights) where no metadata says it: they said fp32, and annotate wrote fp32 into the file."""
    from edgecnn.runtime.model_file import graph_precision

    output = tmp_path / "out.onnx"
    extra = ["--calibration", files[calibration]] if calibration else []
    assert cli("quantize", files["legacy"], "-o", output, "--mode", mode, *extra).code == 0
    assert graph_precision(output) == precision and graph_precision(files["legacy"]) == "fp32"
    flags = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
    image = next(files["images"].iterdir())
    result = cli("run", output, image, *flags)
    assert result.code == 0 and f"(classification, {precision})" in result.stdout, result.stdout
    annotated = tmp_path / "annotated.onnx"
    assert cli("annotate", output, "-o", annotated, *flags).code == 0
    assert get_metadata(load_model(annotated)).precision == precision


@pytest.mark.parametrize("mode, calibration", [("fp16", None), ("int8", "inputs")])
def test_an_input_size_for_the_comparison_writes_no_metadata(cli, files, tmp_path, mode,
                                                              calibration):
    """A file with a dynamic height and width needs --input-size to size the comparison with
    fp32; that alone says nothing of the preprocessing (it wrote ImageNet's, which run then
    applied as if the user had given them)."""
    source = export_legacy(TinyClassifier(), tmp_path / "dynamic.onnx",
                           (torch.randn(1, 3, 32, 32),), dynamic_hw=True)
    output = tmp_path / "out.onnx"
    extra = ["--calibration", files[calibration]] if calibration else []
    result = cli("quantize", source, "-o", output, "--mode", mode, "--input-size", "32", *extra)
    assert result.code == 0, result.stderr
    assert get_metadata(load_model(output)) is None
    assert_one_line_error(cli("run", output, next(files["images"].iterdir())), 2,
                          "no edgecnn metadata")
