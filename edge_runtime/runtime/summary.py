"""What a run reports: per-stage timings in fixed rings, the ``Summary``, a live ``Progress`` line."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from edge_runtime.source.capture import Capture

STAGES = ("decode", "preprocess", "backbone", "adapt", "sinks")


class Ring:
    """The last ``size`` values of a per-frame measurement, in a fixed array (a device runs for months).

    >>> r = Ring(3)
    >>> for v in (5.0, 1.0, 2.0, 9.0):
    ...     r.append(v)
    >>> r.values(), r.count
    (array([9., 1., 2.]), 4)
    """

    def __init__(self, size: int = 4096) -> None:
        self._values = np.zeros(size, np.float64)
        self.count = 0

    def append(self, value: float) -> None:
        self._values[self.count % self._values.shape[0]] = value
        self.count += 1

    def values(self) -> np.ndarray:
        return self._values[: min(self.count, self._values.shape[0])]

    def median(self) -> float:
        v = self.values()
        return float(np.median(v)) if v.size else 0.0


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    read: int = 0
    dropped: int = 0
    undecodable: int = 0
    reconnected: int = 0
    taught: int = 0
    checkpoints: int = 0
    ended: str = ""
    detail: str = ""
    stage_ms: dict[str, Ring] = field(default_factory=lambda: {s: Ring() for s in STAGES})
    # Pipelined runs: ms the writer thread spent per frame (source-only read-out + every sink),
    # off the frame path; "sinks" in stage_ms is then what the frame path spent handing over.
    writer_ms: Ring = field(default_factory=Ring)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def p50(self) -> dict[str, float]:
        """Median ms per stage over the most recent frames (up to the ring size)."""
        return {s: ring.median() for s, ring in self.stage_ms.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "read": self.read,
            "dropped": self.dropped,
            "undecodable": self.undecodable,
            "reconnected": self.reconnected,
            "taught": self.taught,
            "checkpoints": self.checkpoints,
            "ended": self.ended,
            "detail": self.detail,
            "p50_ms": {k: round(v, 3) for k, v in self.p50().items()},
            **({"writer_p50_ms": round(self.writer_ms.median(), 3)} if self.writer_ms.count else {}),
        }


class Progress:
    """A live status line on stderr: rewritten in place on a terminal, a line every 5 s otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else 5.0
        self._next = time.monotonic() + self.interval
        self._last = (0, time.monotonic())

    def update(self, summary: Summary, capture: Capture, adapt_ms: float, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next and not force:
            return
        frames, then = self._last
        fps = (summary.frames - frames) / max(now - then, 1e-9)
        self._last = (summary.frames, now)
        self._next = now + self.interval
        line = (
            f"frames {summary.frames}  {fps:5.1f} fps  adapt {adapt_ms:.3f} ms  "
            f"dropped {capture.dropped}  undecodable {capture.undecodable}"
        )
        self.stream.write(("\r" + line + "   ") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
