"""Where quantization gets its example inputs: an image folder, a ready array, or random pixels.

    load_calibration("calib/", input_info, size=100)   # image files, preprocessed like the runtime
    load_calibration("calib.npz", input_info)          # (N, C, H, W) float inputs, as given
    load_calibration("random", input_info)             # random pixels: a warning, no accuracy
    load_validation("val/", input_info, labels)        # class sub-folders, or an .npz with labels

Images are preprocessed as the deployed runtime does (docs/quantization.md, "Calibration data").
Every problem with the source is a ``BadInput`` naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgecnn.errors import BadInput, require_count
from edgecnn.runtime.datasets import (
    check_inputs, existing_source, labelled_files, load_arrays,
)
from edgecnn.runtime.metadata import InputInfo
from edgecnn.runtime.preprocess import preprocess_images
from edgecnn.runtime.stream import IMAGE_SUFFIXES, image_files

RANDOM = "random"
DEFAULT_CALIBRATION_SIZE = 100
CALIBRATION_BATCH = 16  # samples per calibration run when the batch axis is dynamic

WarnCallback = Callable[[str], None]


@dataclass
class InputSet:
    """Model-ready inputs (N, C, H, W) float32, where they came from, and labels if known."""

    inputs: np.ndarray
    source: str  # "images" | "array" | "random"
    location: str | None  # the path given, None for random
    available: int  # samples the source had before picking ``size`` of them
    labels: np.ndarray | None = None
    skipped: int = 0  # unreadable image files

    def __len__(self) -> int:
        return len(self.inputs)


def batches(inputs: np.ndarray, fixed: int | None, size: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """``inputs`` in chunks: of ``size`` for a dynamic batch axis, or exactly ``fixed`` samples
    (the last chunk padded by repeating samples from the start) for a fixed one."""
    if fixed is None:
        return [inputs[start:start + size] for start in range(0, len(inputs), size)]
    chunks = []
    for start in range(0, len(inputs), fixed):
        indices = np.arange(start, start + fixed) % len(inputs)
        chunks.append(inputs[indices])
    return chunks


def calibration_batches(inputs: np.ndarray, fixed: int | None) -> list[np.ndarray]:
    """``inputs`` in equal chunks for the calibrator, each sample exactly once where possible.

    onnxruntime's entropy and percentile collectors stack every batch's activations into one
    array, so a smaller last batch fails there. Padding it by repeating samples would count
    those twice in the histograms; instead a dynamic batch axis gets the largest batch size up
    to CALIBRATION_BATCH that divides the sample count (1 for a prime count: more runs, the
    same statistics). A fixed batch axis leaves no choice: its last chunk is padded.
    """
    if fixed is not None:
        return batches(inputs, fixed)
    size = max(size for size in range(1, min(CALIBRATION_BATCH, len(inputs)) + 1)
               if len(inputs) % size == 0)
    return batches(inputs, None, size)


def _order(count: int, size: int | None, seed: int) -> np.ndarray:
    """The order samples are taken in: all in order, or a seeded shuffle when only ``size`` of
    ``count`` are wanted (a folder sorted by class would otherwise calibrate on one class)."""
    if size is None or size >= count:
        return np.arange(count)
    return np.random.default_rng(seed).permutation(count)


def _read_images(files: list[Path], info: InputInfo, order: Iterable[int] | None = None,
                 size: int | None = None) -> tuple[dict[int, np.ndarray], list[str]]:
    """Preprocess ``files`` (in ``order``, default as listed) until ``size`` are read (all when
    None); returns {file index: tensor} and why each unreadable file was skipped."""
    read: dict[int, np.ndarray] = {}
    skipped: list[str] = []
    for index in range(len(files)) if order is None else order:
        if size is not None and len(read) == size:
            break
        try:
            read[int(index)] = preprocess_images(files[index], info)[0]
        except BadInput as error:
            skipped.append(str(error))
    return read, skipped


def load_image_folder(folder: str | os.PathLike, info: InputInfo, *, what: str = "image",
                      warn: WarnCallback | None = None, size: int | None = None,
                      seed: int = 0) -> InputSet:
    """The readable image files under ``folder`` (``size`` of them, a seeded random subset;
    None: every one), preprocessed from ``info`` (`check --images`, calibration); unreadable
    files are skipped with a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{what} folder not found: {folder}")
    files = image_files(folder)
    if not files:
        raise BadInput(f"{what} folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} images")
    read, skipped = _read_images(files, info, _order(len(files), size, seed), size)
    if not read:
        raise BadInput(f"{what} folder {folder}: none of the {len(files)} image files "
                       f"could be read (the first: {skipped[0]})")
    if skipped and warn is not None:
        warn(f"skipped {len(skipped)} unreadable image file(s) in {folder}")
    tensors = [read[index] for index in sorted(read)]
    return InputSet(np.stack(tensors), "images", str(folder), len(files), skipped=len(skipped))


def random_inputs(info: InputInfo, count: int, seed: int = 0) -> np.ndarray:
    """``count`` images of uniform random pixels, normalized like real ones."""
    height, width = info.height_width
    pixels = np.random.default_rng(seed).integers(
        0, 256, size=(count, height, width, info.channels), dtype=np.uint8)
    return preprocess_images(pixels, info, crop_fraction=1.0)


def _in_memory_inputs(data, info: InputInfo) -> np.ndarray:
    """One array from an array, or from an iterable of batches / {input name: batch} dicts."""
    if isinstance(data, np.ndarray):
        return data
    if hasattr(data, "get_next"):  # a CalibrationDataReader
        data = iter(data.get_next, None)
    try:
        chunks = [batch[info.name] if isinstance(batch, dict) else np.asarray(batch)
                  for batch in data]
    except TypeError:
        raise BadInput("calibration data must be a path, 'random', an array or an iterable of "
                       f"batches, got {type(data).__name__}") from None
    except KeyError:
        raise BadInput(f"calibration batches are dicts without the input {info.name!r}") from None
    if not chunks:
        raise BadInput("calibration data holds no batches")
    if len({chunk.shape[1:] for chunk in chunks}) != 1 or any(c.ndim != 4 for c in chunks):
        raise BadInput("calibration batches must all be (N, C, H, W) of one sample shape, got "
                       f"{sorted({tuple(chunk.shape) for chunk in chunks})[:3]}")
    return np.concatenate(chunks)


def load_calibration(source, info: InputInfo,
                     size: int | None = DEFAULT_CALIBRATION_SIZE, *, seed: int = 0,
                     warn: WarnCallback | None = None) -> InputSet:
    """Calibration inputs from a folder of images, a .npy/.npz array, ``"random"``, or data in
    memory: an (N, C, H, W) array, or an iterable of batches (arrays or {input name: array}
    dicts, as onnxruntime's CalibrationDataReader yields).

    ``size`` samples at most (a seeded random subset of a larger source; None: all of them).
    ``"random"`` calls ``warn``: its scales fit noise, not the data, so accuracy is not
    guaranteed.
    """
    warn = warn or (lambda message: None)
    require_count("calibration_size", size)
    if not isinstance(source, (str, os.PathLike)):
        inputs = check_inputs(_in_memory_inputs(source, info), info, "calibration data")
        location = None
    elif str(source) == RANDOM:
        warn("calibrating on random inputs: the int8 scales fit noise, not real data, so "
             "accuracy is not guaranteed (give --calibration FOLDER or an .npy/.npz of inputs)")
        count = size or DEFAULT_CALIBRATION_SIZE
        return InputSet(random_inputs(info, count, seed), RANDOM, None, count)
    else:
        path = existing_source(source, "calibration")
        if path.is_dir():
            return load_image_folder(path, info, what="calibration", warn=warn, size=size,
                                     seed=seed)
        inputs, _ = load_arrays(path, info, with_labels=False)
        location = str(path)
    picked = np.sort(_order(len(inputs), size, seed)[:size])
    chosen = inputs[picked]
    if chosen.size and (low := chosen.min()) == chosen.max():
        warn(f"calibration data is constant (every value {low:g}): the int8 scales fit nothing "
             "the model will see; give real inputs")
    return InputSet(chosen, "array", location, len(inputs))


def load_validation(source: str | os.PathLike, info: InputInfo,
                    label_names: list[str] | None = None, *,
                    warn: WarnCallback | None = None) -> InputSet:
    """A labelled set: an .npz with ``inputs`` and ``labels``, or one image sub-folder per class.

    Sub-folders map to the model's labels by name when the metadata has labels, otherwise to
    class indices in sorted order (0, 1, ...).
    """
    warn = warn or (lambda message: None)
    path = existing_source(source, "validation")
    if path.is_file():
        inputs, labels = load_arrays(path, info, with_labels=True)
        return InputSet(inputs, "array", str(path), len(inputs), labels=labels)
    files, labels = labelled_files(path, label_names)
    read, unreadable = _read_images(files, info)
    if not read:
        raise BadInput(f"validation folder {path} has no readable {'/'.join(IMAGE_SUFFIXES)} images")
    if unreadable:
        warn(f"skipped {len(unreadable)} unreadable image file(s) in {path}")
    return InputSet(np.stack([read[index] for index in sorted(read)]), "images", str(path),
                    len(read), labels=np.asarray([labels[index] for index in sorted(read)],
                                                 dtype=np.int64), skipped=len(unreadable))
