"""`edgecnn annotate`: validated edgecnn metadata written into files from plain torch.onnx.export,
atomically, external data kept (shared in the same folder, copied, both or neither, elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error
from foreign_models import CLASSES, ScaleFirst, TinyClassifier, export_dynamo, export_legacy

from edgecnn.runtime import Engine
from edgecnn.runtime.onnx_file import get_metadata, load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    return {"dynamo": export_dynamo(TinyClassifier(), folder / "model.onnx",
                                    (torch.randn(1, 3, 32, 32),)),
            "dynamic": export_dynamo(TinyClassifier(), folder / "dynamic.onnx",
                                     (torch.randn(2, 3, 32, 32),), dynamic_hw=True),
            "legacy_nhwc": export_legacy(TinyClassifier(nhwc=True), folder / "nhwc.onnx",
                                         (torch.randn(1, 28, 28, 3),)),
            "gray": export_legacy(TinyClassifier(channels=1), folder / "gray.onnx",
                                  (torch.randn(1, 1, 28, 28),))}


@pytest.fixture
def dynamo(tmp_path, exported) -> Path:
    """A fresh copy of the dynamo export (model.onnx + model.onnx.data) in tmp_path/models."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(exported["dynamo"].parent / name, folder / name)
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return path


def _metadata(path: Path):
    return get_metadata(load_model(path, external_data=False), str(path))


def _files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_annotated_file_runs_without_flags(cli, dynamo, photo, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {index}\n" for index in range(CLASSES)))
    flags = ["--mean", "0.5", "0.4", "0.3", "--std", "0.2,0.2,0.2", "--crop-fraction", "1"]
    result = cli("annotate", dynamo, "-o", dynamo.parent / "annotated.onnx", *flags,
                 "--labels", labels)
    assert result.code == 0, result.stderr
    assert "wrote" in result.stdout and "classification" in result.stdout
    annotated = dynamo.parent / "annotated.onnx"
    # The same folder: the new file shares model.onnx.data, and nothing else is written.
    assert _files(dynamo.parent) == {"model.onnx", "model.onnx.data", "annotated.onnx"}
    metadata = _metadata(annotated)
    assert metadata.input.mean == [0.5, 0.4, 0.3] and metadata.input.shape == [3, 32, 32]
    assert metadata.labels == [f"class {index}" for index in range(CLASSES)]
    assert _metadata(dynamo) is None  # the source is untouched
    with_flags = cli("run", dynamo, photo, "--json", *flags, "--labels", labels)
    without = cli("run", annotated, photo, "--json")
    assert without.code == 0, without.stderr
    assert json.loads(without.stdout)["results"] == json.loads(with_flags.stdout)["results"]
    assert "class" in json.dumps(json.loads(without.stdout)["results"])


def test_annotating_into_another_folder_copies_the_data(cli, dynamo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("annotate", dynamo, "-o", elsewhere / "copy.onnx", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["external_data"] == ["model.onnx.data"]
    assert _files(elsewhere) == {"copy.onnx", "model.onnx.data"}
    assert (elsewhere / "model.onnx.data").read_bytes() == (dynamo.parent / "model.onnx.data").read_bytes()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    shutil.rmtree(dynamo.parent)  # the copy stands alone
    engine = Engine(elsewhere / "copy.onnx", "cpu")
    assert engine.metadata.input.name == "input"
    with torch.no_grad():
        expected = TinyClassifier()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(next(iter(engine.run(x).values())), expected, rtol=1e-4, atol=1e-5)


def test_other_weights_in_the_output_folder_are_not_overwritten(cli, dynamo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.onnx.data").write_bytes(b"another model's weights")
    assert_one_line_error(cli("annotate", dynamo, "-o", elsewhere / "copy.onnx"), 2,
                          "already has a different model.onnx.data")
    assert _files(elsewhere) == {"model.onnx.data"}


def _relocated(dynamo: Path, folder: Path, location: str) -> Path:
    """``dynamo``'s model in ``folder``, its external data moved to ``location`` there."""
    model = onnx.load(dynamo, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dynamo.parent / "model.onnx.data", folder / location)
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


@pytest.mark.parametrize("location", [".ssh/authorized_keys", "sub/w.data"])
def test_data_in_a_sub_folder_is_not_copied_into_the_output_folder(cli, dynamo, tmp_path,
                                                                   location):
    """A copy writes the file's locations under the output folder: a location of
    .ssh/authorized_keys planted that file in a home folder given as the output's."""
    (tmp_path / "pkg").mkdir()
    source = _relocated(dynamo, tmp_path / "pkg", location)
    home = tmp_path / "home"
    home.mkdir()
    assert_one_line_error(cli("annotate", source, "-o", home / "model.onnx"), 2, location,
                          "sub-folder", "annotate copies only the data files beside the model")
    assert _files(home) == set()
    in_place = cli("annotate", source, "--in-place")  # nothing is copied: fine
    assert in_place.code == 0, in_place.stderr


def test_data_named_with_a_leading_dot_slash_is_beside_the_model(cli, dynamo, tmp_path):
    (tmp_path / "pkg").mkdir()
    source = _relocated(dynamo, tmp_path / "pkg", "./w.data")
    (tmp_path / "home").mkdir()
    result = cli("annotate", source, "-o", tmp_path / "home" / "model.onnx")
    assert result.code == 0, result.stderr
    assert _files(tmp_path / "home") == {"model.onnx", "w.data"}


def test_data_named_like_the_output_is_refused(cli, dynamo, tmp_path):
    """The copied data and the model written over it: run read the model's bytes as weights."""
    (tmp_path / "pkg").mkdir()
    source = _relocated(dynamo, tmp_path / "pkg", "out.onnx")
    (tmp_path / "o").mkdir()
    assert_one_line_error(cli("annotate", source, "-o", tmp_path / "o" / "out.onnx"), 2,
                          "out.onnx", "the output's own name")
    assert _files(tmp_path / "o") == set()


def test_a_failed_write_leaves_nothing(cli, dynamo, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_replace = os.replace

    def fail_on_the_model(source, target):
        if str(target).endswith(".onnx"):
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", fail_on_the_model)
    result = cli("annotate", dynamo, "-o", elsewhere / "copy.onnx")
    assert result.code != 0
    assert _files(elsewhere) == set()  # the data copy was taken back: both or neither
    assert _files(dynamo.parent) == {"model.onnx", "model.onnx.data"}


def test_in_place_replaces_only_what_is_given(cli, dynamo):
    assert cli("annotate", dynamo, "--in-place", "--mean", "0.1", "0.2", "0.3").code == 0
    assert cli("annotate", dynamo, "--in-place", "--color", "bgr").code == 0
    metadata = _metadata(dynamo)
    assert metadata.input.mean == [0.1, 0.2, 0.3] and metadata.input.color == "BGR"
    assert _files(dynamo.parent) == {"model.onnx", "model.onnx.data"}
    assert Engine(dynamo, "cpu").metadata == metadata


def test_in_place_on_a_symlink_is_refused(cli, dynamo, tmp_path):
    """The link was replaced by a rewritten copy, and the file it named left as it was."""
    link = dynamo.parent / "link.onnx"
    link.symlink_to(dynamo.name)
    before = dynamo.read_bytes()
    assert_one_line_error(cli("annotate", link, "--in-place", "--color", "bgr"), 2,
                          "--in-place rewrites a regular file", "is a symbolic link")
    assert link.is_symlink() and dynamo.read_bytes() == before


def test_defaults_come_from_the_graph(cli, exported, tmp_path):
    outputs = {}
    for name in ("legacy_nhwc", "gray"):
        outputs[name] = tmp_path / f"{name}.onnx"
        result = cli("annotate", exported[name], "-o", outputs[name])
        assert result.code == 0, result.stderr
    nhwc, gray = _metadata(outputs["legacy_nhwc"]), _metadata(outputs["gray"])
    assert nhwc.input.name == "input.1" and nhwc.input.layout == "NHWC"
    assert nhwc.input.shape == [3, 28, 28] and nhwc.input.color == "RGB"
    assert nhwc.input.mean == [0.485, 0.456, 0.406] and nhwc.input.crop_fraction == 0.875
    assert nhwc.task == "classification" and nhwc.opset == 13 and nhwc.precision == "fp32"
    assert gray.input.color == "GRAY" and (gray.input.mean, gray.input.std) == ([0.0], [1.0])
    assert gray.model == "gray"
    help_text = cli("annotate", "--help").stdout
    for default in ("ImageNet", "0.875", "classification", "RGB", "255"):
        assert default in help_text


@pytest.mark.parametrize("args, fragment", [
    (["--mean", "0.5", "0.5"], "--mean must be a list of one number per channel (3)"),
    (["--std", "1", "-1", "1"], "--std must be > 0"),
    (["--mean", "inf", "0", "0"], "--mean must be a finite number"),
    (["--input-size", "64"], "--input-size must match the fixed height 32"),
    (["--layout", "NCWH"], "--layout must be one of NCHW, NHWC"),
    (["--crop-fraction", "0"], "--crop-fraction must be in [0.05, 1]"),
    (["--input-name", "x"], "--input-name must be one of the graph's inputs"),
    (["--labels", "LABELS3"], "--labels must be one per class (5"),
    (["--labels", "missing.txt"], "labels file not found"),
    (["--in-place"], "--output and in_place exclude each other"),
])
def test_bad_values_are_one_line_and_write_nothing(cli, dynamo, tmp_path, args, fragment):
    (tmp_path / "labels3.txt").write_text("a\nb\nc\n")
    args = [str(tmp_path / "labels3.txt") if arg == "LABELS3" else arg for arg in args]
    target = tmp_path / "out.onnx"
    assert_one_line_error(cli("annotate", dynamo, "-o", target, *args), 2, fragment)
    assert not target.exists() and _files(tmp_path) == {"models", "labels3.txt"}
    assert _files(dynamo.parent) == {"model.onnx", "model.onnx.data"}


def test_a_layout_that_reads_the_channels_wrong_is_refused(cli, dynamo, photo, tmp_path):
    """[1, 3, 32, 32] read as NHWC has 32 channels, which no image gives: one line naming
    --layout, from annotate, run and quantize alike (run called each image unreadable)."""
    target = tmp_path / "out.onnx"
    fragment = "--layout NHWC reads input"
    assert_one_line_error(cli("annotate", dynamo, "-o", target, "--layout", "NHWC"), 2, fragment,
                          "as NCHW it has 3")
    assert not target.exists()
    assert_one_line_error(cli("run", dynamo, photo, "--layout", "NHWC"), 2, fragment)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photo, images / "a.png")
    assert_one_line_error(cli("quantize", dynamo, "-o", target, "--calibration", images,
                              "--layout", "NHWC"), 2, fragment)


def test_dynamic_sizes_need_an_input_size(cli, exported, tmp_path):
    target = tmp_path / "out.onnx"
    assert_one_line_error(cli("annotate", exported["dynamic"], "-o", target), 2,
                          "--input-size is needed")
    assert cli("annotate", exported["dynamic"], "-o", target, "--input-size", "64", "48").code == 0
    assert _metadata(target).input.shape == [3, 64, 48]


def test_no_output_is_one_line(cli, dynamo):
    assert_one_line_error(cli("annotate", dynamo), 2, "--output is needed")


def test_without_the_onnx_package_annotate_says_so(dynamo):
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from edgecnn.cli import main\n"
            f"sys.exit(main(['annotate', {str(dynamo)!r}, '--in-place']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "`edgecnn annotate` needs onnx" in lines[0]
    assert onnx.load(str(dynamo), load_external_data=False).metadata_props == []


def test_the_named_input_is_the_image_input(cli, tmp_path):
    from edgecnn.runtime.onnx_file import fixed_batch, input_dims

    source = export_legacy(ScaleFirst(), tmp_path / "two.onnx",
                           (torch.ones(2, 1), torch.randn(2, 3, 24, 24)),
                           input_names=["scale", "image"])
    target = tmp_path / "annotated.onnx"
    assert_one_line_error(cli("annotate", source, "-o", target), 2, "--input-name is needed",
                          "'scale', 'image'")
    assert_one_line_error(cli("annotate", source, "-o", target, "--input-name", "scale"), 2,
                          "input 'scale' has rank 2")
    assert cli("annotate", source, "-o", target, "--input-name", "image").code == 0
    model = load_model(target)
    assert input_dims(model) == [2, 3, 24, 24] and fixed_batch(model) == 2
    assert _metadata(target).input.name == "image"
    assert cli("bench", target, "--runs", "1", "--warmup", "0").code == 0


def test_metadata_naming_an_input_the_graph_lacks_is_one_line(cli, dynamo, tmp_path):
    """A file whose metadata names input 'foo' while its graph's input is 'input' (another tool
    renamed it): annotate and quantize with settings say so and how to fix it; --input-name
    does."""
    stale = dynamo.parent / "stale.onnx"
    assert cli("annotate", dynamo, "-o", stale).code == 0
    model = onnx.load(str(stale), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == "edgecnn":
            fields = json.loads(entry.value)
            fields["input"]["name"] = "foo"
            entry.value = json.dumps(fields)
    onnx.save(model, str(stale))
    assert _metadata(stale).input.name == "foo"
    for command in (["annotate", stale, "-o", tmp_path / "out.onnx"],
                    ["quantize", stale, "-o", tmp_path / "out.onnx", "--mode", "int8-dynamic"]):
        assert_one_line_error(cli(*command, "--mean", "0.5", "0.5", "0.5"), 2,
                              "metadata's input 'foo' is not one of the graph's inputs",
                              "(--input-name input)")
    assert not (tmp_path / "out.onnx").exists()
    fixed = cli("annotate", stale, "-o", tmp_path / "out.onnx", "--input-name", "input")
    assert fixed.code == 0, fixed.stderr
    assert _metadata(tmp_path / "out.onnx").input.name == "input"
