"""A tiny, deterministic training loop for small classifiers on in-memory arrays.

    model = edgecnn.models.create("lenet")
    fit_classifier(model, digits.x_train, digits.y_train, epochs=15, seed=0)
    print(accuracy(predict(model, digits.x_test), digits.y_test))

Enough to give the examples and the quantization tests a really trained network (real data,
meaningful accuracy), not a general trainer: Adam, cross-entropy, a cosine learning-rate decay,
shuffled mini-batches from a seeded generator, CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.runtime.postprocess import top1_accuracy


def fit_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 15,
                   batch_size: int = 32, lr: float = 5e-3, weight_decay: float = 0.0,
                   seed: int = 0, threads: int | None = 1) -> list[float]:
    """Train ``model`` in place on float32 ``x`` (N, C, H, W) and int labels ``y``.

    Deterministic for a given seed (the weights' initial values are not drawn here: build the
    model seeded). ``threads`` (default 1) fixes torch's CPU threads while training: the
    result then does not depend on the machine's core count, and small models train faster
    than with threads competing on a busy machine; None keeps torch's setting. Leaves the
    model in eval mode and returns the mean loss of each epoch.
    """
    inputs, labels = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise ValueError(f"x and y must hold the same number (> 0) of samples: "
                         f"{len(inputs)} vs {len(labels)}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(inputs) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    losses: list[float] = []
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout masks
            model.train()
            for _ in range(epochs):
                losses.append(_train_epoch(model, optimizer, scheduler, inputs, labels,
                                           torch.randperm(len(inputs), generator=generator),
                                           batch_size))
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return losses


def _train_epoch(model, optimizer, scheduler, inputs, labels, order, batch_size) -> float:
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        batch = order[start:start + batch_size]
        loss = F.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(batch)
    return total / len(inputs)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits of ``model`` on float32 ``x``, as a numpy array."""
    model.eval()
    inputs = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
                     ).numpy()


accuracy = top1_accuracy  # fraction of rows whose argmax is the label
