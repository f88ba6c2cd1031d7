"""Class names: the packaged ImageNet names and the labels an export gets by default. Torch-free.

``imagenet_labels()`` reads ``edgecnn/data/imagenet_classes.txt`` (torchvision's 1000 names in
class-index order; source and licence in ``edgecnn/data/__init__.py``). ``default_labels`` is the
exporter's rule when no ``--labels`` file is given: a 1000-class model loaded from a checkpoint
is taken to be an ImageNet classifier (every torchvision checkpoint the zoo loads is) and gets
those names; random weights or another class count get none (`run` prints class indices).
"""

from __future__ import annotations

import functools
import os
from importlib import resources

IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    text = resources.files("edgecnn.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != IMAGENET_CLASSES:  # a broken install, not bad input
        raise RuntimeError(f"edgecnn/data/imagenet_classes.txt has {len(names)} names, not 1000")
    return names


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in class-index order ("tench", "goldfish", ...)."""
    return list(_imagenet_names())


def default_labels(num_classes: int, weights: str | os.PathLike | None) -> list[str] | None:
    """Labels of an export given no labels file: ImageNet's for 1000 classes from a checkpoint."""
    if weights is not None and num_classes == IMAGENET_CLASSES:
        return imagenet_labels()
    return None
