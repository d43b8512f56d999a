"""Prometheus metrics of a running stream, for a fleet operator to scrape (``edgert run --metrics``).

Served in the Prometheus text format by ``prometheus_client`` on its own registry and thread,
loopback unless another address is given. Per frame: frames, drops and undecodable frames
(counters), fps over the last frames, every stage's latency (histograms), the normalised entropy
of the prediction the adapter adapted on, and how full the adapter's memory is where it has a
bound (DMN's rings, a kNN memory with a capacity). The checkpoint age is computed at each scrape,
so it grows between frames and falls back to zero when a checkpoint is written.

Names: ``edgert_frames_total``, ``edgert_frames_dropped_total``, ``edgert_frames_undecodable_total``,
``edgert_fps``, ``edgert_stage_seconds{stage}``, ``edgert_prediction_entropy`` (histogram and
``edgert_prediction_entropy_last``), ``edgert_memory_entries``, ``edgert_memory_fill_ratio``,
``edgert_checkpoints_total``, ``edgert_checkpoint_age_seconds``, ``edgert_backbone_info``.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from typing import Any

import numpy as np

from edge_runtime.errors import InputError

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENTROPY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
FPS_WINDOW = 64  # frames


def parse_address(text: str) -> tuple[str, int]:
    """``"9108"``, ``":9108"`` -> loopback; ``"HOST:PORT"`` and ``"[v6]:PORT"`` as given.

    >>> parse_address("9108"), parse_address("0.0.0.0:9108"), parse_address("[::1]:0")
    (('127.0.0.1', 9108), ('0.0.0.0', 9108), ('::1', 0))
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else ""
    try:
        number = int(port)
        if host:
            ipaddress.ip_address(host)
    except ValueError:
        raise InputError(
            f"--metrics {text!r}: expected PORT or HOST:PORT with a numeric address, " "e.g. 127.0.0.1:9108"
        ) from None
    if not 0 <= number <= 65535:
        raise InputError(f"--metrics {text!r}: port must be 0-65535")
    return host or "127.0.0.1", number


def memory_fill(adapter: Any) -> tuple[int, int | None] | None:
    """(entries held, capacity or None) of an adapter's bounded memory; None for fixed-size states."""
    return None if adapter is None else adapter.memory_usage()


class Metrics:
    """The metrics of one run and the HTTP server that exposes them (port 0 picks a free port)."""

    def __init__(self, host: str, port: int, *, model: str, execution: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

        self.registry = CollectorRegistry()
        r = self.registry
        self._frames = Counter("edgert_frames", "Frames processed", registry=r)
        self._dropped = Counter("edgert_frames_dropped", "Frames dropped because inference lagged", registry=r)
        self._undecodable = Counter("edgert_frames_undecodable", "Frames that could not be decoded", registry=r)
        self._fps = Gauge("edgert_fps", f"Frames per second over the last {FPS_WINDOW} frames", registry=r)
        self._stage = Histogram(
            "edgert_stage_seconds", "Time per frame in each stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self._entropy = Histogram(
            "edgert_prediction_entropy",
            "Normalised entropy of each prediction (0 sure, " "1 uniform)",
            buckets=ENTROPY_BUCKETS,
            registry=r,
        )
        self._entropy_last = Gauge(
            "edgert_prediction_entropy_last", "Normalised entropy of the last prediction", registry=r
        )
        self._entries = Gauge("edgert_memory_entries", "Entries in the adapter's bounded memory", registry=r)
        self._fill = Gauge("edgert_memory_fill_ratio", "Entries / capacity of the adapter's memory", registry=r)
        self._checkpoints = Counter("edgert_checkpoints", "Checkpoints written", registry=r)
        Gauge(
            "edgert_checkpoint_age_seconds",
            "Seconds since the last checkpoint (since start before the first)",
            registry=r,
        ).set_function(lambda: time.monotonic() - self._last_checkpoint)
        Info("edgert_backbone", "The backbone and where it runs", registry=r).info(
            {"model": model, "runtime": execution.runtime, "active": ",".join(execution.active)}
        )
        self._last_checkpoint = time.monotonic()
        self._seen = {"dropped": 0, "undecodable": 0}
        self._times: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)
        self._server, self._thread = start_http_server(port, addr=host, registry=r)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # type: ignore[str-bytes-safe]

    def record(self, ms: dict[str, float], proba: np.ndarray, capture: Any, adapter: Any) -> None:
        """One processed frame: its stage times (ms), the prediction, the capture's counters."""
        self._frames.inc()
        for stage, value in ms.items():
            self._stage.labels(stage).observe(value / 1000.0)
        p = np.clip(np.asarray(proba, np.float64).ravel(), 1e-12, 1.0)
        entropy = float(-(p * np.log(p)).sum() / np.log(len(p))) if len(p) > 1 else 0.0
        self._entropy.observe(entropy)
        self._entropy_last.set(entropy)
        for name, counter in (("dropped", self._dropped), ("undecodable", self._undecodable)):
            total = int(getattr(capture, name))
            counter.inc(max(0, total - self._seen[name]))
            self._seen[name] = total
        self._times.append(time.monotonic())
        if len(self._times) > 1 and self._times[-1] > self._times[0]:
            self._fps.set((len(self._times) - 1) / (self._times[-1] - self._times[0]))
        fill = memory_fill(adapter)
        if fill is not None:
            self._entries.set(fill[0])
            if fill[1]:
                self._fill.set(fill[0] / fill[1])

    def checkpointed(self) -> None:
        self._checkpoints.inc()
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
