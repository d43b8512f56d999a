"""Capture: full reads of files, the latest-frame policy, truncated files, and a network camera that
disappears (a real MJPEG-over-HTTP stream served by the test, read by OpenCV's FFmpeg backend)."""

from __future__ import annotations

import http.server
import socketserver
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.errors import InputError
from edge_runtime.source.capture import Capture

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
pytestmark = pytest.mark.skipif(not OPENCV_DATA.is_dir(), reason="needs Debian's opencv-doc")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """30 frames of real photos, each frame's index written into its top-left pixel block."""
    path = tmp_path_factory.mktemp("capture") / "photos.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 100.0, (160, 120))
    for i, name in enumerate(["orange.jpg", "baboon.jpg", "apple.jpg"] * 10):
        frame = cv2.resize(cv2.imread(str(OPENCV_DATA / name)), (160, 120))
        frame[:16, :16] = 8 * i  # survives JPEG: identifies the frame
        writer.write(frame)
    writer.release()
    return path


def frame_id(image: np.ndarray) -> int:
    return int(round(image[4:12, 4:12].mean() / 8))


def test_a_file_is_read_in_full_in_order(video):
    with Capture(str(video), queue_size=2) as capture:
        frames = list(capture)
    assert [f.index for f in frames] == list(range(30))
    assert [frame_id(f.image) for f in frames] == list(range(30))
    assert capture.dropped == 0 and capture.ended == "end" and capture.read == 30
    assert frames[10].t == pytest.approx(0.1)


def test_latest_frame_policy_keeps_the_newest_and_counts_drops(video):
    capture = Capture(str(video), queue_size=4, realtime=True).start()
    capture._thread.join()  # the consumer is "busy": capture runs to the end meanwhile
    frames = list(capture)
    capture.stop()
    # The queue holds the end marker and the 3 newest frames; every older one was dropped and counted.
    assert [f.index for f in frames] == [27, 28, 29]
    assert capture.dropped == 27 and capture.read == 30


def test_every_keeps_one_frame_in_n(video):
    with Capture(str(video), every=4) as capture:
        assert [f.index for f in capture] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_loop_replays_a_file_until_stopped(video):
    capture = Capture(str(video), loop=True).start()
    frames = []
    for frame in capture:
        frames.append(frame.index)
        if len(frames) == 75:
            break
    capture.stop()
    assert frames == list(range(75)) and capture.loops == 2


def test_truncated_file_ends_with_a_reason(video, tmp_path):
    raw = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(raw[: len(raw) // 2])
    with Capture(str(cut)) as capture:
        n = sum(1 for _ in capture)
    assert 0 < n < 30 and capture.ended == "truncated" and capture.undecodable == 0
    assert capture.detail == f"video ended at frame {n} of the 30 in its header"


def test_missing_and_junk_files_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="cannot open video source"):
        Capture(str(tmp_path / "absent.avi"), reconnects=0).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00" * 4096)
    with pytest.raises(InputError, match="cannot open video file .*junk.avi.*unknown format, or truncated"):
        Capture(str(junk)).open()


def test_an_image_sequence_pattern_is_read_in_order(tmp_path):
    # What `edgert run --source frames/%05d.png` opens: OpenCV's printf-style image sequence.
    photos = [cv2.resize(cv2.imread(str(OPENCV_DATA / n)), (160, 120)) for n in ("orange.jpg", "baboon.jpg")]
    for i in range(1, 7):  # numbered from 1, as most exporters number them
        frame = photos[i % 2].copy()
        frame[:16, :16] = 8 * i
        assert cv2.imwrite(str(tmp_path / f"{i:05d}.png"), frame)
    with Capture(str(tmp_path / "%05d.png")) as capture:
        frames = list(capture)
    assert [frame_id(f.image) for f in frames] == [1, 2, 3, 4, 5, 6]
    assert all(f.image.shape == (120, 160, 3) for f in frames)
    np.testing.assert_array_equal(frames[2].image, cv2.imread(str(tmp_path / "00003.png")))  # lossless PNG
    assert capture.ended == "end" and capture.read == 6 and capture.undecodable == 0


def test_an_image_sequence_without_its_folder_or_first_frame_is_refused(tmp_path):
    with pytest.raises(InputError, match="no folder"):
        Capture(str(tmp_path / "absent" / "%05d.png")).open()
    cv2.imwrite(str(tmp_path / "00007.png"), np.zeros((8, 8, 3), np.uint8))  # a sequence that starts late
    with pytest.raises(InputError, match="first frame is missing .*00000.png nor 00001.png"):
        Capture(str(tmp_path / "%05d.png")).open()
    with pytest.raises(InputError, match="cannot open video source"):  # a "%" that is no frame number
        Capture(str(tmp_path / "rate_100%.avi")).open()


class MjpegCamera:
    """An MJPEG-over-HTTP camera on localhost; ``hang_up`` ends the current connection, ``unplug`` all."""

    def __init__(self, image: np.ndarray) -> None:
        self.jpeg = cv2.imencode(".jpg", cv2.resize(image, (160, 120)))[1].tobytes()
        self.hang_up = threading.Event()
        self.frames_per_connection = 10**9
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for _ in range(camera.frames_per_connection):
                        if camera.hang_up.wait(0.01):
                            break
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(camera.jpeg)
                            + camera.jpeg
                            + b"\r\n"
                        )
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def unplug(self) -> None:
        self.hang_up.set()
        self.server.shutdown()
        self.server.server_close()


def test_camera_that_drops_its_connection_is_reconnected():
    camera = MjpegCamera(cv2.imread(str(OPENCV_DATA / "orange.jpg")))
    camera.frames_per_connection = 20  # each connection ends after 20 frames; the camera stays up
    capture = Capture(camera.url, reconnects=3, backoff=0.05).start()
    frames = []
    for frame in capture:
        frames.append(frame)
        if len(frames) == 50:
            break
    capture.stop()
    camera.unplug()
    assert capture.is_live and capture.reconnected >= 2
    assert all(f.image.shape == (120, 160, 3) for f in frames)


def test_camera_that_disappears_ends_after_bounded_reconnects():
    camera = MjpegCamera(cv2.imread(str(OPENCV_DATA / "baboon.jpg")))
    capture = Capture(camera.url, reconnects=3, backoff=0.05).start()
    seen = 0
    for _ in capture:
        seen += 1
        if seen == 10:
            camera.unplug()
    capture.stop()
    assert seen >= 10 and capture.ended == "lost" and capture.reconnected == 0
    assert capture.detail == "3 reconnect attempts failed"
