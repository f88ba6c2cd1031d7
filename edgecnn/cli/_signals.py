"""SIGTERM and SIGHUP end a command the way Ctrl-C does: clean-ups run, nothing is left behind.

Python's default for these signals kills the process on the spot, so no ``finally`` runs: a
half-written ``.NAME.*.tmp`` file and onnxruntime's temporary folders would stay. Raised as a
KeyboardInterrupt instead, they unwind through the same clean-ups as Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class SignalsAsInterrupts:
    """``with SignalsAsInterrupts() as caught:`` raises KeyboardInterrupt on SIGTERM/SIGHUP inside.

    ``caught.signum`` is the signal received (None: none), so the caller can exit with
    128 + signum as a shell expects even where the KeyboardInterrupt was turned into a plain
    exit code on its way up. Signals whose handler is not the default (``nohup`` ignores
    SIGHUP) keep their handler; the previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:  # a repeated signal must not break the clean-up under way
            self.signum = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def __enter__(self) -> "SignalsAsInterrupts":
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            for signum in TERMINATING_SIGNALS:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def exit_code(self, code: int) -> int:
        """``code``, or 128 + the signal received where the command ended as interrupted."""
        return 128 + self.signum if code == 130 and self.signum is not None else code
