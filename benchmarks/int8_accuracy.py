"""int8 top-1 on real data: mobilenet_v2 and resnet18 trained on scikit-learn's digits.

    .venv/bin/python benchmarks/int8_accuracy.py [--size 32] [--seed 0] [--threads 2]
        [--epochs mobilenet_v2=4] [--json]

Each model is built from edgecnn's registry (10 classes, one grey channel), trained with
edgecnn.training on the 75% training split of ``edgecnn.datasets.load_digits`` at --size x
--size (TRAINING; --epochs NAME=N changes one model's epochs), exported with
``export_model(..., weights=...)`` (parity-checked against eager) and quantized with
``quantize_model`` five ways (RECIPES), each calibrated on --calibration-size images drawn from
the training split. All six files run on onnxruntime's CPU provider over the held-out 25% (449
images); the table gives each one's top-1 and each int8's top-1 agreement with fp32
(docs/quantization.md, "Figures").

The goals of issue 27, reported, not tuned for: on mobilenet_v2, int8 per-tensor + equalize
within 1 point of fp32, and the default per-channel recipe at >= 99% agreement with fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecnn import models
from edgecnn.datasets import load_digits
from edgecnn.export import compare, export_model
from edgecnn.export.quantize import quantize_model
from edgecnn.runtime import Engine
from edgecnn.training import accuracy, fit_classifier

sys.path.insert(0, str(Path(__file__).parent))
from providers import cpu_name  # noqa: E402

# Adam with edgecnn.training's cosine decay. mobilenet_v2 gets 10 epochs: after 4 it is still
# far from converged (docs/quantization.md, "Figures", has both).
TRAINING = {
    "mobilenet_v2": dict(epochs=10, lr=3e-3, batch_size=32),
    "resnet18": dict(epochs=3, lr=1e-3, batch_size=32),
}
RECIPES = {
    "int8 per-channel (default)": dict(),
    "int8 per-channel, no bias correction": dict(bias_correction=False),
    "int8 per-tensor": dict(per_tensor=True),
    "int8 per-tensor + equalize": dict(per_tensor=True, equalize=True),
    "int8 per-channel + equalize": dict(equalize=True),
}


def train_and_export(name: str, workdir: Path, size: int, seed: int, threads: int):
    """The trained model's fp32 .onnx, the digits split, and the training figures."""
    digits = load_digits(image_size=size, seed=seed, model=name)
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = models.create(name, num_classes=10, in_channels=1)
    losses = fit_classifier(model, digits.x_train, digits.y_train, seed=seed, threads=threads,
                            **TRAINING[name])
    weights = workdir / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    exported = export_model(name, workdir / f"{name}.onnx", weights=weights, num_classes=10,
                            in_channels=1, input_size=size, seed=seed)
    return exported.path, digits, {"train_seconds": time.perf_counter() - started,
                                   "final_loss": losses[-1], "epochs": TRAINING[name]["epochs"]}


def measure(name: str, workdir: Path, size: int, seed: int, threads: int,
            calibration_size: int) -> dict:
    fp32_path, digits, training = train_and_export(name, workdir, size, seed, threads)

    def logits(path: Path):
        return Engine(path, threads=threads).run(digits.x_test)["logits"]

    reference = logits(fp32_path)
    rows = {"fp32": {"top1": accuracy(reference, digits.y_test)}}
    for recipe, options in RECIPES.items():
        output = workdir / f"{name}-{len(rows)}.onnx"
        started = time.perf_counter()
        quantize_model(fp32_path, output, calibration=digits.x_train,
                       calibration_size=calibration_size, seed=seed, check=False, **options)
        seconds = time.perf_counter() - started
        candidate = logits(output)
        rows[recipe] = {"top1": accuracy(candidate, digits.y_test),
                        "agreement": compare(reference, candidate).top1_agreement,
                        "quantize_seconds": seconds}
    return {"model": name, "test_images": len(digits.y_test), **training, "rows": rows}


def goals(results: dict) -> list[str]:
    """Issue 27's two goals on mobilenet_v2, met or not."""
    rows = results["mobilenet_v2"]["rows"]
    drop = rows["fp32"]["top1"] - rows["int8 per-tensor + equalize"]["top1"]
    agreement = rows["int8 per-channel (default)"]["agreement"]
    return [f"per-tensor + equalize within 1 point of fp32: {'met' if drop <= 0.01 else 'not met'}"
            f" ({drop * 100:+.2f} points lost)",
            f"per-channel agreement >= 99%: {'met' if agreement >= 0.99 else 'not met'} "
            f"({agreement:.2%})"]


def markdown(results: dict) -> str:
    lines = ["| model | " + " | ".join(["fp32", *RECIPES]) + " |",
             "|---" * (len(RECIPES) + 2) + "|"]
    for name, result in results.items():
        rows = result["rows"]
        cells = [f"{rows['fp32']['top1']:.2%}"] + [
            f"{rows[recipe]['top1']:.2%} ({rows[recipe]['agreement']:.2%})" for recipe in RECIPES]
        lines.append(f"| {name} ({result['epochs']} epochs) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-size", type=int, default=100)
    parser.add_argument("--epochs", action="append", default=[], metavar="NAME=N",
                        help="train NAME for N epochs instead of TRAINING's")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    for setting in args.epochs:
        name, _, epochs = setting.partition("=")
        if name not in TRAINING or not epochs.isdigit() or int(epochs) < 1:
            parser.error(f"--epochs takes NAME=N with NAME one of {', '.join(TRAINING)}")
        TRAINING[name] = {**TRAINING[name], "epochs": int(epochs)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgecnn-int8-accuracy-") as workdir:
        for name in TRAINING:
            results[name] = measure(name, Path(workdir), args.size, args.seed, args.threads,
                                    args.calibration_size)
            print(f"{name}: trained in {results[name]['train_seconds']:.0f} s "
                  f"(final loss {results[name]['final_loss']:.3f})", file=sys.stderr)
    if args.json:
        print(json.dumps({"cpu": cpu_name(), "results": results}, indent=2))
        return 0
    print(markdown(results))
    print(f"\ntop-1 on the held-out digits (top-1 agreement with fp32); CPU {cpu_name()}")
    print("\n".join(goals(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
