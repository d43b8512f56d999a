"""The stream loop: frame -> preprocess -> backbone -> features -> adapter -> sinks.

``Stream.run(capture)`` takes frames from a ``Capture`` until it ends, ``max_frames`` are done or
``stop`` is set (the CLI sets it on SIGINT/SIGTERM). For each frame it times every stage, adapts
the adapter on the unlabelled features (or only predicts with ``adapt=False``), teaches it the
labels scheduled for that frame, and hands a ``Prediction`` to each sink. It writes a checkpoint
every ``checkpoint_every`` seconds and a final one at the end, whatever the reason for ending.

With no adapter the ImageNet head of the backbone labels the frame (the card's label names).
With a ``baseline`` adapter (a frozen copy of the source memory) each prediction also carries the
source-only label, so one pass compares source-only with adapted accuracy.

A checkpoint's ``frames`` (frames seen, over every run resumed from it) counts exactly the frames
whose effects (adaptation, teaching) are in its state: a frame is counted as soon as the adapter
has adapted on it and been taught its labels, before anything (a fleet publish, a periodic
checkpoint) can save the state. Resuming a video at frame ``frames`` therefore neither applies a
frame twice nor skips one, wherever the previous run was killed.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.adapters import Adapter
from edge_runtime.errors import InputError
from edge_runtime.model import Backbone
from edge_runtime.numerics import softmax
from edge_runtime.runtime.labels import LabelSchedule
from edge_runtime.runtime.summary import Progress, Summary
from edge_runtime.sinks import Prediction, Sink
from edge_runtime.source.capture import Capture
from edge_runtime.state import Checkpoints


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
    metrics: Any = None  # edge_runtime.runtime.metrics.Metrics when --metrics serves them
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
                # The frame's effects are in the state: every checkpoint from here on counts it
                # (the fleet may write one in step() below, before it publishes).
                summary.frames += 1
                t3 = time.perf_counter()
                ms = {
                    "decode": frame.decode_ms,
                    "preprocess": 1000 * (t1 - t0),
                    "backbone": 1000 * (t2 - t1),
                    "adapt": 1000 * (t3 - t2),
                    "sinks": sinks_ms,
                }
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
            if self.fleet is not None:
                try:
                    self.fleet.finish()  # the final exchange: peers' last updates go into the last checkpoint
                except Exception as err:  # noqa: BLE001 - whatever it was, the last checkpoint is written
                    print(f"edgert run: fleet: final exchange failed: {err}", file=sys.stderr)
            self.checkpoint(summary)
        return summary
