"""``bench_matrix(paths)``: every provider that runs here x the given files in one table.
Torch-free.

What ``edgecnn bench FILE... --matrix`` prints: for an fp32 file and its int8/fp16 files, each
on every installed provider (an fp32 file also in bf16 on OpenVINO), the p50/p90 latency,
throughput, peak RSS, start-up time and the output's rel_l2 against the CPU provider's fp32
output on the same input, with the row "auto" would pick and the fastest row of each file.

Every cell runs in a process of its own: the thread pools of onnxruntime and OpenVINO spin
after each call and would take the cores from a session timed next to them in one process, and
a process's peak RSS is then that cell's. The cells run one after another.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecnn.errors import BadInput, first_line
from edgecnn.runtime import providers as provider_lib
from edgecnn.runtime.model_file import check_model_file

# Providers a matrix tries, by short name, when installed.
MATRIX_PROVIDERS = ("cpu", "openvino", "cuda", "tensorrt")


@dataclass
class MatrixRow:
    file: str
    precision: str  # the file's, or "bf16" for an fp32 file on OpenVINO's bf16 hint
    provider: str  # what was asked for: "cpu", "openvino", "openvino:bf16", ...
    providers: list[str]  # what the session ran on
    latency_ms: dict  # p50, p90
    throughput: float
    peak_rss_mb: float | None
    startup_s: float
    rel_l2: float | None  # against the CPU provider's fp32 output (None: no fp32 file given)
    auto: bool  # the provider "auto" picks for this file
    fastest: bool = False  # the lowest p50 among this file's rows

    def as_dict(self) -> dict:
        return asdict(self)


def matrix_providers() -> list[str]:
    """The MATRIX_PROVIDERS installed here, by short name; OpenVINO only where its plugin
    offers a device (a cell would fall back to the CPU provider and time it twice)."""
    installed = provider_lib.installed_providers()
    provider_lib.drop_openvino_without_device(installed)
    return [name for name in MATRIX_PROVIDERS
            if provider_lib.SHORT_NAMES[name] in installed]


def matrix_cells(traits: dict[Path, dict], installed: list[str]) -> list[tuple[Path, str, str]]:
    """(file, provider, precision) of every cell, in the order they run; ``traits``: each
    file's session.model_traits."""
    cells = []
    for path, traits_of_file in traits.items():
        precision = traits_of_file["precision"] or "fp32"
        cells += [(path, provider, precision) for provider in installed]
        if "openvino" in installed and precision == "fp32":
            cells.append((path, "openvino:bf16", "bf16"))
    return cells


def run_cell(path: Path, provider: str, batch: int | None, threads: int | None, warmup: int,
             runs: int, output: Path) -> dict:
    """One cell in a fresh process: its BenchResult as a dict; the first output goes to
    ``output`` (.npy) for the parity column."""
    command = [sys.executable, "-m", "edgecnn.runtime.bench_matrix", str(path), provider,
               json.dumps({"batch": batch, "threads": threads, "warmup": warmup, "runs": runs}),
               str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit {done.returncode}"
        raise BadInput(f"bench of {path} on {provider} failed: {reason[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    if reference.shape != candidate.shape:
        return math.inf
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(candidate - reference) / norm) if norm else math.inf


def bench_matrix(paths, *, batch: int | None = None, threads: int | None = None,
                 warmup: int = 10, runs: int = 100, on_cell=None) -> list[MatrixRow]:
    """The rows of the matrix for ``paths`` (an fp32 file and its quantized files, or any
    files: parity needs an fp32 one); ``on_cell(index, total, description)`` reports progress."""
    from edgecnn.runtime.session import model_traits

    paths = [check_model_file(path) for path in paths]
    if not paths:
        raise BadInput("bench --matrix needs at least one .onnx file")
    installed = matrix_providers()
    traits = {path: model_traits(path) for path in paths}
    cells = matrix_cells(traits, installed)
    results, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="edgecnn-matrix-") as work:
        for index, (path, provider, precision) in enumerate(cells):
            if on_cell:
                on_cell(index, len(cells), f"{path.name} {precision} on {provider}")
            output = Path(work) / f"{index}.npy"
            results.append(run_cell(path, provider, batch, threads, warmup, runs, output))
            outputs[index] = np.load(output)
    reference = next((outputs[i] for i, (_, provider, precision) in enumerate(cells)
                      if provider == "cpu" and precision == "fp32"), None)
    full_names = [provider_lib.SHORT_NAMES[name] for name in installed]
    rows = []
    for index, ((path, provider, precision), result) in enumerate(zip(cells, results)):
        auto = provider_lib.auto_order(full_names, **traits[path])[0]
        rows.append(MatrixRow(
            file=str(path), precision=precision, provider=provider,
            providers=result["providers"],
            latency_ms={key: result["latency_ms"][key] for key in ("p50", "p90")},
            throughput=result["throughput"], peak_rss_mb=result["peak_rss_mb"],
            startup_s=result["load_seconds"],
            rel_l2=None if reference is None else _rel_l2(reference, outputs[index]),
            auto=provider == provider_lib.short_name(auto)))
    for path in paths:
        own = [row for row in rows if row.file == str(path)]
        min(own, key=lambda row: row.latency_ms["p50"]).fastest = True
    return rows


def _cell_main(argv: list[str]) -> None:
    """``python -m edgecnn.runtime.bench_matrix FILE PROVIDER OPTIONS_JSON OUTPUT.npy``."""
    from edgecnn.runtime.bench import benchmark

    path, provider, options, output = argv
    try:
        result = benchmark(path, provider, fallback=False, **json.loads(options),
                           on_first_output=lambda outputs: np.save(output, next(iter(outputs.values()))))
    except BadInput as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    _cell_main(sys.argv[1:])
