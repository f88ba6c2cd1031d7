"""What the Engine costs over a bare onnxruntime session, and the memory of `edgecnn run`.

    .venv/bin/python benchmarks/runtime_overhead.py [--rounds 30] [--calls 20] [--threads 1]
    python benchmarks/runtime_overhead.py --provider cuda      # on a GPU (docs/gpu.md)

1. Engine.run vs a bare InferenceSession.run (its own session, same options) on resnet18 (fp32,
   batch 1, 224x224), interleaved: each round times a block of --calls calls of each, the order
   alternating; the figure is the median over --rounds of the per-round ratio. Goal: <= 1.03.
2. The same on the zoo's lenet (1x28x28): the median per-round difference per call in
   microseconds. Goal: <= 30 us.
3. Peak RSS of a fresh `edgecnn run` process on an int8 resnet18 (edgecnn's int8 recipe,
   ``quantize_model(..., mode="int8")``, calibrated on random-pixel images, which is fine for a
   memory figure), next to a bare int8 session and `import torch`; each a fresh process that
   reads its own peak with edgecnn.runtime.bench.peak_rss_mb at its end. Goal: <= 150 MB.

``--provider`` runs 1. and 2. on that provider (both sides with the same provider options; the
input is copied to the GPU in every call of either); 3. is on the CPU provider always.

Needs the dev install (exports with torch); the runtime itself never imports torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecnn.runtime import Engine
from edgecnn.runtime.providers import resolve_providers

OVERHEAD_RATIO_GOAL = 1.03
OVERHEAD_US_GOAL = 30.0
RSS_MB_GOAL = 150.0
CALIBRATION_SAMPLES = 8


def interleaved(calls_to_time, rounds: int, calls: int) -> list[np.ndarray]:
    """Seconds per call of each callable in each round: one block of ``calls`` calls each, the
    order rotating, so the figures of one round ran under the same machine load."""
    times = np.empty((rounds, len(calls_to_time)))
    for round_index in range(rounds):
        shift = round_index % len(calls_to_time)
        for column in [*range(shift, len(calls_to_time)), *range(shift)]:
            call = calls_to_time[column]
            started = time.perf_counter()
            for _ in range(calls):
                call()
            times[round_index, column] = (time.perf_counter() - started) / calls
    return list(times.T)


def compare_engine_to_bare(path: Path, shape: tuple, threads: int, rounds: int, calls: int,
                           provider: str = "cpu"):
    """Per-round seconds per call of Engine.run, of a separately created bare session and of
    the Engine's own session called directly (the same session object minus the wrapper)."""
    engine = Engine(path, provider, threads=threads, fallback=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    bare = ort.InferenceSession(str(path), options,
                                providers=resolve_providers(provider, fallback=False))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {bare.get_inputs()[0].name: x}
    for _ in range(5):  # warm both up
        engine.run(x), bare.run(None, feed)
    return interleaved([lambda: engine.run(x), lambda: bare.run(None, feed),
                        lambda: engine.session.run(None, feed)], rounds, calls)


def export_models(folder: Path) -> tuple[Path, Path]:
    from edgecnn.export import export_model

    resnet = folder / "resnet18.onnx"
    export_model("resnet18", resnet, input_size=224)
    lenet = folder / "lenet.onnx"
    export_model("lenet", lenet)
    return resnet, lenet


def quantize_int8(fp32: Path, int8: Path) -> None:
    """edgecnn's int8 recipe (``quantize_model(..., mode="int8")``, docs/quantization.md),
    calibrated on random-pixel images: the scales' values do not change the memory."""
    from edgecnn.export.quantize import quantize_model

    quantize_model(fp32, int8, mode="int8", calibration="random",
                   calibration_size=CALIBRATION_SAMPLES, on_warning=lambda _: None)


# Every figure is a fresh `python -c` process that does its work, then reads its own peak with
# edgecnn.runtime.bench.peak_rss_mb (VmHWM, the high-water mark of that process's own address
# space; ru_maxrss would not do: Linux carries it across fork+exec, so a child of this large,
# torch-loaded process would report this process's resident pages). The reader is imported
# last; it loads edgecnn.runtime (numpy, onnxruntime), which the first two commands have
# already loaded and which adds about 20 MB to `import torch` alone.
_READ_PEAK = "\nfrom edgecnn.runtime.bench import peak_rss_mb\nprint(peak_rss_mb())\n"
# What `python -m edgecnn` runs (edgecnn/__main__.py), minus the exit on success.
_EDGECNN_CLI = "import sys\nfrom edgecnn.cli import main\nif main(sys.argv[1:]):\n    sys.exit(1)"


def peak_rss_mb(code: str, *args: str) -> float:
    """Peak resident memory in MB of a fresh ``python -c code args`` process."""
    done = subprocess.run([sys.executable, "-c", code + _READ_PEAK, *args], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{code.splitlines()[-1]!r} failed:\n{done.stderr}")
    return float(done.stdout.split()[-1])


def memory_figures(int8: Path, image: Path, repeats: int = 3) -> dict[str, float]:
    bare = ("import numpy as np, onnxruntime as ort\n"
            f"s = ort.InferenceSession({str(int8)!r}, providers=['CPUExecutionProvider'])\n"
            "s.run(None, {'input': np.zeros((1, 3, 224, 224), np.float32)})")
    commands = {"edgecnn run (int8 resnet18)": (_EDGECNN_CLI, "run", str(int8), str(image),
                                                        "--provider", "cpu"),
                "bare int8 session": (bare,),
                "import torch (+ edgecnn.runtime, to read the peak)": ("import torch",)}
    return {name: statistics.median(peak_rss_mb(*command) for _ in range(repeats))
            for name, command in commands.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed block (resnet18)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print("exporting resnet18 (224) and lenet...", file=sys.stderr)
        resnet, lenet = export_models(folder)
        print("timing (interleaved)...", file=sys.stderr)
        engine_s, bare_s, own_s = compare_engine_to_bare(resnet, (1, 3, 224, 224), args.threads,
                                                         args.rounds, args.calls, args.provider)
        ratio = float(np.median(engine_s / bare_s))  # median of the paired ratios
        own_ratio = float(np.median(engine_s / own_s))
        lenet_engine, lenet_bare, _ = compare_engine_to_bare(lenet, (1, 1, 28, 28), args.threads,
                                                          args.rounds, args.calls * 50,
                                                          args.provider)
        overhead_us = float(np.median(lenet_engine - lenet_bare)) * 1e6
        print("quantizing resnet18 to int8 and measuring memory...", file=sys.stderr)
        int8 = folder / "resnet18_int8.onnx"
        quantize_int8(resnet, int8)
        image = folder / "photo.png"
        from PIL import Image

        Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), np.uint8)).save(image)
        memory = memory_figures(int8, image)

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(f"{args.provider} provider, threads {args.threads}, {args.rounds} rounds, "
          f"onnxruntime {ort.__version__}")
    print(f"resnet18 fp32 b1 224: Engine.run {np.median(engine_s) * 1e3:.3f} ms vs bare session "
          f"{np.median(bare_s) * 1e3:.3f} ms -> median paired ratio {ratio:.4f} (goal <= {OVERHEAD_RATIO_GOAL}) "
          f"{verdict(ratio <= OVERHEAD_RATIO_GOAL)}")
    print(f"  the same Engine's own session called directly: {np.median(own_s) * 1e3:.3f} ms -> "
          f"median paired ratio {own_ratio:.4f} (the wrapper alone)")
    print(f"lenet b1: Engine.run {np.median(lenet_engine) * 1e6:.1f} us vs bare session "
          f"{np.median(lenet_bare) * 1e6:.1f} us -> median paired overhead {overhead_us:.1f} us/call "
          f"(goal <= {OVERHEAD_US_GOAL:g} us) {verdict(overhead_us <= OVERHEAD_US_GOAL)}")
    for name, megabytes in memory.items():
        goal = (f" (goal <= {RSS_MB_GOAL:g} MB) {verdict(megabytes <= RSS_MB_GOAL)}"
                if name.startswith("edgecnn") else "")
        print(f"peak RSS {name}: {megabytes:.1f} MB{goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
