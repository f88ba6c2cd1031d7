"""`edgecnn check`: parity reports, bisection to the diverging module, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import assert_one_line_error
from edgecnn.models import _registry


class ScaledOnExport(nn.Module):
    """Computes conv(x) eagerly but conv(x) * 1.01 in the exported graph: a planted bug."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * 1.01 if torch.onnx.is_in_onnx_export() else y


class PlantedNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.planted = ScaledOnExport()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(torch.relu(self.planted(self.block(self.stem(x)))))


@pytest.fixture
def planted_model(monkeypatch):
    """`planted` registered for the duration of one test."""
    def planted(num_classes: int = 10, in_channels: int = 3) -> PlantedNet:
        return PlantedNet(num_classes, in_channels)

    spec = _registry.ModelSpec(name="planted", builder=planted, task="classification",
                               input_size=(3, 16, 16), num_classes=10, params=None, family="test")
    monkeypatch.setitem(_registry._REGISTRY, "planted", spec)
    return "planted"


def test_check_passes_and_writes_reports(cli, tmp_path, resnet18_64):
    report_md, report_json = tmp_path / "parity.md", tmp_path / "parity.json"
    result = cli("check", "resnet18", "--onnx", resnet18_64, "--samples", "2", "--batch", "3",
                 "--report", report_md, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["precision"] == "fp32" and summary["batch"] == 3
    (output,) = summary["outputs"]
    assert output["name"] == "logits" and output["rel_l2"] <= 1e-5
    assert output["top1_agreement"] == 1.0 and output["sqnr_db"] > 100
    assert summary["tolerance_rel_l2"] == 1e-5
    assert "| logits |" in report_md.read_text() and "**PASS**" in report_md.read_text()
    again = cli("check", "resnet18", "--onnx", resnet18_64, "--samples", "1", "--report", report_json)
    assert again.code == 0 and "pass" in again.stdout
    assert json.loads(report_json.read_text())["outputs"][0]["rel_l2"] <= 1e-5


def test_fresh_export_check_with_clean_bisect(cli):
    result = cli("check", "resnet18", "--input-size", "32", "--samples", "1", "--bisect", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["bisect"]["first_divergent"] is None
    assert summary["bisect"]["compared_layers"] > 40  # every block's BN/ReLU/add output


def test_bisect_names_the_planted_module(cli, planted_model, tmp_path):
    result = cli("check", planted_model, "--bisect", "--samples", "1", "--json",
                 "--report", tmp_path / "r.md")
    assert result.code == 1  # the check fails...
    summary = json.loads(result.stdout)
    assert not summary["passed"]
    first = summary["bisect"]["first_divergent"]
    assert first["module"] == "planted"  # ...and names the module, not its healthy child conv
    assert first["rel_l2"] == pytest.approx(0.01, rel=1e-3)
    assert "first divergence at `planted`" in (tmp_path / "r.md").read_text()


def test_bisect_function_on_the_planted_model():
    from edgecnn.export import to_onnx
    from edgecnn.export.bisect import bisect

    torch.manual_seed(0)
    model = PlantedNet().eval()
    x = torch.randn(2, 3, 16, 16)
    result = bisect(model, to_onnx(model, x), x.numpy(), tolerance=1e-5)
    by_module = {layer.module: layer for layer in result.layers}
    assert by_module["block"].metrics.rel_l2 <= 1e-5 and not by_module["block"].diverged
    assert by_module["planted.conv"].metrics.rel_l2 <= 1e-5
    assert by_module["planted"].diverged and result.first_divergent.module == "planted"


def test_seed_mismatch_fails_instead_of_passing(cli, resnet18_64):
    """The file's metadata says its weights: the note names the seed to give (it asked
    whether the file had the same --seed/--weights)."""
    result = cli("check", "resnet18", "--onnx", resnet18_64, "--seed", "1", "--samples", "1")
    assert result.code == 1 and "FAIL" in result.stdout
    assert ("holds random weights (seed 0), the eager model random weights (seed 1): check "
            "with --seed 0") in " ".join(result.stderr.split())


def test_a_file_without_weights_in_its_metadata_gets_the_question(cli, resnet18_64, tmp_path):
    from dataclasses import replace

    import onnx

    from edgecnn.runtime.onnx_file import get_metadata, load_model, set_metadata

    model = load_model(resnet18_64)
    set_metadata(model, replace(get_metadata(model), weights=None))
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, stripped)
    result = cli("check", "resnet18", "--onnx", stripped, "--seed", "1", "--samples", "1")
    assert result.code == 1 and "same --seed" in result.stderr


def test_wrong_architecture_is_an_error(cli, resnet18_64, tmp_path):
    result = cli("check", "resnet34", "--onnx", resnet18_64)
    assert_one_line_error(result, 2, "exported from 'resnet18', not 'resnet34'")
    # Without metadata the interface decides: a 10-class file is not the 1000-class model.
    import onnx

    from edgecnn.export import export_model

    ten = export_model("resnet18", tmp_path / "ten.onnx", input_size=32, num_classes=10, check=False).path
    stripped = onnx.load(str(ten))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "bare.onnx"))
    result = cli("check", "resnet18", "--onnx", tmp_path / "bare.onnx")
    assert_one_line_error(result, 2, "not this architecture")


@pytest.mark.parametrize("args, fragment", [
    (["--precision", "int4"], "int4"),
    (["--provider", "quantum"], "unknown provider 'quantum'"),
    (["--onnx", "/nonexistent/model.onnx"], "not found"),
    (["--samples", "0"], "--samples must be an integer >= 1, got 0"),
    (["--batch", "0"], "--batch must be an integer >= 1, got 0"),
    (["--report", "out.txt"], ".md or .json"),
])
def test_bad_check_arguments(cli, resnet18_64, args, fragment):
    extra = [] if "--onnx" in args else ["--onnx", resnet18_64]
    result = cli("check", "resnet18", *extra, *args)
    assert_one_line_error(result, 2, fragment)


def test_the_file_can_follow_the_model_name(cli, resnet18_64):
    """`edgecnn check resnet18 model.onnx` is `--onnx model.onnx`; giving both is one error."""
    result = json.loads(cli("check", "resnet18", resnet18_64, "--samples", "1", "--json").stdout)
    assert result["passed"] and result["onnx"] == str(resnet18_64)
    assert_one_line_error(cli("check", "resnet18", resnet18_64, "--onnx", resnet18_64), 2,
                          "give the ONNX file once")


def test_int8_check_of_a_fresh_export(cli):
    """--precision converts a fresh export as the matrix does and applies that precision's bound."""
    int8 = json.loads(cli("check", "resnet18", "--precision", "int8", "--input-size", "32",
                          "--samples", "1", "--json").stdout)
    (output,) = int8["outputs"]
    assert int8["passed"] and int8["precision"] == "int8"
    assert int8["tolerance_rel_l2"] == pytest.approx(0.1)  # the 20 dB SQNR floor
    assert output["sqnr_db"] >= 20 and output["rel_l2"] > 1e-4  # int8 noise, not fp32 parity


def test_check_with_real_images(cli, tmp_path, zoo_onnx):
    """Real digit scans join the random inputs, preprocessed from the file's metadata."""
    from edgecnn.datasets import load_digits, write_pngs

    folder = tmp_path / "digits"
    folder.mkdir()
    write_pngs(load_digits().test_images[:5], folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png")
    result = json.loads(cli("check", "lenet", "--onnx", zoo_onnx("lenet"), "--images", folder,
                            "--samples", "1", "--batch", "2", "--json").stdout)
    assert result["passed"] and result["images"] == 5 and result["rows"] == 2 + 5
    assert any("skipped 1 unreadable" in note for note in result["notes"])  # broken.png
    assert result["outputs"][0]["top1_agreement"] == 1.0  # over 2 random + 5 real inputs
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("check", "lenet", "--onnx", zoo_onnx("lenet"), "--images", empty),
                          2, "--images folder", "has no")
    assert_one_line_error(cli("check", "lenet", "--onnx", zoo_onnx("lenet"), "--images",
                              tmp_path / "missing"), 2, "--images folder not found")


def test_an_int8_file_is_checked_on_the_images_alone(cli, tmp_path, zoo_onnx):
    """Its scales fit the images it was calibrated on: standard-normal draws mixed in failed a
    file quantize had passed (README's own-model steps, SQNR 43 dB there, 11 dB in check)."""
    from edgecnn.datasets import load_digits, write_pngs

    folder = tmp_path / "digits"
    folder.mkdir()
    write_pngs(load_digits().test_images[:24], folder)
    int8 = tmp_path / "lenet_int8.onnx"
    assert cli("quantize", zoo_onnx("lenet"), "-o", int8, "--calibration", folder).code == 0
    result = json.loads(cli("check", "lenet", "--onnx", int8, "--images", folder, "--samples",
                            "2", "--json").stdout)
    assert result["precision"] == "int8" and result["images"] == 24 and result["rows"] == 24
    assert result["passed"], result
    fp32 = json.loads(cli("check", "lenet", "--onnx", zoo_onnx("lenet"), "--images", folder,
                          "--samples", "2", "--batch", "2", "--json").stdout)
    assert fp32["rows"] == 2 * 2 + 24  # fp32 and fp16 still add the random draws


def test_options_in_the_metadata_that_are_arguments_of_their_own_are_refused(cli, tmp_path,
                                                                             zoo_onnx):
    """options {"seed": 1} (a file edited by hand): build_model got seed twice, a TypeError."""
    from dataclasses import replace

    import onnx

    from edgecnn.runtime.onnx_file import get_metadata, load_model, set_metadata

    model = load_model(zoo_onnx("lenet"))
    set_metadata(model, replace(get_metadata(model), options={"seed": 1}))
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    assert_one_line_error(cli("check", "lenet", edited), 2, "the options in its metadata",
                          "cannot set seed")


def test_fixed_batch_file_sets_the_batch(cli, tmp_path):
    """A file exported with --batch 1 is checked at batch 1; real images go in batches of 1."""
    fixed = tmp_path / "lenet_b1.onnx"
    assert cli("export", "lenet", "--batch", "1", "-o", fixed, "--no-check").code == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (30, 30), np.uint8)).save(
            folder / f"{index}.png")
    report = json.loads(cli("check", "lenet", "--onnx", fixed, "--images", folder, "--samples",
                            "2", "--json").stdout)
    assert report["passed"] and report["batch"] == 1 and report["images"] == 3
    assert report["rows"] == 2 + 3
    assert report["outputs"][0]["rel_l2"] <= 1e-5
    assert_one_line_error(cli("check", "lenet", "--onnx", fixed, "--batch", "3"), 2,
                          "fixed batch size of 1", "--batch must be 1")


def test_precision_comes_from_the_file(cli, tmp_path, resnet18_64):
    from edgecnn.export.check import convert_precision

    fp16 = convert_precision(resnet18_64, "fp16", tmp_path / "r18.fp16.onnx")
    result = json.loads(cli("check", "resnet18", "--onnx", fp16, "--samples", "1", "--json").stdout)
    assert result["precision"] == "fp16" and result["passed"] and result["tolerance_rel_l2"] == 5e-3
    assert 1e-5 < result["outputs"][0]["rel_l2"] <= 5e-3  # fp16 rounding, not fp32 parity
    assert_one_line_error(cli("check", "resnet18", "--onnx", fp16, "--precision", "int8"),
                          2, "holds a fp16 model, not int8")


def test_non_finite_fp16_output_is_explained():
    """An fp16 output with NaN/Inf gets a note: overflow when the eager activations pass fp16's
    range (with where), otherwise only that the output is not finite."""
    from edgecnn.export.check import _non_finite_note

    x = np.ones((1, 4), np.float32)
    loud = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        loud[0].weight.fill_(1e5)
    note = _non_finite_note(loud, x, "fp16")
    assert "fp16 overflows, the eager activations reach 4e+05 (0)" in note  # module "0", 4 x 1e5
    quiet = nn.Sequential(nn.Linear(4, 4))
    assert "stay within fp16's range" in _non_finite_note(quiet, x, "fp16")
    assert _non_finite_note(quiet, x, "fp32") == "the ONNX output holds NaN or Inf"
