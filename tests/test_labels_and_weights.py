"""Weights provenance (random weights say so) and the packaged ImageNet class names.

An export without --weights warns once on stderr and records "random (seed N)"; `info` and
`run` show what the metadata records. A 1000-class export from a checkpoint gets the ImageNet
names (torchvision's order and spelling) unless --labels is given.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import resources

import pytest
import torch
from conftest import REPO

from edgecnn.export import build_model
from edgecnn.runtime.describe import describe_model

RANDOM_WARNING = "random weights: predictions are meaningless; give --weights"
SAMPLE_IMAGE = REPO / "examples" / "china.jpg"


def metadata_of(path) -> dict:
    return describe_model(path)["metadata"]


@pytest.fixture
def resnet18_weights(tmp_path):
    """A resnet18 state_dict file, as a torchvision checkpoint would be (same keys and shapes)."""
    path = tmp_path / "resnet18-test.pth"
    torch.save(build_model("resnet18").state_dict(), path)
    return path


# ---- the data file and edgecnn.labels -------------------------------------------------------

def test_imagenet_file_is_1000_names_one_per_line():
    text = resources.files("edgecnn.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    lines = text.splitlines()
    assert len(lines) == 1000 and text.endswith("\n") and not text.endswith("\n\n")
    assert all(line and line == line.strip() and not line.startswith("#") for line in lines)
    assert len(set(lines)) == 1000


def test_imagenet_labels_are_torchvisions_names_in_class_index_order():
    from edgecnn.labels import imagenet_labels

    names = imagenet_labels()
    assert len(names) == 1000 and len(set(names)) == 1000 and all(names)
    assert names[0] == "tench" and names[1] == "goldfish" and names[2] == "great white shark"
    assert names[281] == "tabby" and names[999] == "toilet tissue"
    # torchvision tells the two ILSVRC "crane"s and "maillot"s apart
    assert (names[134], names[517]) == ("crane bird", "crane")
    assert (names[638], names[639]) == ("maillot", "maillot tank suit")
    names.append("x")
    assert len(imagenet_labels()) == 1000  # callers get their own list


def test_default_labels_rule():
    from edgecnn.labels import default_labels, imagenet_labels

    assert default_labels(1000, "resnet18-f37072fd.pth") == imagenet_labels()
    assert default_labels(1000, None) is None  # random weights: no class meaning
    assert default_labels(10, "digits.pth") is None  # not ImageNet's head


def test_labels_module_is_torch_free():
    probe = "import sys, edgecnn.labels as l; l.imagenet_labels(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_data_file_ships_in_the_wheel():
    config = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    assert "edgecnn.data" in config["packages"]
    patterns = config["package-data"]["edgecnn.data"]
    data = REPO / "edgecnn" / "data"
    assert any((data / "imagenet_classes.txt") in data.glob(pattern) for pattern in patterns)


# ---- export: warning, provenance, default labels ---------------------------------------------

def test_export_with_random_weights_warns_once(cli, tmp_path):
    output = tmp_path / "lenet.onnx"
    result = cli("export", "lenet", "-o", output, "--seed", "3")
    assert result.code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if RANDOM_WARNING in line] == [f"warning: {RANDOM_WARNING}"]
    assert RANDOM_WARNING not in result.stdout
    assert metadata_of(output)["weights"] == "random (seed 3)"


def test_export_json_keeps_stdout_one_object_and_warns_on_stderr(cli, tmp_path):
    result = cli("export", "lenet", "-o", tmp_path / "lenet.onnx", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["weights"] == "random (seed 0)"
    assert RANDOM_WARNING in result.stderr


def test_export_without_weights_has_no_labels(cli, tmp_path):
    output = tmp_path / "r18.onnx"
    result = cli("export", "resnet18", "--input-size", "64", "--no-check", "-o", output)
    assert result.code == 0, result.stderr
    assert metadata_of(output)["labels"] is None


def test_checkpoint_export_gets_imagenet_names_and_run_prints_them(cli, tmp_path,
                                                                   resnet18_weights):
    from edgecnn.labels import imagenet_labels

    output = tmp_path / "r18.onnx"
    result = cli("export", "resnet18", "--weights", resnet18_weights, "--input-size", "64",
                 "--no-check", "-o", output)
    assert result.code == 0, result.stderr
    assert RANDOM_WARNING not in result.stderr
    meta = metadata_of(output)
    assert meta["labels"] == imagenet_labels()
    assert meta["weights"].startswith("resnet18-test.pth sha256:")

    run = cli("run", output, SAMPLE_IMAGE, "--top-k", "3")
    assert run.code == 0, run.stderr
    header, image, *ranks = run.stdout.splitlines()
    assert "resnet18-test.pth sha256:" in header
    assert len(ranks) == 3
    names = set(imagenet_labels())
    for rank in ranks:  # "  1. tabby  0.6100"
        label = rank.split(". ", 1)[1].rsplit("  ", 1)[0]
        assert label in names, rank

    report = json.loads(cli("run", output, SAMPLE_IMAGE, "--json").stdout)
    assert report["weights"] == meta["weights"]
    assert all(entry["label"] in names for entry in report["results"][0]["top_k"])


def test_labels_option_overrides_the_imagenet_default(cli, tmp_path, resnet18_weights):
    labels = tmp_path / "classes.txt"
    labels.write_text("".join(f"class {index}\n" for index in range(1000)), encoding="utf-8")
    output = tmp_path / "r18.onnx"
    result = cli("export", "resnet18", "--weights", resnet18_weights, "--labels", labels,
                 "--input-size", "64", "--no-check", "-o", output)
    assert result.code == 0, result.stderr
    assert metadata_of(output)["labels"] == [f"class {index}" for index in range(1000)]


# ---- info and run show the provenance --------------------------------------------------------

def test_info_and_run_show_random_weights(cli, resnet18_64):
    info = cli("info", resnet18_64)
    assert info.code == 0, info.stderr
    assert re.search(r"^weights +random \(seed 0\)$", info.stdout, re.MULTILINE), info.stdout

    run = cli("run", resnet18_64, SAMPLE_IMAGE, "--top-k", "1")
    assert run.code == 0, run.stderr
    assert "random (seed 0)" in run.stdout.splitlines()[0]
    report = json.loads(cli("run", resnet18_64, SAMPLE_IMAGE, "--json").stdout)
    assert report["weights"] == "random (seed 0)"


def test_sample_image_is_small_and_readable():
    from PIL import Image

    assert SAMPLE_IMAGE.stat().st_size < 40_000
    with Image.open(SAMPLE_IMAGE) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert max(image.size) <= 320
