"""Real images without a download: scikit-learn's bundled "digits" (1,797 scans of handwritten
digits, 8x8 pixels, 16 grey levels), upsampled to the size of the MNIST models.

    digits = load_digits()                      # 28x28, 75/25 split, seed 0
    digits.x_train, digits.y_train              # float32 N x 1 x 28 x 28, normalised like lenet
    digits.test_images                          # uint8 N x 28 x 28, 0-255 (for image files)

The images are scaled to 0-255 with the ink bright (as in MNIST) and resized with Pillow's
bilinear filter; the float arrays are ``(pixel / 255 - mean) / std`` with the mean/std of a
registered model's spec (``lenet`` by default), which is exactly what the runtime does with an
exported model's metadata, so ``preprocess_images(digits.test_images, ...)`` gives ``x_test``.

scikit-learn is a development extra (``pip install scikit-learn``); nothing here imports torch
until a model's normalisation is looked up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgecnn.errors import BadInput

DIGITS_LEVELS = 16  # the scans hold values 0..16


@dataclass(frozen=True)
class Digits:
    train_images: np.ndarray  # uint8 (N, H, W), 0-255
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, ...]   # normalisation of the float arrays (0-1 scale, one grey channel)
    std: tuple[float, ...]

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) -> float32 (N, 1, H, W): ``(pixel / 255 - mean) / std``."""
        scaled = images.astype(np.float32)[:, None] / np.float32(255)
        return (scaled - np.float32(self.mean[0])) / np.float32(self.std[0])

    @property
    def x_train(self) -> np.ndarray:
        return self.normalize(self.train_images)

    @property
    def y_train(self) -> np.ndarray:
        return self.train_labels

    @property
    def x_test(self) -> np.ndarray:
        return self.normalize(self.test_images)

    @property
    def y_test(self) -> np.ndarray:
        return self.test_labels


def _digits_scans() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise BadInput("the digits data set comes with scikit-learn: pip install scikit-learn") \
            from None
    bunch = sklearn_digits()
    return bunch.images, bunch.target.astype(np.int64)


def digit_images(image_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, image_size, image_size) 0-255 images, and their labels."""
    if image_size < 8:
        raise BadInput(f"image_size must be >= 8 (the scans are 8x8), got {image_size}")
    scans, labels = _digits_scans()
    levels = np.round(scans * (255 / DIGITS_LEVELS)).astype(np.uint8)
    if image_size != 8:
        levels = np.stack([np.asarray(Image.fromarray(scan).resize(
            (image_size, image_size), Image.BILINEAR)) for scan in levels])
    return levels, labels


def load_digits(image_size: int = 28, test_fraction: float = 0.25, seed: int = 0,
                model: str = "lenet") -> Digits:
    """A seeded train/test split of the digits, normalised like ``model``'s spec (one channel)."""
    if not 0 < test_fraction < 1:
        raise BadInput(f"test_fraction must be between 0 and 1, got {test_fraction}")
    from edgecnn.models import get_spec  # imports torch: only when asked for

    mean, std = get_spec(model).normalization(1)
    images, labels = digit_images(image_size)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Digits(train_images=images[train], train_labels=labels[train],
                  test_images=images[test], test_labels=labels[test],
                  mean=tuple(mean), std=tuple(std))


def write_pngs(images: np.ndarray, directory: str | os.PathLike,
               labels: np.ndarray | None = None) -> list[Path]:
    """Save uint8 (N, H, W) images as PNG files (``00012_7.png`` with a label), e.g. a
    calibration folder or inputs for ``edgecnn run``. Returns the paths in order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput(f"directory does not exist: {directory}")
    paths = []
    for index, image in enumerate(images):
        suffix = f"_{int(labels[index])}" if labels is not None else ""
        path = directory / f"{index:05d}{suffix}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
