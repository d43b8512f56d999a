"""The pipelined frame path: order, completeness, drops, shutdown and sink failures, on a real video.

A recording sink keeps (frame index, label, a checksum of the image it was handed); the pipelined
run must hand it exactly what the one-loop path (``Stream(reference=True)``) does, in order.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.runtime.shutdown import Shutdown
from edge_runtime.runtime.stream import Stream
from edge_runtime.sinks import JsonlSink
from edge_runtime.source.capture import Capture

VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

pytestmark = pytest.mark.skipif(not VIDEO.is_file(), reason="needs opencv-doc's vtest.avi")


class Recorder:
    """A sink that records what it is handed; optionally slow, failing or signalling at a frame."""

    def __init__(
        self,
        delay: float = 0.0,
        fail_at: int | None = None,
        error: Exception | None = None,
        on_frame: tuple[int, object] | None = None,
    ) -> None:
        self.rows: list[tuple[int, str, float, int]] = []
        self.delay, self.fail_at, self.error, self.on_frame = delay, fail_at, error, on_frame
        self.closed = False

    def write(self, prediction, image: np.ndarray) -> None:
        if self.fail_at is not None and len(self.rows) == self.fail_at:
            raise self.error or OSError(28, "No space left on device")
        if self.delay:
            time.sleep(self.delay)
        self.rows.append(
            (
                prediction.frame,
                prediction.label,
                round(prediction.confidence, 6),
                zlib.crc32(np.ascontiguousarray(image)),
            )
        )
        if self.on_frame is not None and len(self.rows) == self.on_frame[0]:
            self.on_frame[1]()

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def backbone(exported: dict[str, Path]):
    from edge_runtime.model import load_backbone

    return load_backbone(exported["int8.tflite"], threads=2)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """60 frames of vtest.avi (768x576) at 50 fps: a real non-integer shrink in preprocessing."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    capture = cv2.VideoCapture(str(VIDEO))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (768, 576))
    for _ in range(60):
        ok, frame = capture.read()
        assert ok
        writer.write(frame)
    writer.release()
    capture.release()
    return path


def classes(backbone) -> list[str]:
    return [name.split(",")[0] for name in backbone.card.labels]


def no_pipeline_threads() -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("edgert-") and t.is_alive()]:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("prepare_thread", [True, False])
def test_pipeline_keeps_order_and_delivers_every_frame(backbone, video, prepare_thread):
    serial, piped = Recorder(), Recorder(delay=0.004)  # a slow writer: the queues fill and wait
    one = Stream(backbone, None, classes(backbone), [serial], reference=True).run(Capture(str(video)).start())
    two = Stream(backbone, None, classes(backbone), [piped], queue_size=2, prepare_thread=prepare_thread).run(
        Capture(str(video)).start()
    )
    assert one.frames == two.frames == 60 and two.dropped == 0 and two.ended == "end"
    assert [r[0] for r in piped.rows] == list(range(60))
    assert piped.rows == serial.rows  # same frames, same images, same predictions, same order
    assert piped.closed and two.writer_ms.count == 60
    assert no_pipeline_threads()


def test_realtime_drops_only_at_the_capture_and_keeps_order(backbone, video):
    sink = Recorder(delay=0.05)  # 20 fps of writing against a 50 fps source paced in real time
    summary = Stream(backbone, None, classes(backbone), [sink]).run(Capture(str(video), realtime=True).start())
    indices = [r[0] for r in sink.rows]
    assert summary.dropped > 0
    assert summary.read == summary.frames + summary.dropped  # nothing lost between the threads
    assert len(indices) == summary.frames and indices == sorted(indices) and len(set(indices)) == len(indices)


def test_max_frames_and_sigterm_finish_cleanly_and_write_what_was_predicted(backbone, video, tmp_path):
    jsonl = tmp_path / "out.jsonl"
    stream = Stream(backbone, None, classes(backbone), [], max_frames=7)
    sink = Recorder()
    stream.sinks = [sink, JsonlSink(jsonl)]
    summary = stream.run(Capture(str(video)).start())
    assert summary.frames == 7 and summary.ended == "stopped" and [r[0] for r in sink.rows] == list(range(7))
    assert len(jsonl.read_text().splitlines()) == 7

    capture = Capture(str(video))
    stream = Stream(backbone, None, classes(backbone), [])
    sink = Recorder(delay=0.01, on_frame=(10, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    stream.sinks = [sink]
    with Shutdown() as shutdown:
        shutdown.on_request(capture.request_stop)
        shutdown.on_request(stream.stop.set)
        summary = stream.run(capture.start())
    assert shutdown.signal_name == "SIGTERM" and summary.ended == "stopped"
    assert 10 <= summary.frames < 60
    assert [r[0] for r in sink.rows] == list(range(summary.frames))  # every predicted frame was written
    assert sink.closed and no_pipeline_threads()


def test_a_failing_sink_stops_the_run_with_a_clear_error(backbone, video, tmp_path):
    sink, after = Recorder(fail_at=5), Recorder()
    stream = Stream(backbone, None, classes(backbone), [sink, after])
    with pytest.raises(EdgeRuntimeError, match=r"output Recorder failed at frame 5: OSError: .*No space left"):
        stream.run(Capture(str(video)).start())
    assert [r[0] for r in sink.rows] == list(range(5)) and sink.closed and after.closed
    assert no_pipeline_threads()

    # An error of ours (one line for the CLI) comes through as it is.
    sink = Recorder(fail_at=0, error=InputError("cannot write video /x.mp4 with codec mp4v"))
    with pytest.raises(InputError, match="cannot write video /x.mp4"):
        Stream(backbone, None, classes(backbone), [sink]).run(Capture(str(video)).start())
    assert no_pipeline_threads()


def test_a_frame_the_preprocessor_refuses_ends_the_run_with_its_error(backbone, video, monkeypatch):
    calls = []
    original = backbone.preprocessor.into

    def into(frame, out=None):
        calls.append(1)
        if len(calls) == 3:
            raise InputError("frame must be uint8, got float32")
        return original(frame, out)

    monkeypatch.setattr(backbone.preprocessor, "into", into)
    sink = Recorder()
    with pytest.raises(InputError, match="must be uint8"):
        Stream(backbone, None, classes(backbone), [sink]).run(Capture(str(video)).start())
    assert [r[0] for r in sink.rows] == [0, 1] and no_pipeline_threads()
