"""SIGTERM and SIGINT as a request to stop, for commands that must end cleanly at any moment.

``systemctl stop``, ``docker stop``, ``kill`` and Ctrl-C all mean "finish what you hold, save,
report, exit 0". Inside a ``Shutdown`` block those signals set ``requested`` and run the
registered callbacks (which must only set flags or schedule work: they run in the signal
handler); the command checks ``requested`` between steps. The previous handlers come back at the
end of the block.

>>> import os, signal
>>> with Shutdown() as shutdown:
...     os.kill(os.getpid(), signal.SIGTERM)
...     shutdown.requested.is_set(), shutdown.signal_name
(True, 'SIGTERM')
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """Turn SIGTERM/SIGINT into ``requested`` (a ``threading.Event``) plus callbacks."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: Optional[str] = None
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}

    def on_request(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when a stop is requested (at once if it already was)."""
        self._callbacks.append(callback)
        if self.requested.is_set():
            callback()

    def request(self, signum: int, _frame: Optional[FrameType] = None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.requested.set()
        for callback in self._callbacks:
            callback()

    def __enter__(self) -> "Shutdown":
        self._previous = {s: signal.signal(s, self.request) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


__all__ = ["STOP_SIGNALS", "Shutdown"]
