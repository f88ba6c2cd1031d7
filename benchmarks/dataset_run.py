"""`edgecnn run --output` over a folder of real-photo JPEGs: does the pipeline hide its slower
stage, and does memory stay flat in the number of images?

    .venv/bin/python benchmarks/dataset_run.py [--count 1000] [--big 10000] [--workers N]

1. Makes ``--count`` JPEGs of about 500x375 (quality 90) from the photos scikit-learn ships
   (``sklearn.datasets.load_sample_images``) and scikit-image's ``data`` photos when skimage is
   installed: seeded random crops (40-100% of each side), horizontal flips and a rescale to
   500x375 (a quarter portrait, 375x500).
2. Exports resnet18 at 224 (fp32) and quantizes it with edgecnn's int8 recipe, calibrated on
   100 of the photos.
3. For each precision, with the same ``--workers`` and ``--batch``:
   - the bare session on ready batches (preprocessed photos): images/s over one block of
     calls (10 s), nothing else running in this process meanwhile;
   - decode + preprocess alone on a pool of the same workers, after the session is freed
     (so its spinning thread pool takes no core from the decoders): images/s;
   - ``edgecnn run MODEL FOLDER --output preds.jsonl --json`` in a fresh process: images/s
     (its summary's, from the first image to the last record) and peak RSS.
   The stages run one after another, never interleaved call by call. The report names the
   CPU (``providers.cpu_name``, lscpu's model name).
   Goal: run >= 0.85 x min(bare, decode).
4. Peak RSS of the int8 run at ``--count`` and at ``--big`` images (hard links to the same
   files, so the paths differ): it must not grow with the count.

Needs the dev install (the export uses torch; scikit-learn gives the photos).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from edgecnn.runtime import Engine
from edgecnn.runtime.preprocess import preprocess_images
from edgecnn.runtime.stream import default_workers

sys.path.insert(0, str(Path(__file__).parent))
from providers import cpu_name  # noqa: E402
from runtime_overhead import _EDGECNN_CLI, _READ_PEAK  # noqa: E402

GOAL = 0.85
SIZE = (500, 375)  # width, height


def source_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"):
        if hasattr(data, name):
            photos.append(np.asarray(getattr(data, name)())[..., :3])
    return photos


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(photo) for photo in source_photos()]
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        crop_w, crop_h = (int(side * rng.uniform(0.4, 1.0)) for side in (width, height))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        picture = photo.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        size = SIZE if rng.random() < 0.75 else SIZE[::-1]
        path = folder / f"{index:05d}.jpg"
        picture.resize(size, Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def bare_throughput(model: Path, batch: np.ndarray, threads: int | None, seconds: float = 10) -> float:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        done += len(batch)
    return done / (time.perf_counter() - started)


def decode_throughput(files: list[Path], info, workers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda path: preprocess_images(path, info), files):
            pass
    return len(files) / (time.perf_counter() - started)


def edgecnn_run(model: Path, folder: Path, output: Path, workers: int, batch: int,
                threads: int | None) -> tuple[dict, float]:
    """The summary of a fresh `edgecnn run --output --json` process, and its peak RSS (MB)."""
    args = ["run", str(model), str(folder), "--output", str(output), "--json", "--provider",
            "cpu", "--workers", str(workers), "--batch", str(batch)]
    if threads:
        args += ["--threads", str(threads)]
    # As runtime_overhead.peak_rss_mb, keeping the summary printed before the peak.
    done = subprocess.run([sys.executable, "-c", _EDGECNN_CLI + _READ_PEAK, *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    body, _, peak = done.stdout.rstrip().rpartition("\n")
    return json.loads(body), float(peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = work / "photos"
        photos.mkdir()
        print(f"making {args.count} photos...", file=sys.stderr)
        files = make_photos(photos, args.count)
        calibration = work / "calibration"
        calibration.mkdir()
        for path in files[:100]:
            os.link(path, calibration / path.name)
        print("exporting resnet18 (224) and quantizing it to int8...", file=sys.stderr)
        from edgecnn.export import export_model
        from edgecnn.export.quantize import quantize_model

        fp32, int8 = work / "resnet18.onnx", work / "resnet18_int8.onnx"
        export_model("resnet18", fp32, input_size=224)
        quantize_model(fp32, int8, mode="int8", calibration=calibration, calibration_size=100,
                       on_warning=lambda _: None)
        info = Engine(fp32, "cpu").metadata.input
        ready = preprocess_images(files[:args.batch], info)
        rows = []
        for name, model in (("fp32", fp32), ("int8", int8)):
            print(f"{name}: bare session, decode, edgecnn run...", file=sys.stderr)
            bare = bare_throughput(model, ready, args.threads)
            decode = decode_throughput(files, info, args.workers)
            summary, peak = edgecnn_run(model, photos, work / f"{name}.jsonl", args.workers,
                                        args.batch, args.threads)
            rows.append((name, bare, decode, summary["images_per_second"], peak))
        big = work / "big"
        big.mkdir()
        for index in range(args.big):
            os.link(files[index % len(files)], big / f"{index:06d}.jpg")
        print(f"int8 on {args.big} images...", file=sys.stderr)
        big_summary, big_peak = edgecnn_run(int8, big, work / "big.jsonl", args.workers,
                                            args.batch, args.threads)
    print(f"{args.count} JPEGs ~500x375, resnet18 at 224, batch {args.batch}, workers "
          f"{args.workers}, threads {args.threads or 'default'}, onnxruntime {ort.__version__}, "
          f"CPU {cpu_name()}, {os.cpu_count()} cores")
    for name, bare, decode, run, peak in rows:
        goal = GOAL * min(bare, decode)
        print(f"{name}: bare session {bare:.1f} img/s, decode+preprocess {decode:.1f} img/s, "
              f"edgecnn run {run:.1f} img/s = {run / min(bare, decode):.2f} x min "
              f"(goal >= {GOAL}) {'ok' if run >= goal else 'MISSED'}; peak RSS {peak:.0f} MB")
    int8_peak = rows[1][4]
    print(f"int8 peak RSS: {int8_peak:.0f} MB at {args.count} images, {big_peak:.0f} MB at "
          f"{args.big} ({big_summary['images_per_second']:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
