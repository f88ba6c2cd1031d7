"""Seconds to export resnet18 at 224x224: edgecnn vs a bare torch.onnx.export, interleaved.

    python benchmarks/export_time.py [--runs 3]

Each run exports the same seeded model both ways in this process (torch already imported),
alternating which goes first, and the CLI once more as a user runs it (`edgecnn export
resnet18`, a fresh process: imports + export + checks + parity run). Prints medians and ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecnn.export import build_model, export_model
from edgecnn.export.exporter import EXPORTER_LOGGERS
from edgecnn.export.quiet import silenced


def bare_torch_onnx(path: Path) -> None:
    model = build_model("resnet18", seed=0)
    with silenced(*EXPORTER_LOGGERS):
        torch.onnx.export(model, (torch.randn(2, 3, 224, 224),), str(path), dynamo=True,
                          input_names=["input"], output_names=["logits"], opset_version=18,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))


def edgecnn_api(path: Path) -> None:
    export_model("resnet18", path)  # includes checker, shape inference and the parity run


def timed(function, path: Path) -> float:
    started = time.perf_counter()
    function(path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    edgecnn_api(work / "warmup.onnx")  # first export pays one-off tracing/compile warm-up
    times = {"torch.onnx.export": [], "edgecnn export_model()": [], "edgecnn CLI (new process)": []}
    for run in range(args.runs):
        order = [("torch.onnx.export", bare_torch_onnx), ("edgecnn export_model()", edgecnn_api)]
        for label, function in order if run % 2 == 0 else order[::-1]:
            times[label].append(timed(function, work / f"{run}.onnx"))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgecnn", "export", "resnet18", "-o",
                        str(work / "cli.onnx")], check=True, capture_output=True)
        times["edgecnn CLI (new process)"].append(time.perf_counter() - started)
    medians = {label: statistics.median(values) for label, values in times.items()}
    for label, median in medians.items():
        print(f"{label:28s} median {median:6.2f} s   runs {[round(v, 2) for v in times[label]]}")
    ratio = medians["edgecnn export_model()"] / medians["torch.onnx.export"]
    print(f"edgecnn API / bare torch.onnx: {ratio:.2f}x   "
          f"CLI wall (goal <= 10 s): {medians['edgecnn CLI (new process)']:.2f} s")


if __name__ == "__main__":
    main()
