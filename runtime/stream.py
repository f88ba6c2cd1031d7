"""Dataset-scale inference: which files a run covers, and a pipeline that decodes and
preprocesses images on a pool of threads while the session runs the batch before.

    paths = expand_inputs(["photos/", "extra/*.jpg", "@more.txt"])
    for outcome in stream_scores(engine, paths, batch=16, workers=4):
        outcome.path, outcome.scores, outcome.error   # scores: the first output's row, or None

Memory stays flat in the number of images: at most ``lookahead`` preprocessed images are held
(two batches and one per worker by default), and results leave as they come. Pillow decodes and
resizes with the GIL released, so threads overlap with each other and with onnxruntime.
Torch-free.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from edgecnn.errors import BadInput, first_line, require_count
from edgecnn.runtime.engine import FIXED_BATCH_ADVICE, check_feed_bytes
from edgecnn.runtime.files import check_input_file
from edgecnn.runtime.preprocess import preprocess_images

# What a folder given to `run` or `evaluate` (or an int8 calibration folder) is searched for.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
DEFAULT_BATCH = 16  # images per session call when the batch axis is dynamic
GLOB_CHARACTERS = frozenset("*?[")


MAX_WORKERS = 64  # decode threads: beyond what a machine's cores could keep busy


def default_workers() -> int:
    """Decode threads: one per core beyond the first, 1 to 8 (onnxruntime uses the cores too)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def streaming_session_options():
    """Session options for a stream: onnxruntime's threads do not spin waiting for the next
    call (``session.intra_op.allow_spinning`` 0), so the decode threads get the cores between
    batches (resnet18 fp32 on 2 cores: 26.5 instead of 24 images/s)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (sub-folders included, IMAGE_SUFFIXES), sorted."""
    return sorted(path for path in folder.rglob("*")
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def _folder(folder: Path) -> list[Path]:
    files = image_files(folder)
    if not files:
        what = "is empty" if not any(folder.iterdir()) else "has no image files"
        raise BadInput(f"folder {folder} {what} ({'/'.join(IMAGE_SUFFIXES)}, sub-folders "
                       "included)")
    return files


def _list_file(argument: str) -> list[Path]:
    path = check_input_file(argument[1:], "list file")  # a FIFO or /dev/zero: refused
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"cannot read list file {path}: {first_line(error)}") from None
    entries = [Path(line.strip()) for line in text.splitlines() if line.strip()]
    if not entries:
        raise BadInput(f"list file {path} names no images")
    return entries  # not checked here: a missing one is that image's error, not the run's


def _glob(pattern: Path) -> list[Path]:
    """What a glob matches, sorted, as the shell's ``globstar`` does it: ``**`` descends into
    sub-folders but not through symlinks to folders (a link back up would loop forever), and a
    name starting with "." is matched only by a pattern part that starts with one."""
    parts = pattern.parts
    first = next(index for index, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    root, rest = Path(*parts[:first]) if first else Path(), parts[first:]
    dotted = any(part.startswith(".") for part in rest)
    return sorted(match for match in root.glob(str(Path(*rest)))
                  if dotted or not any(part.startswith(".")
                                       for part in match.relative_to(root).parts))


def _one(argument: str) -> list[Path]:
    path = Path(argument)
    if argument.startswith("@") and len(argument) > 1:
        return _list_file(argument)
    if path.is_dir():
        return _folder(path)
    if path.exists():
        return [path]
    if GLOB_CHARACTERS & set(argument):
        matches = _glob(path)
        if not matches:
            raise BadInput(f"no files match {argument}")
        return [file for match in matches
                for file in (image_files(Path(match)) if Path(match).is_dir() else [Path(match)])]
    raise BadInput(f"image not found: {argument}")


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files that ``inputs`` name, in order, each once: a file; a folder (its image
    files, recursively, sorted); a glob (``shots/**/*.jpg``); ``@list.txt`` (one path a line,
    blank lines skipped; a listed file that is missing is that image's error, not the run's).
    BadInput for a missing file, an empty folder or one without images, a glob matching
    nothing, and a missing or empty list file."""
    if not inputs:
        raise BadInput("no images given")
    found = []
    for argument in map(os.fspath, inputs):
        try:
            found += _one(argument)
        except RecursionError:  # pathlib walks sub-folders recursively
            raise BadInput(f"{argument}: its sub-folders are nested too deep to list") from None
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Outcome:
    """One image of a stream: the model's first output for it, or why it failed."""

    path: Path
    scores: np.ndarray | None = None  # (classes,) or (classes, H, W)
    error: str | None = None


def _preprocess_one(path: Path, info, crop_fraction, max_pixels) -> np.ndarray | str:
    """The tensor of one image, or its error as a line (a bad image must not stop the run)."""
    try:
        return preprocess_images(path, info, crop_fraction=crop_fraction,
                                 max_pixels=max_pixels)[0]
    except BadInput as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - a decoder's own failure on a malformed file
        return f"cannot read image {path}: {type(error).__name__}: {first_line(error)}"


def _scored(path: Path, scores: np.ndarray) -> Outcome:
    """The image's Outcome: its scores, or an error where they hold NaN or Inf (a record of
    NaN probabilities would not even be JSON)."""
    if np.isfinite(scores).all():
        return Outcome(path, scores=scores)
    return Outcome(path, error=f"the model's scores for {path} hold NaN or Inf (the image was "
                              "read; the model computed a non-finite result)")


def check_stream_options(batch: int | None, workers: int | None,
                         max_pixels: int | None = None) -> None:
    require_count("batch", batch)
    require_count("workers", workers, at_most=MAX_WORKERS)
    require_count("max_pixels", max_pixels)


def stream_scores(engine, paths: Iterable[Path], *, batch: int | None = None,
                  workers: int | None = None, crop_fraction: float | None = None,
                  max_pixels: int | None = None, strict: bool = False) -> Iterator[Outcome]:
    """Outcomes of ``paths`` through ``engine`` (an Engine with image metadata), in order.

    ``batch`` images per session call (default: the model's fixed batch, else 16; a fixed
    batch axis gets its size whatever is asked); ``workers`` decode threads (default
    ``default_workers()``). A file that cannot be read, or that the model scores NaN or Inf,
    is an Outcome with its ``error`` (``strict``: BadInput instead). Closing the iterator (or
    an exception in the caller, KeyboardInterrupt included) cancels the images queued and
    waits for those being decoded.
    """
    check_stream_options(batch, workers, max_pixels)
    metadata = engine.require_metadata()
    engine.image_input()
    size = engine.fixed_batch or batch or DEFAULT_BATCH
    workers = workers or default_workers()
    lookahead = 2 * size + workers
    # The decoded images waiting for the session: bounded like one batch of the Engine's.
    fixed = engine.fixed_batch is not None
    check_feed_bytes({metadata.input.name: ((lookahead, *metadata.input.shape), np.float32)},
                     FIXED_BATCH_ADVICE if fixed else "give a smaller batch",
                     prefix=f"{'the fixed batch of' if fixed else 'batch'} {size}: {lookahead} "
                            "decoded images, ")
    todo = iter(paths)
    pending: deque[tuple[Path, Future]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="edgecnn-decode")

    def fill() -> None:
        while len(pending) < lookahead:
            path = next(todo, None)
            if path is None:
                return
            pending.append((path, pool.submit(_preprocess_one, path, metadata.input,
                                              crop_fraction, max_pixels)))

    try:
        fill()
        while pending:
            chunk = []
            while pending and len(chunk) < size:
                path, future = pending.popleft()
                chunk.append((path, future.result()))
                fill()
            tensors = [tensor for _, tensor in chunk if not isinstance(tensor, str)]
            scores = iter(engine.scores(np.stack(tensors)) if tensors else ())
            for path, tensor in chunk:
                outcome = (Outcome(path, error=tensor) if isinstance(tensor, str)
                           else _scored(path, next(scores)))
                if strict and outcome.error is not None:
                    raise BadInput(outcome.error)
                yield outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
