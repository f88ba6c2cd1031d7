"""Train LeNet on real handwritten digits, export it, and get the same accuracy from the .onnx.

    python examples/train_digits.py                 # -> lenet_digits.onnx
    python examples/train_digits.py -o /tmp/l.onnx --epochs 15 --seed 0

The data is scikit-learn's bundled "digits" (1,797 real 8x8 scans, no download), upsampled to
LeNet's 28x28 (``edgecnn.datasets.load_digits``); a seeded 75/25 split. LeNet trains for 15
epochs on the CPU (a few seconds), is saved as a state_dict and exported through the normal
path (``export_model(..., weights=...)``, exactly what ``edgecnn export lenet --weights`` does,
parity-checked). The .onnx is then run by the torch-free runtime on the raw 0-255 test images,
preprocessed from the file's own metadata, and must reach the same accuracy.

Needs scikit-learn (``pip install scikit-learn``, part of the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecnn import models
from edgecnn.datasets import load_digits
from edgecnn.export import export_model
from edgecnn.runtime import Engine
from edgecnn.runtime.preprocess import preprocess_images
from edgecnn.training import accuracy, fit_classifier, predict


def train_and_export(output: str | Path, epochs: int = 15, seed: int = 0) -> dict:
    """Train, export with the trained weights, and evaluate both; returns the figures."""
    started = time.perf_counter()
    digits = load_digits(image_size=28, test_fraction=0.25, seed=seed)
    torch.manual_seed(seed)
    model = models.create("lenet", num_classes=10)
    losses = fit_classifier(model, digits.x_train, digits.y_train, epochs=epochs, seed=seed)
    train_seconds = time.perf_counter() - started
    eager_accuracy = accuracy(predict(model, digits.x_test), digits.y_test)

    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "lenet_digits.pth"
        torch.save(model.state_dict(), weights)
        exported = export_model("lenet", output, weights=weights)

    # The device side: raw uint8 images in, preprocessing from the .onnx metadata, no torch.
    engine = Engine(exported.path, provider="cpu")
    batch = preprocess_images(list(digits.test_images), engine.metadata.input)
    onnx_logits = engine.run(batch)["logits"]
    return {"train_samples": len(digits.y_train), "test_samples": len(digits.y_test),
            "epochs": epochs, "final_loss": losses[-1], "train_seconds": train_seconds,
            "eager_accuracy": eager_accuracy, "onnx_accuracy": accuracy(onnx_logits, digits.y_test),
            "export_rel_l2": exported.parity.rel_l2, "onnx_path": str(exported.path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="lenet_digits.onnx")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train_and_export(args.output, epochs=args.epochs, seed=args.seed)
    print(f"trained lenet on {result['train_samples']} digits for {result['epochs']} epochs "
          f"in {result['train_seconds']:.1f} s (final loss {result['final_loss']:.3f})")
    print(f"held-out accuracy ({result['test_samples']} digits): "
          f"eager {result['eager_accuracy']:.2%}, onnx {result['onnx_accuracy']:.2%}")
    print(f"wrote {result['onnx_path']} (export parity rel_l2 {result['export_rel_l2']:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
