"""Frames from a video file, a camera index or any capture URL/pipeline OpenCV accepts.

Capture runs ahead of inference in its own thread and hands frames over through a bounded queue.

- A file is read in full by default: the reader waits when the queue is full, nothing is dropped.
  With ``realtime`` it is paced at the file's frame rate, like a camera.
- A live source (camera, URL, pipeline) or a paced file uses the latest-frame policy: when the
  queue is full the oldest queued frame is dropped (and counted), so inference always works on
  the freshest frame and latency stays bounded.
- A frame that fails to decode is skipped and counted. A file that stops before the frame count
  in its header is reported as truncated after ``max_bad`` consecutive failures.
- A live source that fails is reopened with exponential backoff, at most ``reconnects`` times in
  a row; then the capture ends with ``ended == "lost"``. Live means a camera index, a URL or a
  GStreamer pipeline (or a ``/dev`` device); a file path that does not exist fails at once.
- An image sequence is a file name with a printf-style frame number, ``frames/%05d.png``, as
  OpenCV's image reader takes it (numbered from 0 or 1); it is checked like a file: its folder and
  its first frame must exist.
- FFmpeg's own log lines are silenced (``OPENCV_FFMPEG_LOGLEVEL``, unless already set): every
  failure is reported once, by this module, naming the file and the frames read.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Before the first capture in the process (OpenCV reads it once): a truncated MP4 would otherwise
# print "[mov,mp4,...] moov atom not found" on its own, beside our one-line message.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edge_runtime.errors import InputError  # noqa: E402

# The frame number of an image sequence's file name ("%05d", "%d"): the one form OpenCV expands.
SEQUENCE_NUMBER = re.compile(r"%\d*d")


@dataclass(frozen=True)
class Frame:
    index: int  # position in the source, counting every frame read (skipped and dropped ones too)
    t: float  # seconds: media time for a file, time since the capture started for a live source
    image: np.ndarray  # BGR uint8 (H, W, 3)
    decode_ms: float  # time the capture thread spent grabbing and decoding this frame


def parse_source(source: str | int) -> str | int:
    """``"0"`` -> camera 0; anything else stays a path, URL or pipeline string.

    >>> parse_source("0"), parse_source("clip.avi")
    (0, 'clip.avi')
    """
    if isinstance(source, int):
        return source
    return int(source) if source.strip().isdigit() else source


def sequence_first_frame(source: str) -> Path | None:
    """The first frame of an image-sequence pattern such as ``frames/%05d.png`` (number 0, else 1,
    where OpenCV's image reader starts); None when ``source`` is not such a pattern. ``InputError``
    when it is one whose folder or first frame is missing.

    >>> sequence_first_frame("clip.avi") is None, sequence_first_frame("rate_100%.avi") is None
    (True, True)
    """
    path = Path(source)
    if path.name.count("%") != 1 or not SEQUENCE_NUMBER.search(path.name):
        return None
    if not path.parent.is_dir():
        raise InputError(f"cannot open image sequence {source!r}: no folder {str(path.parent)!r}")
    candidates = [path.with_name(path.name % n) for n in (0, 1)]
    for first in candidates:
        if first.is_file():
            return first
    raise InputError(
        f"cannot open image sequence {source!r}: its first frame is missing "
        f"(neither {candidates[0].name} nor {candidates[1].name} is in {str(path.parent)!r})"
    )


def is_live_source(source: str | int) -> bool:
    """A camera index, a URL, a GStreamer pipeline or a device node: worth retrying while it is absent.

    >>> [is_live_source(s) for s in (0, "rtsp://cam/1", "v4l2src ! appsink", "/dev/video0", "clip.avi")]
    [True, True, True, True, False]
    """
    return not isinstance(source, str) or "://" in source or "!" in source or source.startswith("/dev/")


class Capture:
    """Read frames in a background thread; iterate to receive them (see the module docstring).

    ``every`` keeps one frame in N (the others are grabbed but not decoded to images); ``loop``
    reopens a file at its end (for soak runs). Counters: ``read`` frames decoded, ``dropped`` by the
    latest-frame policy, ``undecodable`` skipped, ``reconnected`` successful reopens of a live
    source; ``ended`` says why the capture stopped ("end", "truncated", "lost", "stopped").
    """

    def __init__(
        self,
        source: str | int,
        *,
        queue_size: int = 4,
        realtime: bool = False,
        every: int = 1,
        loop: bool = False,
        reconnects: int = 5,
        backoff: float = 0.5,
        max_bad: int = 25,
        live: bool | None = None,
    ) -> None:
        self.source = parse_source(source)
        self.queue_size = queue_size
        self.realtime = realtime
        self.every = every
        self.loop = loop
        self.reconnects = reconnects
        self.backoff = backoff
        self.max_bad = max_bad
        self.live = live
        self.read = 0
        self.dropped = 0
        self.undecodable = 0
        self.reconnected = 0
        self.loops = 0
        self.ended: str | None = None
        self.detail = ""
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: cv2.VideoCapture | None = None
        self.fps = 0.0
        self.frame_count = 0

    # -- opening ------------------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        return self.live if self.live is not None else is_live_source(self.source)

    def _open_once(self) -> cv2.VideoCapture | None:
        cap = cv2.VideoCapture(self.source)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def open(self) -> "Capture":
        """Open the source (retrying a live one with backoff); raises InputError if it never opens.

        After ``request_stop()`` it gives up quietly: ``ended`` is "stopped" and nothing is open.
        """
        if isinstance(self.source, str) and not self.is_live:
            first = sequence_first_frame(self.source)
            if first is None and not Path(self.source).exists():
                raise InputError(
                    f"cannot open video source {self.source!r}: no such file (a camera is an index "
                    f"such as 0, a stream a URL, an image sequence a pattern such as frames/%05d.png)"
                )
            if not os.access(first or self.source, os.R_OK):
                raise InputError(
                    f"{'image sequence frame' if first else 'video file'} not readable: {first or self.source}"
                )
        if self.every < 1:
            raise InputError(f"--every must be >= 1, got {self.every}")
        cap = None if self._stop.is_set() else self._open_once()
        attempts = 0
        while cap is None and self.is_live and attempts < self.reconnects and not self._stop.is_set():
            self._stop.wait(self.backoff * 2**attempts)
            attempts += 1
            cap = self._open_once()
        if cap is None and self._stop.is_set():
            self.ended = "stopped"
            return self
        if cap is None:
            what = "video file" if not self.is_live else "video source"
            tried = f" after {attempts} retries" if attempts else ""
            why = (
                "not a video OpenCV can read (unknown format, or truncated before its first frame; 0 frames " "read)"
                if not self.is_live
                else "the camera or stream is not there"
            )
            raise InputError(f"cannot open {what} {self.source!r}{tried}: {why}")
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return self

    def start(self) -> "Capture":
        """Start the reader thread (opening the source first if needed; not at all once stopped)."""
        if self._cap is None and not self._stop.is_set():
            self.open()
        if self._cap is not None:
            self._thread = threading.Thread(target=self._run, name="edgert-capture", daemon=True)
            self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the reader to stop (safe from a signal handler); iteration then ends promptly."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and release the source; safe to call more than once.

        A live source can block inside ``grab()`` (a stalled network stream); after ``timeout``
        seconds the daemon reader thread is abandoned rather than hanging the exit, and the
        capture it is still using is left to it.
        """
        self._stop.set()
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            while self._thread.is_alive() and time.monotonic() < deadline:
                self._drain()
                self._thread.join(timeout=0.05)
            if self._thread.is_alive():
                self._cap = None
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._drain()

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    # -- the consumer side --------------------------------------------------------------------
    def __iter__(self):
        while True:
            try:
                frame = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() and (self._thread is None or not self._thread.is_alive()):
                    return
                continue
            if frame is None:
                return
            yield frame

    # -- the capture thread -------------------------------------------------------------------
    def _put(self, item: Frame | None) -> None:
        if self.is_live or self.realtime:
            while not self._stop.is_set():
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        if self._queue.get_nowait() is not None:
                            self.dropped += 1
                    except queue.Empty:
                        pass
        else:
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

    def _reconnect(self) -> bool:
        """Reopen a live source with backoff; False once ``reconnects`` attempts have failed."""
        assert self._cap is not None
        self._cap.release()
        for attempt in range(self.reconnects):
            if self._stop.wait(self.backoff * 2**attempt):
                return False
            cap = self._open_once()
            if cap is not None:
                self._cap = cap
                self.reconnected += 1
                return True
        self._cap = cv2.VideoCapture()  # closed placeholder; release() on it is harmless
        self.detail = f"{self.reconnects} reconnect attempts failed"
        return False

    def _rewind(self) -> bool:
        assert self._cap is not None
        self._cap.release()
        cap = self._open_once()
        if cap is None:
            self._cap = cv2.VideoCapture()
            self.detail = "could not reopen the file to loop it"
            return False
        self._cap = cap
        self.loops += 1
        return True

    def _run(self) -> None:
        index = -1
        bad = 0  # consecutive failed grabs: broken frames if a good one follows, else the end
        start = time.monotonic()
        fps = self.fps if self.fps > 0 else 25.0
        position = 0  # frames grabbed in the current pass over a file
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                ok = self._cap.grab()  # type: ignore[union-attr]
                if not ok:
                    bad += 1
                    if self.is_live:
                        if self._reconnect():
                            bad = 0
                            continue
                        self.ended = "lost" if not self._stop.is_set() else "stopped"
                        break
                    if position + bad < self.frame_count and bad < self.max_bad:
                        continue  # maybe a broken frame: the demuxer resyncs on the next one
                    if position + 1 < self.frame_count:
                        self.ended = "truncated"
                        self.detail = f"video ended at frame {position} of the {self.frame_count} in its header"
                        break
                    if self.loop and position > 0 and self._rewind():
                        position, bad = 0, 0
                        continue
                    self.ended = "end"
                    break
                if bad:
                    self.undecodable += bad
                    index += bad
                    position += bad
                    bad = 0
                index += 1
                position += 1
                if index % self.every:
                    continue
                ok, image = self._cap.retrieve()  # type: ignore[union-attr]
                if not ok or image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
                    self.undecodable += 1
                    continue
                t = time.monotonic() - start if self.is_live else index / fps
                if self.realtime and not self.is_live:
                    # Pace a file like a camera: frame i is due at start + i / fps.
                    delay = start + index / fps - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                self.read += 1
                self._put(Frame(index, t, image, 1000.0 * (time.perf_counter() - t0)))
        finally:
            if self.ended is None:
                self.ended = "stopped"
            self._put(None)
            if self._stop.is_set():
                self._drain()
