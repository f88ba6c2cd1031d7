"""int8 and fp16 against fp32: latency, file size and peak memory of resnet18 on the CPU.

    .venv/bin/python benchmarks/quantize.py [--rounds 15] [--calls 5] [--threads 2] [--size 224]

resnet18 at 224x224, batch 1 (exported with --batch 1), onnxruntime's CPU provider, 2 intra-op
threads. The models:

- fp32: ``export_model("resnet18", batch=1)``
- int8: ``quantize_model(..., mode="int8")``, edgecnn's recipe (docs/quantization.md)
- int8 (onnxruntime defaults): ``quantize_static`` with nothing but the calibration reader,
  the "bare" recipe edgecnn's has to beat
- fp16: ``quantize_model(..., mode="fp16")``, for the record (CPUs have few fp16 kernels)

All int8 models calibrate on the same 16 random-pixel images: the scales' values do not change
which kernels run, so they do not change the speed.

1. Latency: the sessions take turns in this process, --calls timed calls each per round, the
   order rotating every round (see ``latencies``); per model the median over the rounds, and
   per pair the median of the per-round ratios. Goal int8/fp32 <= 0.53.
2. File size ratio. Goal int8/fp32 <= 0.26.
3. Peak RSS: each model in its own fresh process (python + onnxruntime + session + 3 runs),
   --rss-runs times, median. Goal int8/fp32 <= 0.5.
4. Cross-check of 1. that other jobs cannot skew: fp32 and int8 on one thread, timed with the
   thread's CPU clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecnn.export import export_model
from edgecnn.export.calibration import random_inputs
from edgecnn.export.quantize import quantize_model
from edgecnn.export.quantize_input import load_float_model, resolve_metadata
from edgecnn.export.quiet import silenced
from edgecnn.runtime import load_session

GOALS = {"latency": 0.53, "size": 0.26, "rss": 0.5}
CALIBRATION_SAMPLES = 16
PAUSE_S = 0.1  # lets the previous session's worker threads stop spinning (see latencies)

RSS_PROBE = """
import json, sys
import numpy as np, onnxruntime as ort
ort.set_default_logger_severity(3)
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: np.zeros((1, 3, int(sys.argv[3]), int(sys.argv[3])), np.float32)}
for _ in range(3):
    session.run(None, feed)
# Read last, so its imports (edgecnn.runtime's own modules; numpy and onnxruntime are loaded)
# come after the peak. VmHWM, not ru_maxrss, which Linux carries across fork+exec from the
# (large) parent.
from edgecnn.runtime.bench import peak_rss_mb
print(json.dumps(peak_rss_mb()))
"""


def onnxruntime_default_int8(source: Path, output: Path, calibration: np.ndarray) -> None:
    """The bare recipe: quantize_static with its defaults (QDQ, int8/int8, per-tensor)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {"input": sample}

    with silenced(""):  # its advice to run quant_pre_process (see docs/quantization.md)
        quantize_static(str(source), str(output), Reader())


def build_models(work: Path, size: int) -> dict[str, Path]:
    fp32 = work / "resnet18.onnx"
    export_model("resnet18", fp32, input_size=size, batch=1)
    info = resolve_metadata(load_float_model(fp32), fp32).input
    calibration = random_inputs(info, CALIBRATION_SAMPLES, seed=0)
    np.save(work / "calibration.npy", calibration)
    models = {"fp32": fp32, "int8": work / "resnet18_int8.onnx",
              "int8 (onnxruntime defaults)": work / "resnet18_ort_default.onnx",
              "fp16": work / "resnet18_fp16.onnx"}
    quantize_model(fp32, models["int8"], mode="int8", calibration=work / "calibration.npy",
                   calibration_size=CALIBRATION_SAMPLES)
    onnxruntime_default_int8(fp32, models["int8 (onnxruntime defaults)"], calibration)
    quantize_model(fp32, models["fp16"], mode="fp16")
    return models


def latencies(models: dict[str, Path], rounds: int, calls: int, threads: int, size: int,
              clock=time.perf_counter) -> dict[str, list[float]]:
    """Per model and round, the median seconds of ``calls`` consecutive calls; the models take
    turns, the order rotating every round.

    Before each model's turn: a pause and one untimed call. An onnxruntime session's worker
    threads keep spinning for a while after a call; interleaving sessions call by call would
    let the idle session's spinning threads steal the cores from the one being timed (on this
    2-core machine that doubled fp32's time and swung the ratio by 10%).
    With one thread onnxruntime computes in the calling thread, so ``clock=time.thread_time``
    measures the CPU time of the inference itself, which other jobs on the machine barely move.
    """
    sessions = {name: load_session(path, threads=threads) for name, path in models.items()}
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    for session in sessions.values():  # warm-up: first calls allocate and pre-pack
        for _ in range(3):
            session.run(None, feed)
    times = {name: [] for name in sessions}
    names = list(sessions)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(PAUSE_S)
            sessions[name].run(None, feed)
            block = []
            for _ in range(calls):
                started = clock()
                sessions[name].run(None, feed)
                block.append(clock() - started)
            times[name].append(statistics.median(block))
    return times


def peak_rss_mb(path: Path, threads: int, size: int) -> float:
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path), str(threads), str(size)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def paired_ratio(times: dict[str, list[float]], name: str, reference: str = "fp32") -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="Timed calls per model and round.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rss-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecnn-bench-") as work:
        models = build_models(Path(work), args.size)
        times = latencies(models, args.rounds, args.calls, args.threads, args.size)
        int8_pair = {name: models[name] for name in ("fp32", "int8")}
        cpu_times = latencies(int8_pair, args.rounds, args.calls, 1, args.size,
                              clock=time.thread_time)
        rss = {name: statistics.median(peak_rss_mb(path, args.threads, args.size)
                                       for _ in range(args.rss_runs))
               for name, path in models.items()}
        sizes = {name: path.stat().st_size for name, path in models.items()}
    print(f"resnet18 {args.size}x{args.size}, batch 1, CPUExecutionProvider, {args.threads} threads, "
          f"{args.rounds} interleaved rounds of {args.calls} calls")
    print(f"{'model':30s} {'median ms':>10s} {'ratio':>7s} {'size MB':>8s} {'ratio':>6s} "
          f"{'peak RSS MB':>12s} {'ratio':>6s}")
    report = {}
    for name in models:
        row = {"median_ms": 1e3 * statistics.median(times[name]),
               "latency_ratio": paired_ratio(times, name),
               "size_mb": sizes[name] / 2**20, "size_ratio": sizes[name] / sizes["fp32"],
               "peak_rss_mb": rss[name], "rss_ratio": rss[name] / rss["fp32"]}
        report[name] = row
        print(f"{name:30s} {row['median_ms']:10.1f} {row['latency_ratio']:7.3f} "
              f"{row['size_mb']:8.1f} {row['size_ratio']:6.3f} {row['peak_rss_mb']:12.1f} "
              f"{row['rss_ratio']:6.3f}")
    int8 = report["int8"]
    print(f"int8/fp32: latency {int8['latency_ratio']:.3f} (goal <= {GOALS['latency']}, "
          f"{1 / int8['latency_ratio']:.2f}x faster), size {int8['size_ratio']:.3f} "
          f"(goal <= {GOALS['size']}), peak RSS {int8['rss_ratio']:.3f} (goal <= {GOALS['rss']})")
    cpu_ratio = statistics.median(cpu_times["int8"]) / statistics.median(cpu_times["fp32"])
    print(f"cross-check, 1 thread, CPU time of the inference: fp32 "
          f"{1e3 * statistics.median(cpu_times['fp32']):.1f} ms, int8 "
          f"{1e3 * statistics.median(cpu_times['int8']):.1f} ms, ratio {cpu_ratio:.3f}")
    print(json.dumps({name: {key: round(value, 4) for key, value in row.items()}
                      for name, row in report.items()}))


if __name__ == "__main__":
    main()
