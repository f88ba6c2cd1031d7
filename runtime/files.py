"""Writing output files atomically: nothing half-written is ever left at the target path."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from edgecnn.errors import BadInput, alternatives

_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
               stat.S_IFDIR: "a directory"}


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for a message: "a FIFO", "a socket"..."""
    return _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")


def check_input_file(path: str | os.PathLike, what: str, expected: str = "a file") -> Path:
    """``path`` as a Path; BadInput naming ``what`` when it is missing, a directory
    ("..., not <expected>"), empty, or not a regular file (a FIFO would block the first read
    forever, /dev/zero never ends)."""
    if not isinstance(path, (str, os.PathLike)):
        raise BadInput(f"{what} must be a path, got {type(path).__name__}")
    path = Path(path)
    try:
        status = path.stat()  # follows symlinks
    except (FileNotFoundError, NotADirectoryError):
        raise BadInput(f"{what} not found: {path}") from None
    except OSError as error:
        raise BadInput(f"cannot read {what} {path}: {error.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise BadInput(f"{what} is a directory, not {expected}: {path}")
    if not stat.S_ISREG(status.st_mode):
        raise BadInput(f"{what} is {file_kind(status.st_mode)}, not a regular file: {path}")
    if status.st_size == 0:
        raise BadInput(f"{what} is empty: {path}")
    return path


def refuse_irregular_target(path: Path) -> None:
    """BadInput when ``path`` exists and is not a regular file (or a symlink to one).

    The final rename would replace a FIFO or a device node (``-o /dev/null``) with a regular
    file. A symlink to a regular file is an ordinary target (the rename replaces the link).
    """
    suffix = path.suffix or ".onnx"  # what the error messages suggest
    try:
        mode = os.stat(path).st_mode  # follows a symlink to what it names
    except (FileNotFoundError, NotADirectoryError):
        # Nothing there yet (or a dangling symlink): the rename creates it. A parent that is
        # no directory is check_output_path's to report.
        return
    except OSError as error:
        raise BadInput(f"cannot use output path {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise BadInput(f"output path is a directory: {path} (give a file name ending in {suffix})")
    if not stat.S_ISREG(mode):
        raise BadInput(f"output path is {file_kind(mode)}, not a regular file: {path} (writing would "
                       f"replace it; give a file name ending in {suffix})")


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output path before any work: a regular file or none, in a writable directory."""
    if not str(path):  # Path("") is the current folder
        raise BadInput("output is an empty path")
    path = Path(path)
    refuse_irregular_target(path)
    directory = path.parent
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


def check_report_path(path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """A report's path, checked before any work: it ends in one of ``suffixes`` (the format)
    and can be written (``check_output_path``)."""
    path = Path(path)
    if path.suffix not in suffixes:
        raise BadInput(f"report must end in {alternatives(suffixes)}, got {path.name}")
    try:
        return check_output_path(path)
    except BadInput as error:
        raise BadInput(f"report cannot be written: {error}") from None


def write_text(path: Path, text: str) -> Path:
    """``text`` as ``path``, complete or not at all (``atomic_output``)."""
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path


# The temporary files and folders of the writes under way, for an exit that cannot unwind
# (edgecnn.cli._signals: a signal while onnxruntime runs native code for good).
_UNDER_WAY: set[Path] = set()


@contextlib.contextmanager
def _under_way(path: Path) -> Iterator[Path]:
    _UNDER_WAY.add(path)
    try:
        yield path
    finally:
        _UNDER_WAY.discard(path)


def remove_temporaries_under_way() -> None:
    """Remove what the writes under way have written so far (their targets are untouched)."""
    for path in list(_UNDER_WAY):
        _remove(path)


def _remove(path: Path) -> None:
    """A temporary file, or folder (atomic_model_output's, work_directory's), gone."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _remove_even_if_interrupted(path: Path) -> None:
    """``_remove``, finished even when Ctrl-C (or SIGTERM, raised as it) comes in the middle
    of it: a folder half removed would stay behind; the interrupt goes on afterwards."""
    try:
        _remove(path)
    except KeyboardInterrupt:
        _remove(path)
        raise


@contextlib.contextmanager
def work_directory(prefix: str) -> Iterator[Path]:
    """A temporary folder that also receives the temporary files of the libraries called inside.

    onnxruntime's quantizer makes its ``ort.quant.*`` folders with ``tempfile`` in the system
    temporary directory; pointing ``tempfile`` here for the duration makes the one clean-up of
    this folder remove them too, however the work ends.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as work, _under_way(Path(work)):
        previous, tempfile.tempdir = tempfile.tempdir, work
        try:
            yield Path(work)
        finally:
            tempfile.tempdir = previous


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    """Eight hex digits naming this machine: process ids only mean something on their host."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files that killed runs (SIGKILL, power loss) left next to ``path``.

    A temporary file's name carries the host and process id of its run; only those of this
    host whose process no longer exists are removed, never the file of a run still going.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-{_host_tag()}\.[a-z0-9_]+\.tmp")
    with contextlib.suppress(OSError):
        for sibling in path.parent.iterdir():
            match = pattern.fullmatch(sibling.name)
            if match and not _process_exists(int(match.group(1))):
                _remove(sibling)


def _temporary_prefix(path: Path) -> str:
    """How a temporary next to ``path`` is named: its host and process id say when it is stale
    (``_remove_stale_temporaries``)."""
    return f".{path.name}.{os.getpid()}-{_host_tag()}."


def temporary_beside(path: Path) -> Path:
    """A new empty file next to ``path`` that ``replace_with`` moves onto it, or ``discard``
    removes; the signal clean-up removes it until then. For a file written over a long run
    (``records.RecordWriter``), where ``atomic_output`` would hold a context open."""
    _remove_stale_temporaries(path)
    handle, name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp",
                                    dir=path.parent)
    os.close(handle)
    _UNDER_WAY.add(Path(name))
    return Path(name)


def replace_with(temporary: Path, path: Path) -> None:
    """``temporary_beside``'s file renamed onto ``path`` (a link there is replaced, not
    written through); a handle open on it goes on writing to ``path``."""
    os.chmod(temporary, 0o666 & ~_current_umask())
    refuse_irregular_target(path)
    os.replace(temporary, path)
    _UNDER_WAY.discard(temporary)


def discard(temporary: Path) -> None:
    _remove_even_if_interrupted(temporary)
    _UNDER_WAY.discard(temporary)


@contextlib.contextmanager
def atomic_model_output(path: str | os.PathLike) -> Iterator[Path]:
    """A model written with files beside it (its external data), whole or not at all: yield a
    temporary folder next to ``path``, to write the model into as ``path.name`` and its data
    files by their locations (subfolders too). On success each file is moved into ``path``'s
    folder, the model last; on any failure the files moved so far that were not there before
    are removed, so the model and its data are written together or not at all.
    """
    path = check_output_path(path)
    _remove_stale_temporaries(path)
    work = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    placed: list[Path] = []
    try:
        with _under_way(work):
            yield work
        model = work / path.name
        written = sorted((file for file in work.rglob("*") if file.is_file()),
                         key=lambda file: file == model)  # the model last
        for file in written:
            refuse_irregular_target(path.parent / file.relative_to(work))
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(file, 0o666 & ~_current_umask())
        for file in written:
            target = path.parent / file.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            existed = target.exists()
            os.replace(file, target)
            if not existed:
                placed.append(target)
        _remove_even_if_interrupted(work)  # here, an interrupt undoes the output like any other
    except BaseException:
        for target in placed:
            with contextlib.suppress(OSError):
                target.unlink()
        raise
    finally:
        _remove_even_if_interrupted(work)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (in ``atomic_model_output``'s folder); on
    success it is renamed onto ``path``, atomically on POSIX file systems. On any exception
    (KeyboardInterrupt included) it is removed and the target is left as it was, as it is
    when nothing was written. The target must be a regular file or absent, when the work
    starts and again at the rename (BadInput otherwise)."""
    with atomic_model_output(path) as work:
        yield work / Path(path).name
