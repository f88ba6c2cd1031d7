"""What bias correction costs: static int8 quantization with and without it.

    .venv/bin/python benchmarks/bias_correction.py [--models resnet18,mobilenet_v2,vgg11_bn]
        [--size 224] [--rows 64] [--rounds 2] [--json]

Each model is exported once (fp32, random weights, --size x --size) and quantized with
``quantize_model(..., calibration=ARRAY, check=False, bias_correction=False|True)`` on the same
--rows random-normal calibration rows (the correction uses up to 64 of them). Every
quantization runs in a fresh process of its own, so no thread pool or cache of one carries
over to the next; the seconds are those of ``quantize_model`` alone (imports excluded), the
peak RSS the whole process's. The two settings alternate within each model, the order
flipping every round (off, on, on, off, ...); per setting the median over --rounds, and the
ratio with / without from this one run (docs/quantization.md, "Bias correction").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from providers import cpu_name  # noqa: E402

# One quantization, in the process this is run in: prints {"seconds", "peak_rss_mb"}.
_CELL = """
import json, sys, time
import numpy as np
from edgecnn.export.quantize import quantize_model
from edgecnn.runtime.bench import peak_rss_mb
source, calibration, output, correct = sys.argv[1:5]
inputs = np.load(calibration)
started = time.perf_counter()
quantize_model(source, output, calibration=inputs, check=False, bias_correction=correct == "1")
print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))
"""


def quantize_in_a_process(source: Path, calibration: Path, output: Path, correct: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", _CELL, str(source), str(calibration),
                           str(output), "1" if correct else "0"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"quantizing {source.name} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(name: str, workdir: Path, size: int, rows: int, rounds: int) -> dict:
    from edgecnn import models
    from edgecnn.export import export_model

    source = export_model(name, workdir / f"{name}.onnx", input_size=size, check=False).path
    calibration = workdir / f"{name}-calibration.npy"
    channels = models.get_spec(name).input_size[0]
    np.save(calibration, np.random.default_rng(0).standard_normal(
        (rows, channels, size, size)).astype(np.float32))
    cells: dict[bool, list[dict]] = {False: [], True: []}
    for round_ in range(rounds):
        for correct in ((False, True) if round_ % 2 == 0 else (True, False)):
            cells[correct].append(quantize_in_a_process(
                source, calibration, workdir / f"{name}-{int(correct)}.onnx", correct))
    median = {correct: {key: statistics.median(cell[key] for cell in runs)
                        for key in ("seconds", "peak_rss_mb")} for correct, runs in cells.items()}
    return {"model": name, "without": median[False], "with": median[True],
            "seconds_ratio": median[True]["seconds"] / median[False]["seconds"],
            "runs": {"without": cells[False], "with": cells[True]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,vgg11_bn")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--rows", type=int, default=64, help="calibration rows")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-bias-correction-") as workdir:
        for name in args.models.split(","):
            results.append(measure(name, Path(workdir), args.size, args.rows, args.rounds))
            print(f"{name}: done", file=sys.stderr)
    header = {"cpu": cpu_name(), "size": args.size, "rows": args.rows, "rounds": args.rounds}
    if args.json:
        print(json.dumps({**header, "results": results}, indent=2))
        return 0
    print(f"CPU {header['cpu']}; {args.size}x{args.size}, {args.rows} calibration rows, "
          f"median of {args.rounds} rounds, each quantization in its own process")
    print("| model | without (s) | with (s) | with / without | peak RSS without / with (MB) |")
    print("|---|---|---|---|---|")
    for result in results:
        print(f"| {result['model']} | {result['without']['seconds']:.1f} | "
              f"{result['with']['seconds']:.1f} | {result['seconds_ratio']:.2f} | "
              f"{result['without']['peak_rss_mb']:.0f} / {result['with']['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
