"""The writer thread of a pipelined run (``Stream._run_pipelined``): source-only read-out, then sinks."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from edge_runtime.adapters import Adapter
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.runtime.summary import Ring
from edge_runtime.sinks import Prediction, Sink


class Writer:
    """The writer thread of a pipelined run: source-only read-out, then each sink, in frame order.

    ``put`` blocks while the queue is full (nothing is dropped); a sink's exception stops the
    writing, is re-raised to the frame path by the next ``put`` and returned by ``finish``.
    """

    def __init__(
        self, sinks: list[Sink], baseline: Adapter | None, classes: list[str], jobs: queue.Queue, ring: Ring
    ) -> None:
        self.sinks, self.baseline, self.classes, self.jobs, self.ring = sinks, baseline, classes, jobs, ring
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgert-writer", daemon=True)

    def start(self) -> None:
        if self.sinks:
            self._thread.start()

    def put(self, prediction: Prediction, image: np.ndarray, features: np.ndarray | None) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.jobs.put((prediction, image, features), timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> BaseException | None:
        """Write what is queued, stop the thread; the sink error, if one failed."""
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self.jobs.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        return self.error

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain, so the frame path never waits on a dead writer
            prediction, image, features = job
            t0 = time.perf_counter()
            sink = None
            try:
                if features is not None and self.baseline is not None:
                    p0 = self.baseline.predict_proba(features)
                    k0 = int(p0[0].argmax())
                    prediction.source_label, prediction.source_confidence = self.classes[k0], float(p0[0, k0])
                for sink in self.sinks:
                    sink.write(prediction, image)
            except BaseException as err:
                what = type(sink).__name__ if sink is not None else "the source-only read-out"
                where = getattr(sink, "path", None)
                if isinstance(err, EdgeRuntimeError):
                    self.error = err
                else:
                    self.error = EdgeRuntimeError(
                        f"output {what}{f' ({where})' if where else ''} failed at frame {prediction.frame}: "
                        f"{type(err).__name__}: {err}"
                    )
                    self.error.__cause__ = err
                continue
            self.ring.append(1000 * (time.perf_counter() - t0))
