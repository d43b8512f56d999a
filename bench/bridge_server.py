"""A real ``edgert bridge serve`` process for the faults bench: start, wait until serving, kill; clients and memory files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edge_runtime.numerics import percentiles

CLASSES = ["north", "east", "south", "west"]
KILL_DIM = 64


# -- a real server process ------------------------------------------------------------------------------
class ServerProcess:
    """``edgert bridge serve`` on a free loopback port, its stderr drained into ``lines`` by a thread.

    ``started`` is when the process was spawned; ``listening`` is set (and ``url`` known) once it
    prints the line saying it serves.
    """

    def __init__(self, *args: str, port: str = "tcp://127.0.0.1:0") -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime.cli", "bridge", "serve", "--port", port, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url = ""
        self.serving_after = 0.0
        self.listening = threading.Event()
        self.ended = threading.Event()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"listening on (tcp://\S+)", line)
            if found and not self.listening.is_set():
                self.serving_after = time.monotonic() - self.started
                self.url = found.group(1)
                self.listening.set()
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended.set()
            self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 120.0) -> str:
        """Block until ``count`` stderr lines contain ``text``; returns the last. RuntimeError if the process ends first."""

        def seen() -> list[str]:
            return [line for line in self.lines if text in line]

        with self._changed:
            self._changed.wait_for(lambda: len(seen()) >= count or self.ended.is_set(), timeout)
            if len(seen()) < count:
                raise RuntimeError(f"no line with {text!r} from edgert bridge serve:\n" + "\n".join(self.lines[-20:]))
            return seen()[count - 1]

    def wait_listening(self, timeout: float = 120.0) -> str:
        """The server's URL once it serves; RuntimeError with its stderr if it exits or stalls first."""
        while not self.listening.wait(0.05):
            if self.ended.is_set() or time.monotonic() - self.started > timeout:
                self.ended.wait(5)
                raise RuntimeError("edgert bridge serve did not start:\n" + "\n".join(self.lines[-20:]))
        return self.url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self.ended.wait(timeout)
        return code

    def rss_kb(self) -> int:
        """Resident memory of the server process (VmRSS), kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)


def connect(url: str, key: Optional[bytes] = None, timeout: float = 30.0) -> Any:
    from firmware_bridge.client import BridgeClient
    from firmware_bridge.transport import open_transport

    return BridgeClient(open_transport(url, timeout=0.5), timeout=timeout, key=key)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    return {"n": len(seconds), **percentiles(seconds, scale=1e3)}


def memory_file(path: Path, adapter: Any, dim: int, seed: int = 0, model_sha256: str = "") -> Path:
    """A source memory of four separated classes in ``dim`` dimensions, written as a state file."""
    from edge_runtime.state import write_state

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), dim)).astype(np.float32) * 3
    y = np.repeat(np.arange(len(CLASSES)), 10)
    x = (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    return write_state(
        path, adapter.fit(x, y, n_classes=len(CLASSES)), kind="memory", model_sha256=model_sha256, classes=CLASSES
    )


def numbered(t: int, rng: np.random.Generator) -> np.ndarray:
    """A feature vector that carries its number t exactly through normalisation: x[1] / x[0] = t / 1024."""
    x = rng.uniform(-1, 1, KILL_DIM).astype(np.float32)
    x[0], x[1] = 1.0, t / 1024.0
    return x


def numbers_of(features: np.ndarray) -> np.ndarray:
    return np.rint(features[:, 1] / features[:, 0] * 1024.0).astype(np.int64)
