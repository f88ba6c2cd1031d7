"""`edgecnn evaluate`: accuracy, per-class figures, confusion matrix, several models, bad sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image
from tiny_models import square_root_first, tiny_model

from edgecnn.runtime import Engine
from edgecnn.runtime.evaluate import evaluate
from edgecnn.runtime.preprocess import preprocess_images
from edgecnn.runtime.stream import expand_inputs

LABELS = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return [tiny_model(folder / f"tiny{seed}.onnx", labels=LABELS, seed=seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """ant/, bee/, cat/ (no dog: a validation set may lack a class), 6 images each."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(5)
    for name in LABELS[:3]:
        (root / name).mkdir()
        for index in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                root / name / f"{index}.png")
    return root


def expected_figures(model, root):
    files = expand_inputs([root])
    truth = np.array([LABELS.index(path.parent.name) for path in files])
    scores = Engine(model.path, "cpu").scores(preprocess_images(files, model.info))
    order = np.argsort(-scores, axis=1, kind="stable")
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (truth, order[:, 0]), 1)
    return order[:, 0], (order[:, 0] == truth).mean(), (order[:, :4] == truth[:, None]).any(1).mean(), confusion


def test_folder_figures_match_a_direct_computation(models, image_folder):
    report = evaluate([model.path for model in models], image_folder, provider="cpu", batch=5)
    assert report["classes"] == LABELS and report["samples"] == 18
    first, second = report["models"]
    top1s = []
    for row, model in zip(report["models"], models):
        top1, top1_rate, top5_rate, confusion = expected_figures(model, image_folder)
        top1s.append(top1)
        assert row["top1"] == pytest.approx(top1_rate) and row["top5"] == pytest.approx(top5_rate)
        assert row["confusion"] == confusion.tolist()
        assert [c["samples"] for c in row["per_class"]] == [6, 6, 6, 0]
        assert row["per_class"][3]["top1"] is None
    assert first["top1_agreement"] is None
    assert second["top1_agreement"] == pytest.approx((top1s[0] == top1s[1]).mean())


def test_npz_gives_the_figures_of_the_folder(models, image_folder, tmp_path):
    files = expand_inputs([image_folder])
    inputs = preprocess_images(files, models[0].info)
    labels = np.array([LABELS.index(path.parent.name) for path in files])
    np.savez(tmp_path / "val.npz", inputs=inputs, labels=labels)
    from_array = evaluate([models[0].path], tmp_path / "val.npz")
    from_folder = evaluate([models[0].path], image_folder)
    assert from_array["source"] == "array" and from_folder["source"] == "images"
    for key in ("top1", "top5", "confusion", "per_class"):
        assert from_array["models"][0][key] == from_folder["models"][0][key]


def test_an_array_the_model_scores_nan_is_one_line_not_a_figure(cli, models, tmp_path):
    """argmax takes NaN for the largest score: the figures would be wrong without a word."""
    model = square_root_first(models[0].path, tmp_path / "sqrt.onnx")
    inputs = np.ones((6, *models[0].info.shape), np.float32)
    inputs[4] = -1.0
    np.savez(tmp_path / "val.npz", inputs=inputs, labels=np.zeros(6, np.int64))
    assert_one_line_error(cli("evaluate", model, tmp_path / "val.npz"), 2,
                          "sample 4 of", "val.npz", "NaN or Inf")


def test_cli_table_json_and_unreadable_images(cli, models, image_folder, tmp_path):
    result = cli("evaluate", models[0].path, models[1].path, image_folder)
    assert result.code == 0, result.stderr
    assert "top-1 agreement" in result.stdout and "true \\ predicted" in result.stdout
    mixed = tmp_path / "mixed"
    for name in ("ant", "bee"):
        (mixed / name).mkdir(parents=True)
        (mixed / name / "0.png").write_bytes((image_folder / name / "0.png").read_bytes())
    (mixed / "bee" / "broken.jpg").write_text("not an image")
    result = cli("evaluate", models[0].path, mixed, "--json")
    report = json.loads(result.stdout)
    assert result.code == 0 and report["models"][0]["samples"] == 2
    assert [item["image"] for item in report["unreadable"]] == [str(mixed / "bee" / "broken.jpg")]
    assert "broken.jpg" in result.stderr


def test_plot_without_matplotlib_is_one_line(cli, models, image_folder, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert_one_line_error(cli("evaluate", models[0].path, image_folder, "--plot",
                              tmp_path / "cm.png"), 2, "--plot needs matplotlib")
    assert not (tmp_path / "cm.png").exists()


def test_bad_sets_and_models(cli, models, image_folder, tmp_path):
    odd = tmp_path / "odd"
    (odd / "zebra").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(odd / "zebra" / "0.png")
    assert_one_line_error(cli("evaluate", models[0].path, odd), 2, "zebra", "are not labels of the model",
                          "ant, bee, cat, dog")
    bare = tiny_model(tmp_path / "bare.onnx", classes=3)  # no labels: 3 folders = 3 classes
    assert cli("evaluate", bare.path, image_folder, "--json").code == 0
    two = tiny_model(tmp_path / "two.onnx", classes=2)
    assert_one_line_error(cli("evaluate", two.path, image_folder), 2,
                          "has 3 class sub-folders and the model 2 classes")
    assert_one_line_error(cli("evaluate", models[0].path, bare.path, image_folder), 2,
                          "has 3 classes", "4")
    seg = tiny_model(tmp_path / "seg.onnx", task="segmentation")
    assert_one_line_error(cli("evaluate", seg.path, image_folder), 2, "classification models")
    assert_one_line_error(cli("evaluate", image_folder), 2, "MODEL.onnx [MODEL2.onnx ...] DATA")
    assert_one_line_error(cli("evaluate", models[0].path, tmp_path / "nope"), 2, "data folder not found")
    (tmp_path / "flat").mkdir()
    assert_one_line_error(cli("evaluate", models[0].path, tmp_path / "flat"), 2,
                          "one sub-folder of images per class")


@pytest.mark.parametrize("option", [{"batch": 0}, {"batch": -1}, {"workers": 0},
                                    {"max_pixels": -5}])
def test_counts_are_checked_before_any_work_on_both_sources(models, image_folder, tmp_path,
                                                            option):
    from edgecnn.errors import BadInput

    np.savez(tmp_path / "val.npz", inputs=np.zeros((2, 3, 16, 16), np.float32),
             labels=np.zeros(2, np.int64))
    name = next(iter(option))
    for data in (image_folder, tmp_path / "val.npz"):
        with pytest.raises(BadInput, match=f"^{name} must be an integer >= 1"):
            evaluate([models[0].path], data, **option)
