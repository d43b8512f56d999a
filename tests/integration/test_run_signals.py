"""``edgert run`` at its edges, as a real process: a signal in the first seconds, a path that is not
there, a truncated video, features at the edge of float32.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.adapters.base import as_features
from edge_runtime.adapters.ncm import NCM
from edge_runtime.model.card import load_card
from edge_runtime.state import read_state, write_state


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", *args]


def _video(path: Path, frames: int = 30, fourcc: str = "MJPG") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (96, 72))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.fixture()
def memory(tmp_path: Path, exported) -> tuple[Path, Path]:
    """(model, memory): an NCM memory for the default int8 model, fitted on random features."""
    model = exported["int8.tflite"]
    x = np.random.default_rng(1).normal(size=(6, 1280)).astype(np.float32)
    path = write_state(
        tmp_path / "memory.npz",
        NCM().fit(x, np.arange(6) % 3),
        kind="memory",
        model_sha256=load_card(model).sha256,
        classes=["a", "b", "c"],
    )
    return model, path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_model_loads_ends_cleanly_with_checkpoint_and_summary(tmp_path, memory, signum):
    model, path = memory
    state = tmp_path / "state"
    proc = subprocess.Popen(
        _cli(
            "run",
            "--source",
            str(_video(tmp_path / "v.avi")),
            "--model",
            str(model),
            "--adapter",
            "ncm",
            "--memory",
            str(path),
            "--state",
            str(state),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr.readline().startswith("edgert run: loading")  # handlers are in place from here on
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "ended: stopped" in stdout and "1 checkpoint(s) written" in stdout
    assert f"stopped by {signum.name}" in stderr
    (checkpoint,) = state.glob("checkpoint-*.npz")
    assert read_state(checkpoint).adapter.n_classes == 3


def test_a_video_path_that_does_not_exist_fails_at_once(tmp_path, memory):
    model, path = memory
    done = subprocess.run(
        _cli(
            "run",
            "--source",
            str(tmp_path / "absent.avi"),
            "--model",
            str(model),
            "--adapter",
            "ncm",
            "--memory",
            str(path),
            "--quiet",
            "--reconnects",
            "5",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last == f"edgert run: error: cannot open video source '{tmp_path / 'absent.avi'}': no such file "
        f"(a camera is an index such as 0, a stream a URL, an image sequence a pattern such as frames/%05d.png)"
    )
    assert "retries" not in done.stderr


@pytest.mark.parametrize("fourcc, suffix, cut", [("MJPG", ".avi", 0.6), ("mp4v", ".mp4", 0.5)])
def test_a_truncated_video_ends_with_one_line_naming_the_file_and_frames(tmp_path, memory, fourcc, suffix, cut):
    model, path = memory
    whole = _video(tmp_path / f"whole{suffix}", fourcc=fourcc)
    raw = whole.read_bytes()
    truncated = tmp_path / f"cut{suffix}"
    truncated.write_bytes(raw[: int(len(raw) * cut)])
    done = subprocess.run(
        _cli(
            "run",
            "--source",
            str(truncated),
            "--model",
            str(model),
            "--adapter",
            "ncm",
            "--memory",
            str(path),
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not any(line.startswith("[") for line in done.stderr.splitlines()), done.stderr  # FFmpeg's "[mov @ 0x..]"
    lines = [line for line in done.stderr.splitlines() if str(truncated) in line]
    assert len(lines) == 1, done.stderr
    if suffix == ".avi":  # an AVI keeps its frames up to the cut
        assert done.returncode == 0 and "is truncated: video ended at frame" in lines[0] and "frames read" in lines[0]
    else:  # an MP4 without its index cannot be opened at all
        assert done.returncode == 2 and "0 frames read" in lines[0]


def test_features_near_float32_max_normalise_without_overflow() -> None:
    x = np.zeros((2, 1280), np.float32)
    x[0, :2] = 3e38, -3e38
    x[1, 7] = 3.4e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would be an error here
        out = as_features(x)
    np.testing.assert_allclose(out[0, :2], [2**-0.5, -(2**-0.5)], rtol=1e-6)
    assert out[1, 7] == 1.0 and np.isfinite(out).all()
    with pytest.raises(ValueError, match="row 0 holds NaN or inf"):
        as_features(np.array([[1.0, np.inf]], np.float32))
