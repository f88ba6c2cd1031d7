"""Hostile and careless inputs to the CLI: one clear line and the right exit code, never an
internal error, never an unbounded allocation (the hardening issue's items 5, 9, 10, 14, 17)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import onnx
import pytest

from conftest import assert_one_line_error


@pytest.mark.parametrize("args, fragment", [
    (["--input-size", "100000"], "--input-size 100000x100000 is too large (at most 16384 per side)"),
    (["--input-size", "0"], "--input-size 0x0 is too small"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
    (["--in-channels", "2"], "--in-channels must be 1 (grey) or 3 (RGB), got 2"),
])
def test_export_refuses_unbounded_or_unusable_sizes(cli, tmp_path, args, fragment):
    result = cli("export", "resnet18", *args, "-o", tmp_path / "r.onnx")
    assert_one_line_error(result, 2, fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_type_error_inside_a_builder_is_an_internal_error(cli, tmp_path, monkeypatch):
    """A builder's TypeError is a bug in edgecnn, not the user's bad input."""
    from edgecnn import models

    spec = models.get_spec("lenet")

    def broken(num_classes: int = 10, in_channels: int = 1):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setitem(models._registry._REGISTRY, "lenet",
                        dataclasses.replace(spec, builder=broken))
    assert_one_line_error(cli("export", "lenet", "-o", tmp_path / "x.onnx"), 1,
                          "internal error: TypeError: unsupported operand")


@pytest.mark.parametrize("missing, command, install", [
    ("torch", ["list"], "pip install 'edgecnn[export,cpu]'"),
    ("torch", ["export", "lenet"], "pip install 'edgecnn[export,cpu]'"),
    ("torch", ["check", "lenet"], "pip install 'edgecnn[export,cpu]'"),
    # `pip install edgecnn` alone has no onnxruntime: the extras that bring one are named
    ("onnxruntime", ["run", "m.onnx", "x.png"], "pip install 'edgecnn[cpu]' (or edgecnn[gpu]"),
    ("onnxruntime", ["bench", "m.onnx"], "pip install 'edgecnn[cpu]' (or edgecnn[gpu]"),
])
def test_commands_without_a_package_name_the_install(missing, command, install, tmp_path):
    """An install without torch (the device side) or without onnxruntime (no runtime extra)."""
    probe = (f"import sys; sys.modules[{missing!r}] = None\n"
             "from edgecnn.cli import main\n"
             f"sys.exit(main({command!r}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"`edgecnn {command[0]}` needs {missing}" in lines[0] and install in lines[0]


def test_info_and_check_on_files_that_are_not_models(cli, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_one_line_error(cli("info", tmp_path), 2, "is a directory, not an .onnx file")
    assert_one_line_error(cli("check", "lenet", empty), 2, "model file is empty")
    assert_one_line_error(cli("check", "lenet", tmp_path), 2, "is a directory")


def test_check_reads_external_data_and_names_what_is_missing(cli, zoo_onnx, tmp_path):
    model = onnx.load(str(zoo_onnx("lenet")))
    path = tmp_path / "lenet.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="lenet.onnx.data")
    assert cli("check", "lenet", path).code == 0
    (tmp_path / "lenet.onnx.data").unlink()
    result = cli("check", "lenet", path)
    assert_one_line_error(result, 2, "has its data at 'lenet.onnx.data', which is missing")
    (tmp_path / "lenet.onnx.data").mkdir()  # it said "missing" of a folder, and of a FIFO
    assert_one_line_error(cli("info", path), 2, "'lenet.onnx.data', which is a directory, not "
                          "a regular file")


def test_bench_json_has_one_provider_list(cli, zoo_onnx):
    result = cli("bench", zoo_onnx("lenet"), "--runs", "2", "--warmup", "0", "--json")
    report = json.loads(result.stdout)
    assert report["providers"] == ["CPUExecutionProvider"] and "provider" not in report


def test_quantize_summary_counts_images_once(cli, zoo_onnx, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(np.full((28, 28), 40 * k, np.uint8)).save(folder / f"{k}.png")
    result = cli("quantize", zoo_onnx("lenet"), "--calibration", folder, "-o", tmp_path / "q.onnx",
                 "--no-check")
    assert result.code == 0, result.stderr
    assert "calibration on 5 images, bias-corrected)" in result.stdout
    assert "images samples" not in result.stdout


def test_info_explains_why_the_file_has_fewer_values(cli, zoo_onnx):
    from edgecnn import models

    result = cli("info", zoo_onnx("resnet18"))
    line = next(line for line in result.stdout.splitlines() if line.startswith("parameters"))
    count = int(line.split()[1].replace(",", ""))
    assert count < models.get_spec("resnet18").params and "edgecnn folds BatchNorm into the convolutions" in line


@pytest.mark.parametrize("details, expected", [
    ({"mode": "static", "method": "minmax", "calibration": "images", "calibration_size": 1,
      "bias_correction": True}, "int8 static, minmax calibration on 1 image, bias-corrected"),
    ({"mode": "static", "method": "entropy", "calibration": "array", "calibration_size": 24,
      "bias_correction": False}, "int8 static, entropy calibration on 24 array samples"),
    ({"mode": "dynamic"}, "int8 dynamic"),
])
def test_quantize_summary_words_the_recipe(details, expected):
    from edgecnn.cli._app import quantize_description

    assert quantize_description("int8", details) == expected
