"""Keeping third-party chatter out of edgecnn's output (one JSON object under --json)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator


@contextlib.contextmanager
def silenced(*logger_names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Swallow warnings and Python-level prints on stdout, and raise the named loggers ("" is
    the root logger) to ``level``, for the duration of the block. The exporter (torch.onnx,
    onnxscript) and onnxruntime's quantizers log advice and progress meant for their own
    developers."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
