"""Hostile inputs to `edgecnn run` and `edgecnn check` beyond the model file itself: odd file
names (non-UTF-8 bytes, Unicode line separators), resume files that are not ours, a huge
labels file, glob loops through symlinks, a file where a folder is expected, and parameters
no check can satisfy. Each is one line and exit 2, or works, in bounded time and memory.

(Model files: tests/test_hostile_model_files.py; arrays and images: test_hostile_data_files.py.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_console_script
from tiny_models import tiny_model

QUICK = 60  # seconds: a glob that follows symlink loops never ends; the test fails instead


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_model(tmp_path / "tiny.onnx").path  # [batch, 3, 8, 8], 4 classes


def _image(path: Path) -> Path:
    Image.fromarray(np.full((12, 12, 3), 100, np.uint8)).save(os.fsencode(path), format="PNG")
    return path


def _undecodable(folder: Path, name: bytes) -> Path:
    """A path whose file name is the bytes ``name`` (not UTF-8), as Python sees it."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_line_separator_in_an_image_name_resumes(cli, model, tmp_path, suffix):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a\u2028b.png", "c\x85d.png", "plain.png"):
        _image(folder / name)
    output = tmp_path / f"preds{suffix}"
    assert cli("run", model, folder, "-o", output).code == 0
    result = cli("run", model, folder, "-o", output, "--resume", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["resumed"], summary["done"]) == (3, 0)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_an_image_name_that_is_not_utf8_is_recorded_and_resumes(cli, model, tmp_path, suffix):
    folder = tmp_path / "shots"
    folder.mkdir()
    _image(_undecodable(folder, b"caf\xe9.png"))
    output = tmp_path / f"preds{suffix}"
    result = cli("run", model, folder, "-o", output)
    assert result.code == 0, result.stderr
    text = output.read_text(encoding="utf-8", errors="surrogateescape")
    assert "caf" in text and "error" not in text.split("\n", 1)[-1]
    if suffix == ".jsonl":
        output.read_text(encoding="utf-8")  # JSON lines stay UTF-8: the byte is escaped
        assert json.loads(text)["image"] == str(_undecodable(folder, b"caf\xe9.png"))
    result = cli("run", model, folder, "-o", output, "--resume", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["resumed"] == 1


def test_a_model_whose_path_is_not_utf8_runs(cli, model, tmp_path):
    odd = _undecodable(tmp_path, b"tiny\xff.onnx")
    shutil.copy(model, odd)
    result = cli("run", odd, _image(tmp_path / "shot.png"), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["top_k"]


@pytest.mark.parametrize("tail, fragment", [
    ("x" * 200_000 + ",\n", "field larger than"),  # past the csv module's field limit
    (None, "its header is not"),  # another run's columns (here: no header at all)
])
def test_a_csv_that_is_not_ours_cannot_be_resumed(cli, model, tmp_path, tail, fragment):
    output, shot = tmp_path / "preds.csv", _image(tmp_path / "shot.png")
    assert cli("run", model, shot, "-o", output).code == 0
    header = output.read_text().splitlines()[0]
    output.write_text(header + "\n" + tail if tail else "image,p1\nelsewhere.png,0.5\n")
    before = output.read_bytes()
    assert_one_line_error(cli("run", model, shot, "-o", output, "--resume"), 2,
                          "cannot resume", str(output), fragment)
    assert output.read_bytes() == before


def test_a_jsonl_nested_deeper_than_json_can_read_cannot_be_resumed(cli, model, tmp_path):
    output = tmp_path / "preds.jsonl"
    output.write_text("[" * 100_000 + "\n")
    assert_one_line_error(cli("run", model, _image(tmp_path / "shot.png"), "-o", output,
                              "--resume"), 2, "cannot resume", "line 1")


def test_a_huge_labels_file_is_refused_from_its_size(cli, model, tmp_path):
    labels = tmp_path / "labels.txt"
    with open(labels, "wb") as handle:
        handle.truncate(2**31)  # sparse: 2 GiB that reading would hold in memory
    assert_one_line_error(cli("run", model, _image(tmp_path / "shot.png"), "--labels", labels),
                          2, "labels file", "too large")


def test_labels_split_on_newlines_only(cli, model, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\u2028queen\nbee\ncat\ndog\n", encoding="utf-8")
    result = cli("run", model, _image(tmp_path / "shot.png"), "--labels", labels, "--json")
    assert result.code == 0, result.stderr
    names = {entry["label"] for entry in json.loads(result.stdout)["results"][0]["top_k"]}
    assert names == {"ant\u2028queen", "bee", "cat", "dog"}


def test_a_quoted_recursive_glob_does_not_follow_symlink_loops(model, tmp_path):
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    _image(folder / "sub" / "one.png")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "back").symlink_to(folder / "sub", target_is_directory=True)
    result = run_console_script("run", model, f"{folder}/**/*.png", "--json", timeout=QUICK)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 1  # the image, once


def test_a_file_given_as_the_masks_folder_is_refused_up_front(cli, tmp_path):
    model = tiny_model(tmp_path / "seg.onnx", task="segmentation").path
    masks = tmp_path / "masks"
    masks.write_text("not a folder")
    assert_one_line_error(cli("run", model, _image(tmp_path / "shot.png"), "--masks", masks),
                          2, "masks", "not a folder")
    assert masks.read_text() == "not a folder"


@pytest.mark.parametrize("arguments, fragment", [
    (["--option", "num_classes=5"], "--option cannot set num_classes"),
    (["--num-classes", "100000000"], "--num-classes must be at most"),
    (["--tolerance", "nan"], "--tolerance must be a finite number > 0"),
    (["--tolerance", "-1"], "--tolerance must be a finite number > 0"),
    (["--tolerance", "inf"], "--tolerance must be a finite number > 0"),
])
def test_check_refuses_impossible_parameters_before_building(cli, arguments, fragment):
    assert_one_line_error(cli("check", "lenet5", *arguments), 2, fragment)


def test_export_refuses_a_class_count_no_machine_can_hold(cli, tmp_path):
    output = tmp_path / "lenet.onnx"
    assert_one_line_error(cli("export", "lenet5", "-o", output, "--num-classes", "100000000"),
                          2, "--num-classes must be at most")
    assert list(tmp_path.iterdir()) == []


def test_a_user_builder_that_asks_for_more_memory_than_there_is_is_bad_input(cli, tmp_path):
    source = tmp_path / "wide.py"
    source.write_text("from torch import nn\n\n"
                      "def wide(width: int = 2**40):\n"
                      "    return nn.Linear(1, width)  # 2**40 weights: 4 TiB\n")
    output = tmp_path / "wide.onnx"
    assert_one_line_error(cli("export", f"{source}:wide", "-o", output, "--input-size", "8",
                              "--in-channels", "1"), 2, "wide raised RuntimeError",
                          "can't allocate memory")
    assert not output.exists()


def test_a_user_builders_own_in_channels_option_is_passed_to_it(cli, tmp_path):
    """--in-channels describes the input of a model that is not registered; --option
    in_channels=1 is its builder's own argument (it was an internal TypeError: build_model got
    in_channels twice)."""
    source = tmp_path / "grey.py"
    source.write_text("from torch import nn\n\n"
                      "def grey_net(in_channels: int = 3):\n"
                      "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1),"
                      " nn.Flatten())\n")
    output = tmp_path / "grey.onnx"
    result = cli("export", f"{source}:grey_net", "-o", output, "--input-size", "16",
                 "--in-channels", "1", "--option", "in_channels=1")
    assert result.code == 0, result.stderr
    result = cli("check", f"{source}:grey_net", output, "--option", "in_channels=1")
    assert result.code == 0, result.stderr
