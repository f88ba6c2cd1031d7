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
5. The floor under 1.: a model of one 3x3 convolution + Relu (the shapes of resnet18's layer1
   and layer4 convolutions), fp32 against int8 from the same recipe, the sessions taking turns
   as in 1.; the ratio of the convolution kernels' own times (onnxruntime's profiler, median
   over the calls). resnet18 is almost all such convolutions, so its int8/fp32 cannot go much
   below this; it sits above it by what the int8 graph's other nodes cost (on an AVX2 CPU
   without VNNI the kernels' ratio is about 0.52: docs/quantization.md, "Where the time goes").
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
import onnxruntime as ort

from edgecnn.export import export_model
from edgecnn.export.calibration import random_inputs
from edgecnn.export.quantize import quantize_model
from edgecnn.export.quantize_input import load_float_model, resolve_metadata
from edgecnn.export.quiet import silenced
from edgecnn.runtime import load_session

GOALS = {"latency": 0.53, "size": 0.26, "rss": 0.5}
CONV_SHAPES = {"layer1": (64, 56), "layer4": (512, 7)}  # (channels, height = width)
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


def one_conv(path: Path, channels: int, size: int) -> None:
    """An fp32 model of one 3x3 convolution (padding 1) + Relu on a (1, channels, size, size)
    input, with random weights."""
    from onnx import helper, numpy_helper, save

    weights = np.random.default_rng(0).standard_normal((channels, channels, 3, 3)).astype(np.float32)
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "weight", "bias"], ["conv"], name="conv",
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["output"], name="relu")],
        f"conv{channels}", [tensor("input", 1, [1, channels, size, size])],
        [tensor("output", 1, [1, channels, size, size])],
        [numpy_helper.from_array(weights / np.float32(np.sqrt(9 * channels)), "weight"),
         numpy_helper.from_array(np.zeros(channels, np.float32), "bias")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_conv_models(work: Path) -> dict[str, dict[str, Path]]:
    """Per CONV_SHAPES entry, the one-conv model in fp32 and int8 (edgecnn's recipe)."""
    pairs = {}
    for layer, (channels, size) in CONV_SHAPES.items():
        fp32, int8 = work / f"{layer}.onnx", work / f"{layer}_int8.onnx"
        one_conv(fp32, channels, size)
        calibration = work / f"{layer}_calibration.npy"
        np.save(calibration, np.random.default_rng(1).standard_normal(
            (CALIBRATION_SAMPLES, channels, size, size)).astype(np.float32))
        quantize_model(fp32, int8, mode="int8", calibration=calibration,
                       calibration_size=CALIBRATION_SAMPLES, mean=[0.0], std=[1.0])
        pairs[layer] = {"fp32": fp32, "int8": int8}
    return pairs


def latencies(models: dict[str, Path], rounds: int, calls: int, threads: int,
              clock=time.perf_counter) -> dict[str, list[float]]:
    """Per model and round, the median seconds of ``calls`` consecutive calls (``take_turns``)."""
    return take_turns(open_sessions(models, threads), rounds, calls, clock)


def open_sessions(models: dict[str, Path], threads: int,
                  profile_dir: Path | None = None) -> dict[str, ort.InferenceSession]:
    """A CPU session per model; with ``profile_dir``, each profiles its nodes (onnxruntime's
    profiler, written there when the session's ``end_profiling`` is called)."""
    sessions = {}
    for name, path in models.items():
        options = ort.SessionOptions()
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_dir / path.stem)
        sessions[name] = load_session(path, threads=threads, options=options)
    return sessions


def take_turns(sessions: dict[str, ort.InferenceSession], rounds: int, calls: int,
               clock=time.perf_counter) -> dict[str, list[float]]:
    """Per session and round, the median seconds of ``calls`` consecutive calls; the sessions
    take turns, the order rotating every round.

    Before each session's turn: a pause and one untimed call. An onnxruntime session's worker
    threads keep spinning for a while after a call; interleaving sessions call by call would
    let the idle session's spinning threads steal the cores from the one being timed (on this
    2-core machine that doubled fp32's time and swung the ratio by 10%).
    With one thread onnxruntime computes in the calling thread, so ``clock=time.thread_time``
    measures the CPU time of the inference itself, which other jobs on the machine barely move.
    """
    feeds = {name: {value.name: np.random.default_rng(0).standard_normal(value.shape).astype(np.float32)}
             for name, session in sessions.items() for value in session.get_inputs()[:1]}
    for name, session in sessions.items():  # warm-up: first calls allocate and pre-pack
        for _ in range(3):
            session.run(None, feeds[name])
    times = {name: [] for name in sessions}
    names = list(sessions)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(PAUSE_S)
            sessions[name].run(None, feeds[name])
            block = []
            for _ in range(calls):
                started = clock()
                sessions[name].run(None, feeds[name])
                block.append(clock() - started)
            times[name].append(statistics.median(block))
    return times


def conv_kernel_ratio(pair: dict[str, Path], rounds: int, calls: int, threads: int,
                      profile_dir: Path) -> float:
    """int8/fp32 of the median time of the convolution kernels alone, the two sessions taking
    turns as in ``latencies``."""
    sessions = open_sessions(pair, threads, profile_dir)
    take_turns(sessions, rounds, calls)
    kernels = {name: statistics.median(conv_kernel_times(Path(session.end_profiling())))
               for name, session in sessions.items()}
    return kernels["int8"] / kernels["fp32"]


def conv_kernel_times(profile: Path) -> list[float]:
    """The seconds each convolution kernel (``Conv``: fp32, ``QLinearConv``: int8) took in an
    onnxruntime profile: the kernels alone, without the model's layout and type conversions."""
    events = json.loads(profile.read_text())
    return [event["dur"] / 1e6 for event in events
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
            and event["args"].get("op_name") in ("Conv", "QLinearConv")]


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
        times = latencies(models, args.rounds, args.calls, args.threads)
        int8_pair = {name: models[name] for name in ("fp32", "int8")}
        cpu_times = latencies(int8_pair, args.rounds, args.calls, 1, clock=time.thread_time)
        floors = {layer: conv_kernel_ratio(pair, args.rounds, args.calls, args.threads, Path(work))
                  for layer, pair in build_conv_models(Path(work)).items()}
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
    print("floor: one 3x3 conv + Relu, int8/fp32 of the conv kernel alone, " + ", ".join(
        f"{layer} shape ({CONV_SHAPES[layer][0]} ch, {CONV_SHAPES[layer][1]}x{CONV_SHAPES[layer][1]}) "
        f"{ratio:.3f}" for layer, ratio in floors.items()))
    report["floor"] = {f"{layer}_kernel_ratio": ratio for layer, ratio in floors.items()}
    print(json.dumps({name: {key: round(value, 4) for key, value in row.items()}
                      for name, row in report.items()}))


if __name__ == "__main__":
    main()
