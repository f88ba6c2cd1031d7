"""Real data: the bundled digits, the tiny trainer, and examples/train_digits.py end to end."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from edgecnn import BadInput, models
from edgecnn.datasets import digit_images, load_digits, write_pngs
from edgecnn.runtime import InputInfo
from edgecnn.runtime.preprocess import preprocess_images
from edgecnn.training import accuracy, fit_classifier, predict


def _example():
    path = REPO / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_example(tmp_path):
    """LeNet on real scans: >= 95% held out, and the .onnx (fed raw images through the
    runtime's metadata preprocessing) agrees to within one test sample."""
    result = _example().train_and_export(tmp_path / "lenet.onnx")
    assert result["test_samples"] == 449 and result["train_samples"] == 1348
    assert result["eager_accuracy"] >= 0.95, result
    assert abs(result["onnx_accuracy"] - result["eager_accuracy"]) <= 1 / result["test_samples"]
    assert result["export_rel_l2"] <= 1e-5
    assert (tmp_path / "lenet.onnx").is_file()


def test_load_digits_split_and_normalization():
    digits = load_digits()
    assert digits.x_train.shape == (1348, 1, 28, 28) and digits.x_test.shape == (449, 1, 28, 28)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.test_images.dtype == np.uint8 and digits.test_images.shape == (449, 28, 28)
    assert digits.test_images.max() == 255 and digits.test_images.min() == 0  # ink is bright
    assert sorted(np.unique(digits.y_test)) == list(range(10))
    mean, std = models.get_spec("lenet").normalization()
    assert (digits.mean, digits.std) == (tuple(mean), tuple(std))
    np.testing.assert_allclose(digits.x_test[:, 0], (digits.test_images / 255 - mean[0]) / std[0],
                               rtol=1e-6, atol=1e-6)
    # What the runtime does with an exported lenet's metadata gives the same arrays: the
    # digits fill the frame, so the spec (hence the metadata) asks for no center crop.
    crop = models.get_spec("lenet").crop_fraction
    assert crop == 1.0
    info = InputInfo(shape=[1, 28, 28], color="GRAY", mean=mean, std=std, crop_fraction=crop)
    batch = preprocess_images(list(digits.test_images[:8]), info)
    np.testing.assert_allclose(batch, digits.x_test[:8], rtol=1e-6, atol=1e-6)
    # Seeded: the same split again, another split with another seed.
    np.testing.assert_array_equal(load_digits().test_labels, digits.test_labels)
    assert not np.array_equal(load_digits(seed=1).test_labels, digits.test_labels)
    images, labels = digit_images(image_size=8)
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)


def test_digits_errors(monkeypatch):
    with pytest.raises(BadInput, match="test_fraction"):
        load_digits(test_fraction=1.5)
    with pytest.raises(BadInput, match="image_size"):
        digit_images(image_size=4)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if not installed
    with pytest.raises(BadInput, match="pip install scikit-learn"):
        load_digits()


def test_write_pngs_round_trip(tmp_path):
    images, labels = digit_images()
    paths = write_pngs(images[:3], tmp_path, labels[:3])
    assert [p.name for p in paths] == [f"{i:05d}_{labels[i]}.png" for i in range(3)]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[2])), images[2])
    with pytest.raises(BadInput, match="does not exist"):
        write_pngs(images[:1], tmp_path / "missing")


def test_fit_classifier_is_deterministic_and_learns():
    digits = load_digits(image_size=8)
    x, y = digits.x_train, digits.y_train

    def train(seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        losses = fit_classifier(model, x, y, epochs=4, seed=seed)
        return model, losses

    threads = torch.get_num_threads()
    first, losses = train(seed=0)
    second, _ = train(seed=0)
    other, _ = train(seed=1)
    assert torch.get_num_threads() == threads and not first.training
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))
    assert accuracy(predict(first, digits.x_test), digits.y_test) > 0.9
    with pytest.raises(ValueError, match="same number"):
        fit_classifier(first, x, y[:3])
    assert accuracy(np.eye(3), np.array([0, 1, 1])) == pytest.approx(2 / 3)
