"""Writing output files atomically: nothing half-written is ever left at the target path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgecnn.errors import BadInput


def check_output_path(path: str | os.PathLike, suffix: str = ".onnx") -> Path:
    """Validate an output path before any work: its directory exists and is writable."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"output path is a directory: {path} (give a file name ending in {suffix})")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise BadInput(f"output directory does not exist: {directory}")
    # Probe by creating a file: os.access() answers "writable" for root even where the file
    # system refuses (read-only mounts, sysfs).
    try:
        handle, probe = tempfile.mkstemp(prefix=".edgecnn-probe-", dir=directory)
    except OSError as error:
        raise BadInput(f"output directory is not writable: {directory} ({error.strerror})") from None
    os.close(handle)
    os.unlink(probe)
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    target is left as it was. The temporary file lives in the target directory so the final
    rename is atomic on POSIX file systems.
    """
    path = check_output_path(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent if str(path.parent) else ".")
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        with open(temp_path, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp_path, 0o666 & ~_current_umask())  # mkstemp makes it 0600
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
