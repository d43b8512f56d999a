"""``edgert run --fleet`` end to end: checkpoint semantics across kill -9, and the final exchange.

Real videos written here with OpenCV from Debian's opencv-doc photos (MJPG: every frame is coded
on its own, so a video cut at frame N decodes to the same frames as the original from N on), the
real int8 backbone, a real Mosquitto on loopback, ``edgert run`` as separate processes.

- **Checkpoint semantics**: "frames seen" (``meta["frames"]``) counts exactly the frames whose
  effects are in the checkpointed state. With every frame taught, a checkpoint that says N frames
  holds exactly N taught frames, whenever it was written (periodically, at a publish, at exit);
  a run killed with SIGKILL at any frame and resumed on the video from frame N ends with counts
  equal to one uninterrupted run.
- **Final exchange**: devices whose streams end together each save, in their last checkpoint,
  every peer's taught frames (``--fleet-final-wait``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main as edgert
from edge_runtime.fleet.broker import Broker, write_private
from edge_runtime.state import Checkpoints, read_state

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
PHOTOS = {"orange": "orange.jpg", "baboon": "baboon.jpg", "squirrel": "squirrel_cls.jpg", "butterfly": "butterfly.jpg"}
KEY = bytes(range(32))
FPS = 16.0

pytestmark = pytest.mark.skipif(not OPENCV_DATA.is_dir(), reason="needs Debian's opencv-doc")


def crop(image: np.ndarray, fx: float, fy: float, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = int(h * scale), int(w * scale)
    y, x = int((h - ch) * fy), int((w - cw) * fx)
    return image[y : y + ch, x : x + cw]


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_labels(path: Path, truth: list[str]) -> Path:
    """Every frame taught its true label."""
    path.write_text("".join(json.dumps({"frame": i, "label": name}) + "\n" for i, name in enumerate(truth)))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory, exported) -> dict:
    root = tmp_path_factory.mktemp("fleet-run")
    rng = np.random.default_rng(3)
    frames, truth = [], []
    for name, file in PHOTOS.items():
        photo = cv2.imread(str(OPENCV_DATA / file))
        (root / "source" / name).mkdir(parents=True)
        for i, (fx, fy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]):
            cv2.imwrite(str(root / "source" / name / f"{i}.png"), crop(photo, fx, fy, 0.8))
        for _ in range(40):
            view = crop(photo, rng.uniform(), rng.uniform(), rng.uniform(0.7, 0.95))
            view = cv2.convertScaleAbs(view, alpha=rng.uniform(0.7, 1.2), beta=rng.uniform(-30, 30))
            frames.append(cv2.resize(view, (224, 168), interpolation=cv2.INTER_AREA))
            truth.append(name)
    order = rng.permutation(len(frames))  # classes interleaved, as a shop camera sees them
    frames, truth = [frames[i] for i in order], [truth[i] for i in order]
    model = exported["int8.onnx"]
    memory = root / "ncm.npz"
    assert (
        edgert(
            [
                "memory",
                "build",
                "--model",
                str(model),
                "--images",
                str(root / "source"),
                "--adapter",
                "ncm",
                "--out",
                str(memory),
            ]
        )
        == 0
    )
    names = ["d0", "d1", "d2", "d3"]
    with Broker(root / "broker", "shop", names) as broker:
        yield {
            "root": root,
            "frames": frames,
            "truth": truth,
            "model": model,
            "memory": memory,
            "classes": list(read_state(memory).classes),
            "broker": broker,
            "key": write_private(root / "fleet.key", KEY.hex() + "\n"),
        }


def run_command(scene: dict, video: Path, labels: Path, state: Path, device: str, fleet: str, *extra: str) -> list[str]:
    broker = scene["broker"]
    return [
        sys.executable,
        "-m",
        "edge_runtime.cli",
        "run",
        "--source",
        str(video),
        "--model",
        str(scene["model"]),
        "--adapter",
        "ncm",
        "--memory",
        str(scene["memory"]),
        "--labels",
        str(labels),
        "--state",
        str(state),
        "--quiet",
        "--fleet",
        broker.url_for(fleet),
        "--fleet-device",
        device,
        "--fleet-key",
        str(scene["key"]),
        "--fleet-password-file",
        str(broker.password_file(device)),
        *extra,
    ]


def taught(scene: dict, adapter) -> np.ndarray:
    """Taught frames per class held by an adapter's state (its counts minus the source memory's)."""
    base = read_state(scene["memory"]).adapter.statistics()["source"][0, :, 0]
    return adapter.statistics()["source"][0, :, 0] - base


def expected(scene: dict, truth: list[str]) -> np.ndarray:
    return np.array([truth.count(name) for name in scene["classes"]], np.float64)


def newest(scene: dict, state: Path):
    sha = read_state(scene["memory"]).header["model_sha256"]
    with Checkpoints(state, sha, "ncm") as checkpoints:
        return checkpoints.load()


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    while not (path.is_file() and len(path.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def own(checkpoint) -> np.ndarray:
    """Frames per class a device was taught itself, from its checkpoint's ledger."""
    return (checkpoint.extra["fleet.own.source"] + checkpoint.extra["fleet.pending.source"])[0, :, 0]


def test_resume_after_kill_9_at_any_frame_teaches_every_frame_exactly_once(scene, tmp_path):
    """Several SIGKILLs, each at another frame after the run's first publish (whose checkpoint
    is then the newest); every checkpoint found holds exactly the frames it says it has seen, and
    the resumed runs end with every frame taught once. Not --realtime: no frame may be dropped,
    so that frame N of the stream is frame N of the video."""
    frames, truth = scene["frames"], scene["truth"]
    state, start, checked = tmp_path / "state", 0, 0
    for run, kill_after in enumerate((3, 0, 7, None)):
        video = write_video(tmp_path / f"from{start}.avi", frames[start:])
        labels = write_labels(tmp_path / f"from{start}.jsonl", truth[start:])
        out = tmp_path / f"run{run}.jsonl"
        command = run_command(scene, video, labels, state, "d0", "resume", "--out", str(out))
        before = set(state.glob("checkpoint-*")) if state.is_dir() else set()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kill_after is not None:
            while not (set(state.glob("checkpoint-*")) - before if state.is_dir() else False):
                assert proc.poll() is None, proc.communicate()  # the video must outlast a publish
                time.sleep(0.01)
            wait_for_lines(out, len(out.read_text().splitlines()) + kill_after, proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        else:
            _, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr
        checkpoint = newest(scene, state)
        if checkpoint is None:  # killed before its first checkpoint: start over
            continue
        seen = int(checkpoint.meta["frames"])
        # the state holds exactly the frames it says it has seen: no more (taught twice on resume), no less
        np.testing.assert_array_equal(taught(scene, checkpoint.adapter), expected(scene, truth[:seen]))
        np.testing.assert_array_equal(own(checkpoint), expected(scene, truth[:seen]))
        checked += seen > start
        start = seen
    assert start == len(frames) and checked == 4


def three_devices(
    scene: dict, tmp_path: Path, fleet: str, *extra: str
) -> tuple[list[subprocess.Popen], list[Path], list[list[str]], list[Path]]:
    """Three ``edgert run --fleet`` processes started together, each on its third of the video."""
    frames, truth = scene["frames"], scene["truth"]
    procs, states, truths, outs = [], [], [], []
    for i, device in enumerate(("d1", "d2", "d3")):
        part = slice(i * len(frames) // 3, (i + 1) * len(frames) // 3)
        video = write_video(tmp_path / f"{device}.avi", frames[part])
        labels = write_labels(tmp_path / f"{device}.jsonl", truth[part])
        states.append(tmp_path / f"{device}.state")
        outs.append(tmp_path / f"{device}.out.jsonl")
        truths.append(truth[part])
        procs.append(
            subprocess.Popen(
                run_command(
                    scene, video, labels, states[-1], device, fleet, "--realtime", "--out", str(outs[-1]), *extra
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs, states, truths, outs


def test_after_the_streams_end_every_saved_state_holds_every_peers_taught_frames(scene, tmp_path):
    procs, states, truths, _ = three_devices(scene, tmp_path, "final", "--fleet-final-wait", "30")
    for proc in procs:
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
    # --realtime may drop a frame on a busy machine: what each device was taught is in its ledger
    checkpoints = [newest(scene, state) for state in states]
    assert all(own(c).sum() >= len(truth) // 2 for c, truth in zip(checkpoints, truths))
    everything = sum(own(c) for c in checkpoints)
    for checkpoint in checkpoints:
        np.testing.assert_array_equal(taught(scene, checkpoint.adapter), everything)


def test_sigterm_runs_the_final_exchange_before_the_last_save(scene, tmp_path):
    procs, states, truths, outs = three_devices(scene, tmp_path, "sigterm", "--fleet-final-wait", "30")
    for proc, out in zip(procs, outs):
        wait_for_lines(out, 12, proc)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
    checkpoints = [newest(scene, state) for state in states]
    seen = [int(c.meta["frames"]) for c in checkpoints]
    assert all(12 <= n < len(truth) for n, truth in zip(seen, truths))
    everything = sum(own(c) for c in checkpoints)
    for checkpoint in checkpoints:
        np.testing.assert_array_equal(taught(scene, checkpoint.adapter), everything)
