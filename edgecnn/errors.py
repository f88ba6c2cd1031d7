"""Exceptions shared by every layer; the CLI turns them into one line and an exit code.

This module must stay free of torch and onnx imports: the runtime uses it on devices.
"""

import errno
import numbers
import os
import re


class EdgecnnError(Exception):
    """Base class of the errors edgecnn reports to a user (no traceback, one line)."""

    exit_code = 1


class BadInput(EdgecnnError, ValueError):
    """The user asked for something that cannot work (unknown model, missing file, bad shape).

    The CLI exits with code 2. It subclasses ValueError so Python callers can catch either.
    """

    exit_code = 2


class CheckFailed(EdgecnnError):
    """A parity or accuracy check ran and did not pass. The CLI exits with code 1."""

    exit_code = 1


def require_count(name: str, value, *, optional: bool = True, at_most: int | None = None) -> None:
    """BadInput unless ``value`` is an integer >= 1 (a bool is not; nor one over ``at_most``),
    or None where ``optional`` (the default applies): the one check of every batch, worker,
    sample and class count, in the API's words."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise BadInput(f"{name} must be an integer >= 1, got {value!r}")
    if at_most is not None and value > at_most:
        raise BadInput(f"{name} must be at most {at_most:,}, got {value:,}")


MAX_SEED = 2**63 - 1  # torch's and numpy's generators take a 64-bit seed


def require_seed(seed) -> None:
    """BadInput unless ``seed`` is an integer in [0, 2**63), in the API's words."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise BadInput(f"seed must be an integer in [0, 2**63), got {seed!r}")


_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def alternatives(names) -> str:
    """``names`` as a reader lists choices: "a", "a or b", "a, b or c"."""
    names = [str(name) for name in names]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``error``'s message (at most ``limit`` characters), or its
    type's name when the message is empty: what a one-line report quotes of an exception.
    Terminal colour codes (torch.onnx colours its step names) are dropped."""
    plain = _TERMINAL_COLOURS.sub("", str(error))
    text = next((line.strip() for line in plain.splitlines() if line.strip()), "")
    return text[:limit] or type(error).__name__


# How onnxruntime says that an allocation failed (its arena, or the C++ runtime's bad_alloc),
# and how PyTorch does (its CPU allocator; CUDA's is torch.OutOfMemoryError).
ORT_ALLOCATION_FAILURES = ("Failed to allocate memory", "bad_alloc", "bad allocation")
TORCH_ALLOCATION_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory")
_ORT_REQUEST = re.compile(r"buffer of size (\d+)")
_TORCH_REQUEST = re.compile(r"allocate (\d+) bytes")


def _amount(text: str, request: re.Pattern) -> str | None:
    """The byte count ``request`` finds in ``text``, as "16.0 GiB"; None when there is none."""
    found = request.search(text)
    if not found:
        return None
    size, unit = float(found[1]), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def out_of_memory(error: BaseException) -> str | None:
    """The one line for running out of memory (numpy's MemoryError, an allocation onnxruntime
    or PyTorch could not make, with the size it asked for), else None."""
    if isinstance(error, MemoryError):
        return f"out of memory: {first_line(error) or 'an allocation failed'}"
    text = str(error)
    if (type(error).__name__ == "OutOfMemoryError"
            or any(failure in text for failure in TORCH_ALLOCATION_FAILURES)):
        amount = _amount(text, _TORCH_REQUEST) or "what the model needs"
        return (f"out of memory: PyTorch could not allocate {amount}; at this input and batch "
                "size the eager model needs more memory than the machine gives")
    why = text.rpartition("Status Message:")[2]  # what precedes it names the file's node
    if not (type(error).__module__.startswith("onnxruntime")
            and any(failure in why for failure in ORT_ALLOCATION_FAILURES)):
        return None
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    where = f" (running its {node[1]} node {node[2]})" if node else ""
    amount = _amount(why, _ORT_REQUEST)
    more = f" ({amount} more)" if amount else ""
    return (f"out of memory: onnxruntime could not allocate what the model needs{where}{more}; "
            "at this input and batch size it needs more memory than the machine gives")


# A write the machine refuses: a full disk or quota, a read-only file system, a file-size limit.
REFUSED_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def refused_write(error: OSError, path: str | os.PathLike | None = None) -> str | None:
    """The line for a write the machine refused (``REFUSED_WRITE_ERRNOS``), naming ``path`` or
    the error's file; None for any other OSError."""
    if error.errno not in REFUSED_WRITE_ERRNOS:
        return None
    where = path or error.filename
    return (f"{error.strerror}{f' ({where})' if where else ''}: the machine refused a write "
            "(not an edgecnn bug)")
