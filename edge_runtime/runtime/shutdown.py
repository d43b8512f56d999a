"""SIGTERM and SIGINT as a request to stop, for commands that must end cleanly at any moment.

``systemctl stop``, ``docker stop``, ``kill`` and Ctrl-C all mean "finish what you hold, save,
report, exit 0". Inside a ``Shutdown`` block those signals set ``requested`` and run the
registered callbacks; the command checks ``requested`` between steps. ``on_signal`` adds other
signals (SIGHUP: reload a key file). The previous handlers come back at the end of the block.

The Python-level handler only writes the signal's number to a pipe; a watcher thread sets the
event and runs the callbacks. A handler runs on the main thread between two bytecodes, possibly
while that thread holds a lock: ``Event.set()`` in the handler, landing while the main thread is
inside ``Event.wait()`` on the same event, deadlocks the process for good (8 of 20 SIGTERMs
against a loop of ``requested.wait(0)``; tests/unit/test_shutdown.py).

>>> import os, signal
>>> with Shutdown() as shutdown:
...     os.kill(os.getpid(), signal.SIGTERM)
...     shutdown.requested.wait(5), shutdown.signal_name
(True, 'SIGTERM')
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_END = 0  # not a signal number: tells the watcher to return


class Shutdown:
    """Turn SIGTERM/SIGINT into ``requested`` (a ``threading.Event``) plus callbacks, run on a
    watcher thread (never inside the signal handler)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: Optional[str] = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()  # a callback registered as the stop arrives runs once
        self._other: dict[int, Callable[[], None]] = {}
        self._previous: dict[int, Any] = {}
        self._pipe: Optional[tuple[int, int]] = None
        self._watcher: Optional[threading.Thread] = None

    def on_request(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when a stop is requested (at once if it already was)."""
        with self._lock:
            self._callbacks.append(callback)
            now = self.requested.is_set()
        if now:
            callback()

    def on_signal(self, signum: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the watcher thread) each time ``signum`` arrives inside the block."""
        self._other[signum] = callback
        if self._pipe is not None:
            self._previous.setdefault(signum, signal.signal(signum, self._handler))

    def request(self, signum: int) -> None:
        """Ask for a stop as if ``signum`` had arrived (from any thread, never from a handler)."""
        with self._lock:
            self.signal_name = signal.Signals(signum).name
            self.requested.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def _handler(self, signum: int, _frame: Optional[FrameType]) -> None:
        try:
            os.write(self._pipe[1], bytes([signum]))  # type: ignore[index]
        except BlockingIOError:  # 64 KiB of signals not yet read: one more adds nothing
            pass

    def _watch(self, read_end: int) -> None:
        while (signum := os.read(read_end, 1)[0]) != _END:
            if signum in self._other:
                self._other[signum]()
            else:
                self.request(signum)

    def __enter__(self) -> "Shutdown":
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._watcher = threading.Thread(target=self._watch, args=(read_end,), name="shutdown", daemon=True)
        self._watcher.start()
        for s in (*STOP_SIGNALS, *self._other):
            self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        assert self._pipe is not None and self._watcher is not None
        os.set_blocking(self._pipe[1], True)
        os.write(self._pipe[1], bytes([_END]))  # after any signal still in the pipe: those are handled first
        self._watcher.join()
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None


__all__ = ["STOP_SIGNALS", "Shutdown"]
