"""``predict_files(model, images)``: what ``edgecnn run`` prints, as a JSON-ready dict."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput
from edgecnn.runtime.engine import Engine
from edgecnn.runtime.postprocess import usable_labels
from edgecnn.runtime.providers import ProviderRequest


def _class_summary(class_map: np.ndarray, labels: Sequence[str] | None) -> list[dict]:
    """The classes present in a segmentation map, most pixels first (``labels``: one per class,
    or None for class indices)."""
    classes, counts = np.unique(class_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [{"index": int(classes[i]), **({"label": labels[int(classes[i])]} if labels else {}),
             "pixels": int(counts[i]), "fraction": round(float(counts[i]) / class_map.size, 6)}
            for i in order]


def predict_files(model: str | os.PathLike, images: Sequence[str | os.PathLike], *,
                  top_k: int = 5, provider: ProviderRequest = "auto", threads: int | None = None,
                  fallback: bool = True, cache_dir: str | os.PathLike | None = None,
                  preprocessing: Mapping | None = None) -> dict:
    """Run ``model`` on image files: per image the top-k classes, or the segmentation classes.
    ``preprocessing``: as Engine's (for a file without edgecnn metadata)."""
    if not images:
        raise BadInput("no images given")
    engine = Engine(model, provider, threads, fallback, cache_dir=cache_dir,
                    preprocessing=preprocessing)
    metadata = engine.require_metadata()
    results = engine.predict(list(images), top_k=top_k, labelled=False)
    report = {"model": str(model), "name": metadata.model, "task": metadata.task,
              "precision": metadata.precision, "weights": metadata.weights,
              "providers": engine.providers, "results": []}
    classes = engine.outputs[0].shape[1] if len(engine.outputs[0].shape) > 1 else None
    labels = usable_labels(metadata.labels, classes)
    for image, result in zip(images, results):
        if metadata.task == "classification":  # always the index; the label where there is one
            entry = {"top_k": [{"index": index, **({"label": labels[index]} if labels else {}),
                                "probability": round(probability, 6)}
                               for index, probability in result]}
        else:
            entry = {"shape": list(result.shape), "classes": _class_summary(result, labels)}
        report["results"].append({"image": str(image), **entry})
    return report
