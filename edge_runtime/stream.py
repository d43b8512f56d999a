"""The stream loop: frame -> preprocess -> backbone -> features -> adapter -> sinks.

``Stream.run(capture)`` takes frames from a ``Capture`` until it ends, ``max_frames`` are done or
``stop`` is set (the CLI sets it on SIGINT/SIGTERM). For each frame it times every stage, adapts
the adapter on the unlabelled features (or only predicts with ``adapt=False``), teaches it the
labels scheduled for that frame, and hands a ``Prediction`` to each sink. It writes a checkpoint
every ``checkpoint_every`` seconds and a final one at the end, whatever the reason for ending.

With no adapter the ImageNet head of the backbone labels the frame (the card's label names).
With a ``baseline`` adapter (a frozen copy of the source memory) each prediction also carries the
source-only label, so one pass compares source-only with adapted accuracy.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import cv2
import numpy as np

from edge_runtime.adapters import Adapter
from edge_runtime.backbones import Backbone
from edge_runtime.capture import Capture, Frame
from edge_runtime.errors import InputError
from edge_runtime.state import Checkpoints

STAGES = ("decode", "preprocess", "backbone", "adapt", "sinks")


@dataclass
class Prediction:
    frame: int
    t: float
    label: str
    confidence: float
    ms: dict[str, float]  # per stage; "sinks" is the previous frame's, known only after writing
    source_label: str | None = None
    source_confidence: float | None = None
    taught: str | None = None

    def to_json(self) -> str:
        row: dict[str, Any] = {"frame": self.frame, "t": round(self.t, 4), "label": self.label,
                               "confidence": round(self.confidence, 4),
                               "ms": {k: round(v, 3) for k, v in self.ms.items()}}
        if self.source_label is not None:
            row["source_label"] = self.source_label
            row["source_confidence"] = round(float(self.source_confidence or 0.0), 4)
        if self.taught is not None:
            row["taught"] = self.taught
        return json.dumps(row)


class Sink(Protocol):
    def write(self, prediction: Prediction, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per processed frame, line-buffered so a crash loses at most one line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = open(self.path, "w", buffering=1)

    def write(self, prediction: Prediction, image: np.ndarray) -> None:
        assert self._file is not None
        self._file.write(prediction.to_json() + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def annotate(image: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The frame with its label and confidence drawn on a dark band along the top."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.4, w / 900)
    band = int(34 * scale) + 6
    cv2.rectangle(out, (0, 0), (w, band), (0, 0, 0), thickness=-1)
    text = f"{prediction.label} {prediction.confidence:.0%}"
    if prediction.source_label is not None:
        text += f"   (source-only: {prediction.source_label})"
    cv2.putText(out, text, (6, band - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1 + int(scale),
                cv2.LINE_AA)
    return out


class VideoSink:
    """An annotated copy of the processed frames: ``.mp4`` (mp4v) or ``.avi`` (MJPG)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC:
            raise InputError(f"--video-out {self.path}: use a .mp4 (mp4v) or .avi (MJPG) file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps if fps > 0 else 25.0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, prediction: Prediction, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, size)
            if not self._writer.isOpened():
                raise InputError(f"cannot write video {self.path} with codec {FOURCC[self.path.suffix.lower()]}")
            self._size = size
        if size != self._size:  # a camera that changed resolution after a reconnect
            image = cv2.resize(image, self._size)
        self._writer.write(annotate(image, prediction))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


@dataclass
class LabelSchedule:
    """Labels to teach, from a JSONL of ``{"frame": n, "label": name}`` or ``{"t": s, "label": name}``.

    Each entry is taught once, on the first processed frame at or after its frame index / time.
    """

    by_frame: list[tuple[int, int]]  # (frame, class index), sorted
    by_time: list[tuple[float, int]]

    @classmethod
    def load(cls, path: str | Path, classes: list[str]) -> "LabelSchedule":
        index = {name: i for i, name in enumerate(classes)}
        by_frame, by_time = [], []
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as err:
            raise InputError(f"cannot read labels file {path}: {err.strerror}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row["label"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}:{n}: expected {{\"frame\": n or \"t\": seconds, \"label\": name}}") from None
            if name not in index:
                raise InputError(f"{path}:{n}: unknown label {name!r}; the memory knows {', '.join(classes)}")
            if "frame" in row:
                by_frame.append((int(row["frame"]), index[name]))
            elif "t" in row:
                by_time.append((float(row["t"]), index[name]))
            else:
                raise InputError(f"{path}:{n}: give \"frame\" or \"t\" with each label")
        return cls(sorted(by_frame), sorted(by_time))

    def due(self, frame: Frame) -> list[int]:
        """Class indices to teach on this frame (each entry once)."""
        out = []
        while self.by_frame and self.by_frame[0][0] <= frame.index:
            out.append(self.by_frame.pop(0)[1])
        while self.by_time and self.by_time[0][0] <= frame.t:
            out.append(self.by_time.pop(0)[1])
        return out


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
        return self._values[:min(self.count, self._values.shape[0])]

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

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def p50(self) -> dict[str, float]:
        """Median ms per stage over the most recent frames (up to the ring size)."""
        return {s: ring.median() for s, ring in self.stage_ms.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "seconds": round(self.seconds, 3), "fps": round(self.fps, 2),
                "read": self.read, "dropped": self.dropped, "undecodable": self.undecodable,
                "reconnected": self.reconnected, "taught": self.taught, "checkpoints": self.checkpoints,
                "ended": self.ended, "detail": self.detail,
                "p50_ms": {k: round(v, 3) for k, v in self.p50().items()}}


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
        line = (f"frames {summary.frames}  {fps:5.1f} fps  adapt {adapt_ms:.3f} ms  "
                f"dropped {capture.dropped}  undecodable {capture.undecodable}")
        self.stream.write(("\r" + line + "   ") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Stream:
    """Run frames through the backbone and adapter into sinks (see the module docstring)."""

    backbone: Backbone
    adapter: Adapter | None
    classes: list[str]
    sinks: list[Sink] = field(default_factory=list)
    adapt: bool = True
    baseline: Adapter | None = None
    labels: LabelSchedule | None = None
    checkpoints: Checkpoints | None = None
    checkpoint_every: float = 30.0
    meta: dict[str, Any] = field(default_factory=dict)
    max_frames: int | None = None
    progress: Progress | None = None
    metrics: Any = None  # edge_runtime.metrics.Metrics when --metrics serves them
    stop: threading.Event = field(default_factory=threading.Event)
    fleet: Any = None  # edge_runtime.fleet.FleetSync: teaching goes through it; it runs between frames

    def _teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        (self.fleet.teach if self.fleet is not None else self.adapter.teach)(features, labels)  # type: ignore[union-attr]

    def checkpoint(self, summary: Summary) -> None:
        if self.checkpoints is None or self.adapter is None:
            return
        meta = dict(self.meta)
        meta["frames"] = int(meta.get("frames", 0)) + summary.frames
        extra = None
        if self.fleet is not None:
            meta["fleet"], extra = self.fleet.state()
        self.checkpoints.save(self.adapter, self.classes, meta, extra=extra)
        summary.checkpoints += 1
        if self.metrics is not None:
            self.metrics.checkpointed()

    def _predict(self, features: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
        if self.adapter is None:
            if logits is None:
                raise InputError(f"{self.backbone.model_path} has no ImageNet head: choose an --adapter")
            return softmax(logits)
        if self.adapt:
            return self.adapter.adapt(features)
        return self.adapter.predict_proba(features)

    def run(self, capture: Capture) -> Summary:
        summary = Summary()
        stages = summary.stage_ms
        sinks_ms = 0.0
        start = time.perf_counter()
        last_checkpoint = time.monotonic()
        if self.fleet is not None and self.checkpoints is not None:
            self.fleet.persist = lambda: self.checkpoint(summary)  # an update leaves only once checkpointed
        try:
            for frame in capture:
                t0 = time.perf_counter()
                batch = self.backbone.preprocessor(frame.image)
                t1 = time.perf_counter()
                features, logits = self.backbone.run(batch)
                t2 = time.perf_counter()
                proba = self._predict(features, logits)
                k = int(proba[0].argmax())
                taught = None
                if self.labels is not None and self.adapter is not None:
                    for label in self.labels.due(frame):
                        self._teach(features, np.array([label]))
                        taught = self.classes[label]
                        summary.taught += 1
                t3 = time.perf_counter()
                ms = {"decode": frame.decode_ms, "preprocess": 1000 * (t1 - t0), "backbone": 1000 * (t2 - t1),
                      "adapt": 1000 * (t3 - t2), "sinks": sinks_ms}
                prediction = Prediction(frame.index, frame.t, self.classes[k], float(proba[0, k]), ms, taught=taught)
                if self.baseline is not None:
                    p0 = self.baseline.predict_proba(features)
                    k0 = int(p0[0].argmax())
                    prediction.source_label, prediction.source_confidence = self.classes[k0], float(p0[0, k0])
                for sink in self.sinks:
                    sink.write(prediction, frame.image)
                if self.fleet is not None:
                    self.fleet.step()
                sinks_ms = 1000 * (time.perf_counter() - t3)
                for stage, value in ms.items():
                    stages[stage].append(value)
                summary.frames += 1
                if self.metrics is not None:
                    self.metrics.record(ms, proba, capture, self.adapter)
                if self.progress is not None:
                    self.progress.update(summary, capture, ms["adapt"])
                if self.checkpoints is not None and time.monotonic() - last_checkpoint >= self.checkpoint_every:
                    self.checkpoint(summary)
                    last_checkpoint = time.monotonic()
                if self.stop.is_set() or (self.max_frames is not None and summary.frames >= self.max_frames):
                    break
        finally:
            summary.seconds = time.perf_counter() - start
            capture.stop()
            stopped_here = self.stop.is_set() or (self.max_frames is not None and summary.frames >= self.max_frames)
            summary.ended = "stopped" if stopped_here else (capture.ended or "end")
            summary.detail = capture.detail
            summary.read, summary.dropped = capture.read, capture.dropped
            summary.undecodable, summary.reconnected = capture.undecodable, capture.reconnected
            for sink in self.sinks:
                sink.close()
            if self.progress is not None:
                self.progress.update(summary, capture, stages["adapt"].median(), force=True)
                self.progress.close()
            self.checkpoint(summary)
        return summary
