"""The stream loop: frame -> preprocess -> backbone -> features -> adapter -> sinks.

``Stream.run(capture)`` takes frames from a ``Capture`` until it ends, ``max_frames`` are done or
``stop`` is set (the CLI sets it on SIGINT/SIGTERM). For each frame it times every stage, adapts
the adapter on the unlabelled features (or only predicts with ``adapt=False``), teaches it the
labels scheduled for that frame, and hands a ``Prediction`` to each sink. It writes a checkpoint
every ``checkpoint_every`` seconds and a final one at the end, whatever the reason for ending.

By default the stages run as a pipeline (``Stream._run_pipelined``): decode, preprocessing,
inference + adapter, and writing each on a thread, joined by bounded FIFO queues, in frame order.

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

import queue
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
from edge_runtime.runtime.writer import Writer
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
    # Decode, preprocessing, inference and writing on their own threads (see ``_run_pipelined``);
    # False: one loop does everything in turn. ``reference``: the serial loop with the per-pixel
    # preprocessing, i.e. the frame path before the pipeline (``edgert bench stream`` compares).
    pipeline: bool = True
    reference: bool = False
    queue_size: int = 4
    prepare_thread: bool = True  # preprocess on a thread of its own (else on the inference thread)

    def _teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        (self.fleet.teach if self.fleet is not None else self.adapter.teach)(features, labels)  # type: ignore[union-attr]

    def _account(
        self,
        summary: Summary,
        capture: Any,
        ms: dict[str, float],
        proba: np.ndarray,
        stages: dict[str, Any],
        last_checkpoint: float,
    ) -> float:
        """A frame's bookkeeping, the same in both loops: stage times, metrics, progress, and a
        checkpoint when one is due; returns when the last checkpoint was written."""
        for stage, value in ms.items():
            stages[stage].append(value)
        if self.metrics is not None:
            self.metrics.record(ms, proba, capture, self.adapter)
        if self.progress is not None:
            self.progress.update(summary, capture, ms["adapt"])
        if self.checkpoints is not None and time.monotonic() - last_checkpoint >= self.checkpoint_every:
            self.checkpoint(summary)
            return time.monotonic()
        return last_checkpoint

    def _should_stop(self, summary: Summary) -> bool:
        return self.stop.is_set() or (self.max_frames is not None and summary.frames >= self.max_frames)

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
        if self.pipeline and not self.reference:
            return self._run_pipelined(capture)
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
                prep = self.backbone.preprocessor
                batch = (prep.reference if self.reference else prep)(frame.image)
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
                last_checkpoint = self._account(summary, capture, ms, proba, stages, last_checkpoint)
                if self._should_stop(summary):
                    break
        finally:
            summary.seconds = time.perf_counter() - start
            capture.stop()
            stopped_here = self._should_stop(summary)
            summary.ended = "stopped" if stopped_here else (capture.ended or "end")
            summary.detail = capture.detail
            summary.read, summary.dropped = capture.read, capture.dropped
            summary.undecodable, summary.reconnected = capture.undecodable, capture.reconnected
            for sink in self.sinks:
                sink.close()
            if self.progress is not None:
                self.progress.update(summary, capture, stages["adapt"].median(), force=True)
                self.progress.close()
            self._finish_fleet()
            self.checkpoint(summary)
        return summary

    def _finish_fleet(self) -> None:
        """The final fleet exchange, so that peers' last updates go into the last checkpoint."""
        if self.fleet is None:
            return
        try:
            self.fleet.finish()
        except Exception as err:  # noqa: BLE001 - whatever it was, the last checkpoint is written
            print(f"edgert run: fleet: final exchange failed: {err}", file=sys.stderr)

    # -- the pipelined frame path ------------------------------------------------------------------
    def _run_pipelined(self, capture: Capture) -> Summary:
        """The loop of ``run`` with its stages on four threads joined by bounded FIFO queues.

        capture thread (``Capture``: grab + decode, its drop policy unchanged) -> preprocessing
        thread (``Preprocessor.into`` a pooled input buffer) -> this thread (backbone, adapter,
        teaching, fleet, metrics, checkpoints: everything that touches the adapter's state, in
        frame order) -> writer thread (source-only read-out, then every sink, in frame order).

        OpenCV, the Numba resize and both runtimes release the GIL, so decode, preprocessing,
        inference and video encoding overlap; the adapter's Numba kernels, JSON formatting and the
        queue hand-offs hold it. Nothing is dropped between threads: a full queue makes its
        producer wait (with ``--realtime`` or a live source the capture queue still drops the
        oldest frame, as before). A stop (signal, ``max_frames``) finishes the frame in hand;
        frames already predicted are still written; prepared but not yet inferred ones are not.
        A sink that fails stops the run with its error, raised here.
        """
        summary = Summary()
        stages = summary.stage_ms
        live = capture.is_live or capture.realtime
        prepared: queue.Queue = queue.Queue(maxsize=1 if live else self.queue_size)  # bounded: latency stays bounded
        written: queue.Queue = queue.Queue(maxsize=2 * self.queue_size)
        buffers: queue.Queue = queue.Queue()
        for _ in range(prepared.maxsize + 2):  # one being filled, the queue, one being inferred
            buffers.put(self.backbone.preprocessor.input_buffer())
        done = threading.Event()  # this thread has finished: the preprocessing thread stops
        writer = Writer(self.sinks, self.baseline, self.classes, written, summary.writer_ms)
        preparer = threading.Thread(
            target=self._prepare, args=(capture, prepared, buffers, done), name="edgert-preprocess", daemon=True
        )
        sinks_ms = 0.0
        start = time.perf_counter()
        last_checkpoint = time.monotonic()
        if self.fleet is not None and self.checkpoints is not None:
            self.fleet.persist = lambda: self.checkpoint(summary)
        if self.prepare_thread:
            preparer.start()
        writer.start()
        completed = False
        try:
            items = self._from_queue(prepared) if self.prepare_thread else self._inline(capture)
            for frame, batch, prep_ms in items:
                t1 = time.perf_counter()
                features, logits = self.backbone.run(batch)
                t2 = time.perf_counter()
                if self.prepare_thread:
                    buffers.put(batch)
                proba = self._predict(features, logits)
                k = int(proba[0].argmax())
                taught = None
                if self.labels is not None and self.adapter is not None:
                    for label in self.labels.due(frame):
                        self._teach(features, np.array([label]))
                        taught = self.classes[label]
                        summary.taught += 1
                summary.frames += 1  # the frame's effects are in the state (see the module docstring)
                t3 = time.perf_counter()
                ms = {
                    "decode": frame.decode_ms,
                    "preprocess": prep_ms,
                    "backbone": 1000 * (t2 - t1),
                    "adapt": 1000 * (t3 - t2),
                    "sinks": sinks_ms,
                }
                prediction = Prediction(frame.index, frame.t, self.classes[k], float(proba[0, k]), ms, taught=taught)
                if self.sinks:
                    writer.put(prediction, frame.image, features if self.baseline is not None else None)
                if self.fleet is not None:
                    self.fleet.step()
                sinks_ms = 1000 * (time.perf_counter() - t3)
                last_checkpoint = self._account(summary, capture, ms, proba, stages, last_checkpoint)
                if self._should_stop(summary):
                    break
            completed = True
        finally:
            done.set()
            capture.stop()
            if preparer.is_alive():
                preparer.join()
            error = writer.finish()  # writes every prediction handed over, unless a sink failed
            summary.seconds = time.perf_counter() - start
            stopped_here = self._should_stop(summary)
            summary.ended = "stopped" if stopped_here else (capture.ended or "end")
            summary.detail = capture.detail
            summary.read, summary.dropped = capture.read, capture.dropped
            summary.undecodable, summary.reconnected = capture.undecodable, capture.reconnected
            try:
                for sink in self.sinks:
                    sink.close()
            finally:
                if self.progress is not None:
                    self.progress.update(summary, capture, stages["adapt"].median(), force=True)
                    self.progress.close()
                self._finish_fleet()
                self.checkpoint(summary)
            if error is not None and completed:
                raise error
        return summary

    def _from_queue(self, prepared: queue.Queue):
        """(frame, input batch, preprocess ms) from the preprocessing thread, until it ends or a stop."""
        while not self.stop.is_set():
            try:
                item = prepared.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _inline(self, capture: Capture):
        """(frame, input batch, preprocess ms), preprocessed here into one preallocated input."""
        preprocessor = self.backbone.preprocessor
        batch = preprocessor.input_buffer()
        for frame in capture:
            if self.stop.is_set():
                return
            t0 = time.perf_counter()
            preprocessor.into(frame.image, batch)
            yield frame, batch, 1000 * (time.perf_counter() - t0)

    def _prepare(self, capture: Capture, prepared: queue.Queue, buffers: queue.Queue, done: threading.Event) -> None:
        """The preprocessing thread: frames from the capture into pooled input buffers, in order."""

        def put(item: Any) -> bool:
            while not done.is_set():
                try:
                    prepared.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        preprocessor = self.backbone.preprocessor
        try:
            for frame in capture:
                batch = None
                while batch is None and not done.is_set():
                    try:
                        batch = buffers.get(timeout=0.1)
                    except queue.Empty:
                        pass
                if batch is None:
                    return
                t0 = time.perf_counter()
                preprocessor.into(frame.image, batch)
                if not put((frame, batch, 1000 * (time.perf_counter() - t0))):
                    return
        except BaseException as err:  # a frame the preprocessor refuses: the run ends with its error
            put(err)
            return
        put(None)
