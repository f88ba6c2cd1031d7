"""Exceptions shared by every layer; the CLI turns them into one line and an exit code.

This module must stay free of torch and onnx imports: the runtime uses it on devices.
"""

import numbers
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


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``error``'s message (at most ``limit`` characters), or its
    type's name when the message is empty: what a one-line report quotes of an exception.
    Terminal colour codes (torch.onnx colours its step names) are dropped."""
    plain = _TERMINAL_COLOURS.sub("", str(error))
    text = next((line.strip() for line in plain.splitlines() if line.strip()), "")
    return text[:limit] or type(error).__name__
