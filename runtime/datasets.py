"""Data sets as files: image folders with one sub-folder per class (ImageFolder) and
.npy/.npz arrays of ready inputs (and labels). Used by `edgecnn evaluate` (runtime/evaluate.py)
and the quantizer's calibration and `--validation` (edgecnn.export.calibration), so a folder
maps to classes, and an array is checked, the same way everywhere. Torch-free.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecnn.errors import BadInput, first_line
from edgecnn.runtime.files import check_input_file
from edgecnn.runtime.metadata import FLOAT32_MAX, InputInfo
from edgecnn.runtime.stream import image_files

ARRAY_SUFFIXES = (".npy", ".npz")
INPUT_KEYS = ("inputs", "input", "x")  # .npz keys tried for the inputs (after the input name)
LABEL_KEYS = ("labels", "label", "y")


def existing_source(path: str | os.PathLike, what: str = "calibration") -> Path:
    """``path`` as a Path when it is a folder or an .npy/.npz file; BadInput otherwise."""
    path = Path(path)
    if not path.exists():
        kind = "file" if path.suffix.lower() in ARRAY_SUFFIXES else "folder"
        raise BadInput(f"{what} {kind} not found: {path}")
    if path.is_file() and path.suffix.lower() not in ARRAY_SUFFIXES:
        also = " or 'random'" if what == "calibration" else ""
        raise BadInput(f"{what} must be a folder of images or a .npy/.npz file{also}, got {path}")
    return path


def class_folders(folder: Path, label_names: Sequence[str] | None,
                  classes: int | None = None) -> list[tuple[Path, int]]:
    """(sub-folder, class index) pairs of an ImageFolder layout. Sub-folders are named after
    the model's labels when it has them (a validation set may lack some classes), else there
    is one per class, taken in sorted order as indices 0, 1, ... (``classes``: the model's
    count, checked). BadInput naming both sides when they do not match."""
    folders = sorted(path for path in folder.iterdir() if path.is_dir())
    if not folders:
        raise BadInput(f"{folder} needs one sub-folder of images per class")
    if label_names:
        index = {name: i for i, name in enumerate(label_names)}
        unknown = [path.name for path in folders if path.name not in index]
        if unknown:
            shown = ", ".join(list(label_names)[:5]) + (", ..." if len(label_names) > 5 else "")
            raise BadInput(f"{folder}: sub-folder(s) {', '.join(unknown[:3])} are not labels "
                           f"of the model ({len(label_names)} labels: {shown})")
        return [(path, index[path.name]) for path in folders]
    if classes is not None and len(folders) != classes:
        raise BadInput(f"{folder} has {len(folders)} class sub-folders and the model "
                       f"{classes} classes (without labels in its metadata, sub-folders are "
                       "its classes in sorted order)")
    return [(path, i) for i, path in enumerate(folders)]


def labelled_files(folder: Path, label_names: Sequence[str] | None,
                   classes: int | None = None) -> tuple[list[Path], list[int]]:
    """Every image file of an ImageFolder layout, and its class index."""
    files, labels = [], []
    for sub, label in class_folders(folder, label_names, classes):
        found = image_files(sub)
        files += found
        labels += [label] * len(found)
    if not files:
        raise BadInput(f"{folder} has no image files in its class sub-folders")
    return files, labels


def check_inputs(array: np.ndarray, info: InputInfo, where: str) -> np.ndarray:
    expected = info.sample_shape
    if array.ndim != 4 or list(array.shape[1:]) != expected:
        raise BadInput(f"{where}: array shape {list(array.shape)} is not the model's input "
                       f"[N, {', '.join(map(str, expected))}]")
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInput(f"{where}: expected preprocessed float inputs, got {array.dtype} "
                       "(give raw images as a folder instead)")
    if len(array) == 0:
        raise BadInput(f"{where}: the array holds no samples")
    # The extremes alone tell (max and min carry a NaN through), so no array-sized temporary
    # is made: an .npz of zeros may inflate to gigabytes.
    low, high = float(array.min()), float(array.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BadInput(f"{where}: the array contains NaN or Inf")
    largest = max(-low, high)
    if largest > FLOAT32_MAX:  # finite in float64, inf once cast to the model's float32
        raise BadInput(f"{where}: values up to {largest:.3g} are beyond float32 (at most "
                       f"{FLOAT32_MAX:.3g}), in which the model computes")
    return np.ascontiguousarray(array, dtype=np.float32)


# What reading a corrupt, truncated or pickled (object) array raises.
ARRAY_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError)


def _cannot_read(path, error: Exception) -> BadInput:
    return BadInput(f"cannot read {path}: {first_line(error, 200)}")


def _npz_entry(arrays, keys: tuple[str, ...], where: str, what: str):
    for key in keys:
        if key in arrays.files:
            return _npz_member(arrays, key, where)
    if what == "inputs" and len(arrays.files) == 1:
        return _npz_member(arrays, arrays.files[0], where)
    raise BadInput(f"{where}: no {what} array (looked for keys {', '.join(keys)}; "
                   f"the file has {', '.join(arrays.files) or 'none'})")


_DEFLATE_RATIO = 1100  # deflate inflates a byte to at most ~1032: a member cannot hold more


def _check_declared_size(stream, available: int, where: str) -> None:
    """BadInput when the .npy header at the start of ``stream`` declares an array of more
    bytes than the ``available`` ones after it: numpy allocates the declared array before it
    reads, so 200 bytes could ask for 715 GiB."""
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                       np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(stream)
    except ARRAY_READ_ERRORS as error:
        raise _cannot_read(where, error) from None
    declared = math.prod(shape) * dtype.itemsize
    says = f"cannot read {where}: its header declares {dtype} {list(shape)} ({declared:,} bytes)"
    if declared > available - stream.tell():
        raise BadInput(f"{says}, more than the file holds")
    memory = available_memory()  # deflate lets a 3 MB member hold a 3 GB array of zeros
    if memory is not None and declared > memory:
        raise BadInput(f"{says}, more than the {memory:,} bytes of memory available")


def available_memory() -> int | None:
    """Bytes of memory the process can still take: /proc/meminfo's MemAvailable, lowered to
    what a cgroup v2 limit (a container's) leaves; None where the system does not say."""
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo
                      if line.startswith("MemAvailable:")]
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            with contextlib.suppress(OSError, ValueError):  # page cache it can drop is free
                used -= next((int(line.split()[1]) for line in
                              (cgroup / "memory.stat").read_text().splitlines()
                              if line.startswith("inactive_file ")), 0)
            found.append(int(limit) - used)
    return max(0, min(found)) if found else None


def _npz_member(arrays, key: str, where: str) -> np.ndarray:
    """One array of an .npz; np.load reads the members lazily, so their errors come here."""
    where = f"{where} (array {key!r})"
    try:
        names = arrays.zip.namelist()  # numpy reads the member named ``key`` first, if any
        info = arrays.zip.getinfo(key if key in names else f"{key}.npy")
        packed = info.compress_size * (_DEFLATE_RATIO if info.compress_type else 1)
        member = arrays.zip.open(info)
    except ARRAY_READ_ERRORS as error:
        raise _cannot_read(where, error) from None
    with member:
        _check_declared_size(member, min(info.file_size, packed), where)
    try:
        return arrays[key]
    except ARRAY_READ_ERRORS as error:
        raise _cannot_read(where, error) from None


def load_arrays(path: Path, info: InputInfo, with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs (and labels) from a .npy (inputs only) or .npz file; shapes checked."""
    path = check_input_file(path, "array file", "an .npy or .npz file")
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as stream:
            _check_declared_size(stream, path.stat().st_size, str(path))
    try:
        loaded = np.load(path, allow_pickle=False)
    except ARRAY_READ_ERRORS as error:
        raise _cannot_read(path, error) from None
    if isinstance(loaded, np.ndarray):
        if with_labels:
            raise BadInput(f"{path}: a validation set needs labels; give an .npz with "
                           "'inputs' and 'labels' arrays")
        return check_inputs(loaded, info, str(path)), None
    with loaded:
        inputs = check_inputs(_npz_entry(loaded, (info.name, *INPUT_KEYS), str(path), "inputs"),
                               info, str(path))
        labels = _npz_entry(loaded, LABEL_KEYS, str(path), "labels") if with_labels else None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(inputs),) or not np.issubdtype(labels.dtype, np.integer):
            raise BadInput(f"{path}: labels must be {len(inputs)} integers, got "
                           f"{labels.dtype} {list(labels.shape)}")
    return inputs, labels


