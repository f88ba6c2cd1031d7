"""The CPU provider against OpenVINO: fp32, int8 and bf16 latency of resnet18 and resnet18_dcn.

    .venv/bin/python benchmarks/providers.py [--rounds 3] [--calls 50] [--threads 2] [--size 224]

Every configuration (model x provider x precision x batch 1 and 8) runs in its own process (a
cell of ``edgecnn bench --matrix``: runtime/bench_matrix.run_cell): the
thread pools of onnxruntime and OpenVINO spin after each call and would take the cores from a
session timed next to them in one process (interleaving call by call that way gave 0.46-0.62
for the int8 ratio on the same files). Each process opens the session, warms up, times one
block of --calls calls and reports their median (p50); the configurations run in a rotating order in
each of --rounds rounds, and a figure is the median over the rounds. Goals, on a CPU with AMX:
OpenVINO int8 <= 0.5x the CPU provider's int8, OpenVINO bf16 <= 0.2x the CPU provider's fp32.

The files: a fresh export (random weights; latency does not depend on them) and its int8 models
from edgecnn's recipe (``quantize_model(mode="int8", target=...)`` on random calibration
inputs): tuned for the CPU provider (the RGB stem rewritten for its int8 kernel) and for OpenVINO
(``--target openvino``: the plain stem); bf16 is OpenVINO's precision hint on the fp32 file
(``--provider openvino:bf16``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path


MODELS = ("resnet18", "resnet18_dcn")
# (label, provider, file): the fp32 export, or its int8 model tuned for one provider.
CONFIGURATIONS = [("cpu fp32", "cpu", "fp32"), ("cpu int8", "cpu", "int8-cpu"),
                  ("openvino f32", "openvino", "fp32"),
                  ("openvino int8", "openvino", "int8-openvino"),
                  ("openvino int8 (cpu file)", "openvino", "int8-cpu"),
                  ("openvino bf16", "openvino:bf16", "fp32")]
GOALS = {"openvino int8 / cpu int8": 0.5, "openvino bf16 / cpu fp32": 0.2}


def cpu_name() -> str:
    """The CPU's model name, whether it has AVX-512 VNNI (int8 dot products) and AMX (bf16 and
    int8 tiles), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.machine())
    flags = set(text.split())
    return (f"{name} ({'AVX-512 VNNI' if 'avx512_vnni' in flags else 'no AVX-512 VNNI'}, "
            f"{'AMX' if 'amx_tile' in flags else 'no AMX'})")


def make_files(folder: Path, size: int) -> dict[tuple[str, str], Path]:
    from edgecnn.export import export_model
    from edgecnn.export.quantize import quantize_model

    files = {}
    for model in MODELS:
        fp32 = folder / f"{model}.onnx"
        export_model(model, fp32, input_size=size, check=False)
        files[model, "fp32"] = fp32
        for target in ("cpu", "openvino"):
            files[model, f"int8-{target}"] = folder / f"{model}.int8-{target}.onnx"
            quantize_model(fp32, files[model, f"int8-{target}"], mode="int8", target=target,
                           calibration="random", calibration_size=16, check=False)
    return files


def run_worker(path: Path, provider: str, batch: int, threads: int, calls: int,
               work: Path) -> dict:
    """One configuration in a fresh process: edgecnn bench --matrix's cell (a block of
    ``calls`` timed calls after 10 untimed ones); its figures as BenchResult's dict."""
    from edgecnn.runtime.bench_matrix import run_cell

    return run_cell(path, provider, batch, threads, 10, calls, work / "output.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print("exporting and quantizing ...", file=sys.stderr)
        files = make_files(Path(folder), args.size)
        cases = [(model, batch, configuration) for model in MODELS for batch in args.batches
                 for configuration in CONFIGURATIONS]
        figures: dict[tuple, list[dict]] = {}
        for round_index in range(args.rounds):
            shift = round_index % len(cases)
            for model, batch, (label, provider, kind) in cases[shift:] + cases[:shift]:
                result = run_worker(files[model, kind], provider, batch, args.threads, args.calls,
                                    Path(folder))
                figures.setdefault((model, batch, label), []).append(result)
                print(f"round {round_index + 1}: {model} batch {batch} {label}: "
                      f"{result['latency_ms']['p50']:.2f} ms", file=sys.stderr)

    median = {key: statistics.median(r["latency_ms"]["p50"] for r in results)
              for key, results in figures.items()}
    print(f"CPU: {cpu_name()}, {args.threads} threads, "
          f"{args.size}x{args.size}, median of {args.rounds} rounds of {args.calls} calls, "
          "each configuration in its own process")
    print("| model | batch | configuration | latency ms | p90 ms | start-up s |")
    print("|---|---|---|---|---|---|")
    for (model, batch, label), results in figures.items():
        print(f"| {model} | {batch} | {label} | {median[model, batch, label]:.2f} "
              f"| {statistics.median(r['latency_ms']['p90'] for r in results):.2f} "
              f"| {statistics.median(r['load_seconds'] for r in results):.2f} |")
    print("\n| model | batch | ratio | measured | goal |")
    print("|---|---|---|---|---|")
    for model in MODELS:
        for batch in args.batches:
            ratios = {"openvino f32 / cpu fp32": ("openvino f32", "cpu fp32"),
                      "openvino int8 / cpu int8": ("openvino int8", "cpu int8"),
                      "openvino int8 (cpu file) / cpu int8": ("openvino int8 (cpu file)",
                                                              "cpu int8"),
                      "openvino bf16 / cpu fp32": ("openvino bf16", "cpu fp32"),
                      "cpu int8 / cpu fp32": ("cpu int8", "cpu fp32")}
            for name, (top, bottom) in ratios.items():
                value = median[model, batch, top] / median[model, batch, bottom]
                goal = f"<= {GOALS[name]}" if name in GOALS else ""
                print(f"| {model} | {batch} | {name} | {value:.2f} | {goal} |")


if __name__ == "__main__":
    main()
