"""``evaluate(models, data)``: top-1, top-5, per-class accuracy and a confusion matrix of one or
more classification models on a labelled set, and each model's top-1 agreement with the first.

    report = evaluate(["resnet18.onnx", "resnet18_int8.onnx"], "val/")   # ImageFolder or .npz

The set is an ImageFolder layout (``datasets.class_folders``: sub-folders named after the
model's labels, else one per class in sorted order) streamed through ``stream.stream_scores``
(flat memory: only each image's top-1 is kept, for the agreement), or an .npz of ready
``inputs`` and ``labels``. Unreadable images are skipped and counted, for every model alike.
Torch-free.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput
from edgecnn.runtime.datasets import existing_source, labelled_files, load_arrays
from edgecnn.runtime.engine import Engine
from edgecnn.runtime.postprocess import is_class_vector, usable_labels
from edgecnn.runtime.providers import ProviderRequest
from edgecnn.runtime.stream import (
    DEFAULT_BATCH, check_stream_options, stream_scores, streaming_session_options,
)

TOP_K = 5
# Classes up to which the report holds the dense confusion matrix (a million cells).
DENSE_CONFUSION_CLASSES = 1000  # past this many classes, the cells with samples only
# The most classes evaluate counts: its class names and per-class counts grow with them, and
# a file can declare (and compute, with no weights) 10**9.
MAX_EVALUATE_CLASSES = 1_000_000


@dataclass
class Tally:
    """Running counts of one model on a labelled set: (true class, predicted class) -> samples,
    kept sparse (a file declaring 100,000 classes would make a dense matrix 74.5 GiB)."""

    classes: int
    cells: Counter = field(default_factory=Counter)  # (true class, predicted class) -> count
    top5: int = 0
    predictions: list = field(default_factory=list)  # top-1 per sample, -1 where unreadable

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """(N, classes) scores of N samples with their labels."""
        best = np.argsort(-scores, axis=1, kind="stable")[:, :min(TOP_K, self.classes)]
        self.cells.update(zip(labels.tolist(), best[:, 0].tolist()))
        self.top5 += int((best == labels[:, None]).any(axis=1).sum())
        self.predictions += best[:, 0].tolist()

    def report(self, reference: "Tally | None", class_names: Sequence[str]) -> dict:
        per_class, right = np.zeros(self.classes, np.int64), np.zeros(self.classes, np.int64)
        for (true, predicted), count in self.cells.items():
            per_class[true] += count
            right[true] += count if true == predicted else 0
        samples = int(per_class.sum())
        ours = np.asarray(self.predictions)
        agreement = None
        if reference is not None:
            theirs = np.asarray(reference.predictions)
            both = (ours >= 0) & (theirs >= 0)
            agreement = round(float((ours[both] == theirs[both]).mean()), 6) if both.any() else None
        dense = self.classes <= DENSE_CONFUSION_CLASSES
        return {"samples": samples,
                "top1": round(float(right.sum()) / max(samples, 1), 6),
                "top5": round(self.top5 / max(samples, 1), 6),
                "top1_agreement": agreement,
                "per_class": [{"class": class_names[i], "samples": int(per_class[i]),
                               "top1": (round(float(right[i] / per_class[i]), 6)
                                        if per_class[i] else None)}
                              for i in range(self.classes) if dense or per_class[i]],
                "confusion": self._dense().tolist() if dense else None,
                "confusion_cells": None if dense else [
                    [true, predicted, count]
                    for (true, predicted), count in sorted(self.cells.items())]}

    def _dense(self) -> np.ndarray:
        matrix = np.zeros((self.classes, self.classes), np.int64)
        for (true, predicted), count in self.cells.items():
            matrix[true, predicted] = count
        return matrix


def _classes(engine: Engine) -> int:
    metadata = engine.require_metadata()
    shape = engine.outputs[0].shape
    if metadata.task != "classification" or not is_class_vector(shape) or not isinstance(
            shape[1], int):
        raise BadInput(f"evaluate measures classification models; {engine.path} is "
                       f"{metadata.task} with output {engine.outputs[0].describe()}")
    if shape[1] > MAX_EVALUATE_CLASSES:
        raise BadInput(f"{engine.path} declares {shape[1]:,} classes; evaluate counts up to "
                       f"{MAX_EVALUATE_CLASSES:,}")
    return shape[1]


def _tally(engine: Engine, number: int, files, labels: np.ndarray, report: dict, options: dict,
           ray: str | None, engine_options: dict, on_progress) -> Tally:
    """One model's Tally over the image ``files`` (scored here, or on Ray); the first model's
    unreadable images go into ``report``."""
    if ray is None:
        outcomes = stream_scores(engine, files, **options)
    else:
        from edgecnn.runtime.ray import ray_outcomes

        outcomes = ray_outcomes(ray, engine.path, files, engine_options=engine_options,
                                **options)
    tally = Tally(_classes(engine))
    with contextlib.closing(outcomes):
        for index, outcome in enumerate(outcomes):
            if outcome.error is not None:
                tally.predictions.append(-1)
                if number == 0:
                    report["unreadable"].append({"image": str(outcome.path),
                                                 "error": outcome.error})
            else:
                tally.add(outcome.scores[None], labels[index:index + 1])
            if on_progress is not None:
                on_progress(Path(engine.path).name, index + 1, len(files))
    return tally


def evaluate(models: Sequence[str | os.PathLike], data: str | os.PathLike, *,
             batch: int | None = None, workers: int | None = None,
             provider: ProviderRequest = "auto", threads: int | None = None,
             fallback: bool = True, max_pixels: int | None = None, ray: str | None = None,
             preprocessing: Mapping | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Accuracy of each model on ``data`` (an ImageFolder folder or an .npz with ``inputs`` and
    ``labels``). The first model sets the classes (its labels name the sub-folders); the others
    must have as many classes. Returns {"data", "source", "classes", "samples",
    "unreadable": [{"image", "error"}], "models": [{"model", "name", "precision", "providers",
    "samples", "top1", "top5", "top1_agreement" (with the first model; None for it),
    "per_class": [{"class", "samples", "top1"}], "confusion": [[true x predicted]],
    "confusion_cells": None}]}; past DENSE_CONFUSION_CLASSES classes "confusion" is None and
    "confusion_cells" lists the non-zero cells as [true, predicted, count].
    ``ray``: score an image folder on Ray Data (an address, or ``"local"``; runtime/ray.py).
    ``preprocessing``: the settings of ``Engine(preprocessing=...)``, for every model."""
    if not models:
        raise BadInput("models needs at least one .onnx file")
    check_stream_options(batch, workers, max_pixels)
    path = existing_source(data, "data")
    if ray is not None:
        from edgecnn.runtime.ray import connected, import_ray

        import_ray()
        if not path.is_dir():
            raise BadInput(f"ray scores image folders; {path} is an array, which runs here")
    engine_options = {"provider": provider, "threads": threads, "fallback": fallback,
                      "preprocessing": preprocessing}
    engines = [Engine(model, **engine_options, session_options=streaming_session_options())
               for model in models]
    classes = _classes(engines[0])
    for engine in engines[1:]:
        if _classes(engine) != classes:
            raise BadInput(f"{engine.path} has {_classes(engine)} classes and {engines[0].path} "
                           f"{classes}: compare models of one network")
    names = usable_labels(engines[0].metadata.labels, classes)
    class_names = list(names) if names else [str(index) for index in range(classes)]
    report = {"data": str(path), "source": "images" if path.is_dir() else "array",
              "classes": class_names, "samples": 0, "unreadable": [], "models": []}
    if path.is_dir():
        files, labels = labelled_files(path, names, classes)
        labels = np.asarray(labels, np.int64)
        options = {"batch": batch, "workers": workers, "max_pixels": max_pixels}
        session = connected(ray) if ray is not None else contextlib.nullcontext()
        with session:
            tallies = [_tally(engine, number, files, labels, report, options, ray,
                              engine_options, on_progress)
                       for number, engine in enumerate(engines)]
        report["samples"] = len(files)
    else:
        tallies = []
        for engine in engines:
            inputs, labels = load_arrays(path, engine.require_metadata().input, with_labels=True)
            if labels.min() < 0 or labels.max() >= classes:
                raise BadInput(f"{path}: labels must be class indices 0..{classes - 1}, got "
                               f"{labels.min()}..{labels.max()}")
            tally, size = Tally(classes), engine.fixed_batch or batch or DEFAULT_BATCH
            for start in range(0, len(inputs), size):
                scores = engine.scores(inputs[start:start + size])
                finite = np.isfinite(scores).all(axis=1)
                if not finite.all():  # argmax would take NaN for the top score
                    bad = start + int(np.flatnonzero(~finite)[0])
                    raise BadInput(f"{engine.path}: its scores for sample {bad} of {path} hold "
                                   "NaN or Inf; the figures would be wrong")
                tally.add(scores, labels[start:start + size])
            tallies.append(tally)
        report["samples"] = len(labels)
    if not any(tally.cells for tally in tallies):
        first = report["unreadable"][0]["error"] if report["unreadable"] else "no samples"
        raise BadInput(f"none of the {report['samples']} images of {path} could be read "
                       f"(the first: {first})")
    for engine, tally in zip(engines, tallies):
        metadata = engine.require_metadata()
        report["models"].append({"model": str(engine.path), "name": metadata.model,
                                 "precision": metadata.precision, "providers": engine.providers,
                                 **tally.report(tallies[0] if tally is not tallies[0] else None,
                                                class_names)})
    return report


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                   title: str) -> None:
    """The confusion matrix as an image (needs matplotlib; BadInput without it)."""
    from edgecnn.runtime.files import atomic_output

    pyplot = require_pyplot()
    if confusion is None:
        raise BadInput(f"plot draws the confusion matrix of at most {DENSE_CONFUSION_CLASSES:,} "
                       f"classes; this set has {len(class_names):,}")

    size = min(4 + 0.3 * len(class_names), 30)
    figure, axes = pyplot.subplots(figsize=(size, size))
    axes.imshow(confusion, cmap="Blues")
    if len(class_names) <= 40:
        ticks = range(len(class_names))
        axes.set_xticks(ticks, class_names, rotation=90)
        axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".") or "png")
    pyplot.close(figure)


def require_pyplot():
    """matplotlib's pyplot, drawing off screen; BadInput naming ``plot`` when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise BadInput("plot needs matplotlib, which this install does not have "
                       "(pip install matplotlib)") from None
    return pyplot
