"""SIGTERM and SIGHUP end a command the way Ctrl-C does: clean-ups run, nothing is left behind.

Python's default for these signals kills the process on the spot, so no ``finally`` runs: a
half-written ``.NAME.*.tmp`` file and onnxruntime's temporary folders would stay. Raised as a
KeyboardInterrupt instead, they unwind through the same clean-ups as Ctrl-C.

Python runs a signal handler only between bytecodes: while onnxruntime runs native code (a
graph that loops for good, a model that takes hours), Ctrl-C and SIGTERM would wait for it.
A watcher thread hears each signal at once (``signal.set_wakeup_fd``); when the command has
not ended ``GRACE_SECONDS`` later, it removes the temporary files of the writes under way and
exits with 128 + the signal, saying why in one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType

TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 10.0  # for the clean-ups to run before the watcher ends the process
_STOP_WATCHING = b"\0"  # no signal has number 0
_ENDING_SIGNALS = (signal.SIGINT, *TERMINATING_SIGNALS)


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
            self._watch()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._pipe is not None:
            self._ended.set()
            signal.set_wakeup_fd(self._previous_wakeup)
            with contextlib.suppress(OSError):  # a watcher that heard a signal has ended
                os.write(self._pipe[1], _STOP_WATCHING)
            self._watcher.join()
            os.close(self._pipe[1])
            self._pipe = None

    _pipe: tuple[int, int] | None = None

    def _watch(self) -> None:
        """Start the watcher (see the module's text)."""
        reading, writing = os.pipe()
        os.set_blocking(writing, False)  # set_wakeup_fd's rule
        try:
            self._previous_wakeup = signal.set_wakeup_fd(writing, warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter
            os.close(reading)
            os.close(writing)
            return
        self._pipe, self._ended = (reading, writing), threading.Event()
        self._watcher = threading.Thread(target=self._wait_for_signals, args=(reading,),
                                         name="edgecnn-signals", daemon=True)
        self._watcher.start()

    def _wait_for_signals(self, reading: int) -> None:
        try:
            while (received := os.read(reading, 1)) and received != _STOP_WATCHING:
                if received[0] not in _ENDING_SIGNALS:  # another library's handled signal
                    continue
                if self._ended.wait(GRACE_SECONDS):
                    return
                _end_now(received[0])
        finally:
            os.close(reading)

    def exit_code(self, code: int) -> int:
        """``code``, or 128 + the signal received where the command ended as interrupted."""
        return 128 + self.signum if code == 130 and self.signum is not None else code


def _end_now(signum: int) -> None:
    """The command did not end within GRACE_SECONDS of ``signum``: native code holds the main
    thread. Its temporary files go, the process ends with 128 + signum."""
    from edgecnn.runtime.files import remove_temporaries_under_way

    remove_temporaries_under_way()
    os.write(2, f"error: interrupted ({signal.Signals(signum).name}); native code (onnxruntime, "
                f"torch) did not return within {GRACE_SECONDS:g} s, so it was stopped and the "
                "files under way removed\n".encode())
    sys.stderr.flush()
    os._exit(128 + signum)
