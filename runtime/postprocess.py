"""Model outputs -> answers: top-k (label, probability) lists and segmentation class maps."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from edgecnn.errors import BadInput, require_count

Prediction = list[tuple[Union[str, int], float]]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32 (float64 inputs stay float64)."""
    logits = logits.astype(np.promote_types(logits.dtype, np.float32), copy=False)
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float32 (float64 inputs stay float64), without overflow warnings."""
    logits = logits.astype(np.promote_types(logits.dtype, np.float32), copy=False)
    return np.exp(-np.logaddexp(0, -logits))


def is_class_vector(dims: Sequence) -> bool:
    """Whether an output of these dims (ints, or None/names for dynamic axes) holds one score per
    class: (N, classes), or (N, classes, 1, 1) as a model ending in global pooling or a 1x1
    convolution gives it (SqueezeNet's published files)."""
    return len(dims) == 2 or (len(dims) == 4 and dims[2] == 1 and dims[3] == 1)


def class_rows(scores: np.ndarray) -> np.ndarray:
    """(N, classes) scores from (N, classes) or (N, classes, 1, 1) ones."""
    if scores.ndim == 4 and is_class_vector(scores.shape):
        return scores.reshape(scores.shape[:2])
    return scores


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of (N, classes) ``logits`` whose argmax is the row's label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions for {labels.shape[0]} labels")
    return float(np.mean(logits.argmax(axis=1) == labels))


def usable_labels(labels: Sequence[str] | None, classes: int) -> Sequence[str] | None:
    """``labels`` when there is one per class, else None (outputs are then class indices)."""
    return labels if labels is not None and len(labels) == classes else None


def top_k(logits: np.ndarray, k: int = 5, labels: Sequence[str] | None = None, *,
          probabilities: bool = False) -> list[Prediction]:
    """For each row of (N, classes) logits: the k most likely (label or index, probability).

    ``k`` larger than the number of classes gives all classes. Labels replace indices when
    there are as many labels as classes. ``probabilities``: the rows are probabilities already,
    a Softmax's or a Sigmoid's (``Engine.scores_are_probabilities``), taken as they are. One
    logit per row is a binary classifier's: class 0 with the logit's sigmoid, the probability
    of the positive class (which may be under 0.5).
    """
    require_count("top_k", k, optional=False)
    if logits.ndim != 2:
        raise BadInput(f"expected classification logits of shape (N, classes), got {logits.shape}")
    if probabilities:
        shares = logits.astype(np.promote_types(logits.dtype, np.float32), copy=False)
    else:  # one logit is a binary classifier's: its sigmoid (a softmax of one class is 1)
        shares = sigmoid(logits) if logits.shape[1] == 1 else softmax(logits)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :k]
    labels = usable_labels(labels, logits.shape[1])
    return [[(labels[index] if labels else int(index), float(row[index])) for index in ranks]
            for row, ranks in zip(shares, order)]


def class_maps(masks: np.ndarray) -> list[np.ndarray]:
    """For (N, classes, H, W) segmentation scores: one (H, W) int64 map of argmax classes each."""
    if masks.ndim != 4:
        raise BadInput(f"expected segmentation scores of shape (N, classes, H, W), got {masks.shape}")
    return list(masks.argmax(axis=1))
