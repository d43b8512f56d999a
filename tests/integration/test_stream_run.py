"""``edgert run`` and ``edgert memory build`` end to end on real videos written by the test.

The videos are written with OpenCV from real photographs (Debian's opencv-doc), shifted in
framing and brightness; opencv-doc's vtest.avi is streamed too when present. Runs go through the
real int8 backbone from the session's export.
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
from edge_runtime.state import Checkpoints, read_state

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST = OPENCV_DATA / "vtest.avi"
PHOTOS = {"orange": "orange.jpg", "baboon": "baboon.jpg", "squirrel": "squirrel_cls.jpg", "butterfly": "butterfly.jpg"}
PER_CLASS = 10

pytestmark = pytest.mark.skipif(not OPENCV_DATA.is_dir(), reason="needs Debian's opencv-doc")


def crop(image: np.ndarray, fx: float, fy: float, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = int(h * scale), int(w * scale)
    y, x = int((h - ch) * fy), int((w - cw) * fx)
    return image[y : y + ch, x : x + cw]


def shifted_frames(seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """PER_CLASS frames per photo: random crops, brightness and contrast changes, 320x240."""
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for name, file in PHOTOS.items():
        photo = cv2.imread(str(OPENCV_DATA / file))
        for _ in range(PER_CLASS):
            view = crop(photo, rng.uniform(), rng.uniform(), rng.uniform(0.7, 0.95))
            view = cv2.convertScaleAbs(view, alpha=rng.uniform(0.7, 1.2), beta=rng.uniform(-30, 30))
            frames.append(cv2.resize(view, (320, 240), interpolation=cv2.INTER_AREA))
            truth.append(name)
    return frames, truth


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scene(tmp_path_factory, exported) -> dict:
    """A source memory (folder of real photo crops) and a shifted video of the same classes."""
    root = tmp_path_factory.mktemp("scene")
    for name, file in PHOTOS.items():
        photo = cv2.imread(str(OPENCV_DATA / file))
        (root / "source" / name).mkdir(parents=True)
        for i, (fx, fy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]):
            view = crop(photo, fx, fy, 0.8)
            cv2.imwrite(str(root / "source" / name / f"{i}.png"), view)
            cv2.imwrite(str(root / "source" / name / f"{i}-flip.png"), cv2.flip(view, 1))
    frames, truth = shifted_frames()
    video = write_video(root / "shifted.avi", frames)
    model = exported["int8.onnx"]
    memories = {}
    for adapter in ("ncm", "memflow"):
        memories[adapter] = root / f"{adapter}.npz"
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
                    adapter,
                    "--out",
                    str(memories[adapter]),
                ]
            )
            == 0
        )
    return {"root": root, "video": video, "truth": truth, "frames": frames, "model": model, "memories": memories}


def run(scene: dict, tmp: Path, *extra: str, adapter: str = "ncm", source: Path | None = None) -> int:
    args = [
        "run",
        "--source",
        str(source or scene["video"]),
        "--model",
        str(scene["model"]),
        "--adapter",
        adapter,
        "--quiet",
        *extra,
    ]
    if adapter != "none" and "--memory" not in extra:
        args += ["--memory", str(scene["memories"][adapter])]
    return edgert(args)


@pytest.mark.parametrize("adapter", ["ncm", "memflow"])
def test_run_streams_a_real_video_and_resumes_from_its_state(scene, tmp_path, adapter):
    out, video_out, summary, state = (
        tmp_path / "p.jsonl",
        tmp_path / "annotated.avi",
        tmp_path / "s.json",
        tmp_path / "state",
    )
    n = len(scene["truth"])
    assert (
        run(
            scene,
            tmp_path,
            "--out",
            str(out),
            "--video-out",
            str(video_out),
            "--json",
            str(summary),
            "--state",
            str(state),
            "--compare",
            adapter=adapter,
        )
        == 0
    )
    rows = read_jsonl(out)
    assert [r["frame"] for r in rows] == list(range(n))
    accuracy = np.mean([r["label"] == t for r, t in zip(rows, scene["truth"])])
    source_accuracy = np.mean([r["source_label"] == t for r, t in zip(rows, scene["truth"])])
    assert accuracy >= 0.9 and source_accuracy >= 0.9, (accuracy, source_accuracy)
    assert all(set(r["ms"]) == {"decode", "preprocess", "backbone", "adapt", "sinks"} for r in rows)
    report = json.loads(summary.read_text())
    assert report["frames"] == n and report["dropped"] == 0 and report["ended"] == "end"
    annotated = cv2.VideoCapture(str(video_out))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    ok, first = annotated.read()
    annotated.release()
    assert ok and first.shape == scene["frames"][0].shape
    # The label band is drawn over the top of the frame: it differs from the source frame there only.
    diff = np.abs(first.astype(int) - scene["frames"][0].astype(int)).mean(axis=(1, 2))
    assert diff[:20].mean() > 20 > diff[60:].mean()

    sha = read_state(scene["memories"][adapter]).header["model_sha256"]
    with Checkpoints(state, sha, adapter) as checkpoints:
        saved = checkpoints.load()
    assert saved is not None and saved.meta["frames"] == n and saved.classes == sorted(PHOTOS)
    # The second run resumes from the checkpoint, not the memory, and counts on from it.
    assert run(scene, tmp_path, "--state", str(state), "--max-frames", "5", adapter=adapter) == 0
    with Checkpoints(state, sha, adapter) as checkpoints:
        assert checkpoints.load().meta["frames"] == n + 5


def test_every_and_max_frames(scene, tmp_path):
    out = tmp_path / "p.jsonl"
    assert run(scene, tmp_path, "--out", str(out), "--every", "3", "--max-frames", "5", "--no-adapt") == 0
    assert [r["frame"] for r in read_jsonl(out)] == [0, 3, 6, 9, 12]


@pytest.mark.skipif(not VTEST.is_file(), reason="opencv-doc's vtest.avi is absent")
def test_vtest_through_the_imagenet_head(scene, tmp_path):
    out, summary = tmp_path / "p.jsonl", tmp_path / "s.json"
    assert (
        run(
            scene,
            tmp_path,
            "--out",
            str(out),
            "--json",
            str(summary),
            "--max-frames",
            "40",
            adapter="none",
            source=VTEST,
        )
        == 0
    )
    rows = read_jsonl(out)
    assert len(rows) == 40 and json.loads(summary.read_text())["ended"] == "stopped"
    labels = {r["label"] for r in rows}
    # A street scene seen from above: whatever the head says, it is an ImageNet name, and steady.
    assert len(labels) <= 10 and all(0 < r["confidence"] <= 1 for r in rows)


def test_labels_teach_the_adapter(scene, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"frame": 0, "label": "orange"}\n{"t": 1.05, "label": "baboon"}\n')
    out = tmp_path / "p.jsonl"
    assert run(scene, tmp_path, "--labels", str(labels), "--out", str(out)) == 0
    taught = [(r["frame"], r["taught"]) for r in read_jsonl(out) if "taught" in r]
    assert taught == [(0, "orange"), (11, "baboon")]  # t = 1.05 s at 10 fps is due on frame 11
    labels.write_text('{"frame": 0, "label": "zebra"}\n')
    assert run(scene, tmp_path, "--labels", str(labels)) == 2


def test_truncated_video_is_streamed_up_to_the_cut(scene, tmp_path, capsys):
    raw = scene["video"].read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(raw[: len(raw) * 6 // 10])
    out = tmp_path / "p.jsonl"
    assert run(scene, tmp_path, "--out", str(out), source=truncated) == 0
    rows = read_jsonl(out)
    assert 0 < len(rows) < len(scene["truth"])
    assert [r["frame"] for r in rows] == list(range(len(rows)))
    assert "is truncated: video ended at frame" in capsys.readouterr().err


def test_a_frame_that_fails_to_decode_is_skipped_and_counted(scene, tmp_path):
    raw = bytearray(scene["video"].read_bytes())
    chunks = [i for i in range(len(raw) - 4) if raw[i : i + 4] == b"00dc"]
    start = chunks[20] + 8 + 200  # inside the JPEG data of frame 20 (the first 00dc is the stream header)
    raw[start : start + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(raw))
    out, summary = tmp_path / "p.jsonl", tmp_path / "s.json"
    assert run(scene, tmp_path, "--out", str(out), "--json", str(summary), source=broken) == 0
    report = json.loads(summary.read_text())
    frames = [r["frame"] for r in read_jsonl(out)]
    assert report["undecodable"] == 1 and report["ended"] == "end"
    assert len(frames) == len(scene["truth"]) - 1 and frames[-1] == len(scene["truth"]) - 1


def test_unreadable_video_and_missing_memory_are_one_line_errors(scene, tmp_path, capsys):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert run(scene, tmp_path, source=junk) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgert run: error: cannot open video file") and "junk.avi" in err[-1]
    assert edgert(["run", "--source", str(scene["video"]), "--model", str(scene["model"]), "--adapter", "ncm"]) == 2
    assert "no --memory FILE" in capsys.readouterr().err


def test_memory_for_another_model_is_refused(scene, exported, capsys):
    assert (
        edgert(
            [
                "run",
                "--source",
                str(scene["video"]),
                "--model",
                str(exported["int8.tflite"]),
                "--adapter",
                "ncm",
                "--memory",
                str(scene["memories"]["ncm"]),
                "--quiet",
            ]
        )
        == 2
    )
    assert "was made for model sha256" in capsys.readouterr().err


def test_corrupt_checkpoint_is_named_and_the_previous_one_used(scene, tmp_path, capsys):
    state = tmp_path / "state"
    assert run(scene, tmp_path, "--state", str(state), "--max-frames", "3") == 0
    assert run(scene, tmp_path, "--state", str(state), "--max-frames", "4") == 0
    previous, newest = sorted(state.glob("checkpoint-*.npz"))
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    capsys.readouterr()
    assert run(scene, tmp_path, "--state", str(state), "--max-frames", "1") == 0
    err = capsys.readouterr().err
    assert f"skipped state file: {newest}" in err and "corrupt" in err
    assert f"resuming from {previous} (3 frames seen before)" in err


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", *args]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Block until the predictions file has n lines (the run writes them line-buffered)."""
    while not (path.is_file() and len(path.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)  # a poll interval, not a timing assumption


def test_sigterm_writes_a_final_checkpoint_and_exits_cleanly(scene, tmp_path):
    out, state = tmp_path / "p.jsonl", tmp_path / "state"
    proc = subprocess.Popen(
        cli(
            "run",
            "--source",
            str(scene["video"]),
            "--model",
            str(scene["model"]),
            "--adapter",
            "ncm",
            "--memory",
            str(scene["memories"]["ncm"]),
            "--state",
            str(state),
            "--out",
            str(out),
            "--realtime",
            "--quiet",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "ended: stopped" in stdout and "1 checkpoint(s) written" in stdout
    done = len(read_jsonl(out))
    assert 3 <= done < len(scene["truth"])
    with Checkpoints(state, read_state(scene["memories"]["ncm"]).header["model_sha256"], "ncm") as checkpoints:
        assert checkpoints.load().meta["frames"] == done


def test_kill_9_while_checkpointing_every_frame_then_restart_resumes(scene, tmp_path):
    out, state = tmp_path / "p.jsonl", tmp_path / "state"
    base = (
        "run",
        "--source",
        str(scene["video"]),
        "--model",
        str(scene["model"]),
        "--adapter",
        "ncm",
        "--memory",
        str(scene["memories"]["ncm"]),
        "--state",
        str(state),
        "--quiet",
    )
    proc = subprocess.Popen(
        cli(*base, "--out", str(out), "--checkpoint-every", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(out, 12, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    restart = subprocess.run(cli(*base, "--max-frames", "1"), capture_output=True, text=True, timeout=120)
    assert restart.returncode == 0, restart.stderr
    assert "resuming from" in restart.stderr and "skipped state file" not in restart.stderr


def bench(module: str, *args: str) -> int:
    """Run an ``edgert bench`` subcommand through its own parser (the module's configure/main)."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).configure(parser)
    parsed = parser.parse_args(list(args))
    return parsed.main(parsed)


def test_bench_stream_reports_the_required_fields(scene, tmp_path):
    result = tmp_path / "stream.json"
    assert (
        bench(
            "edge_runtime.bench.stream",
            "--model",
            str(scene["model"]),
            "--video",
            str(scene["video"]),
            "--adapter",
            "memflow",
            "--memory",
            str(scene["memories"]["memflow"]),
            "--json",
            str(result),
        )
        == 0
    )
    report = json.loads(result.read_text())
    assert report["frames"] == len(scene["truth"]) and report["dropped"] == 0 and report["fps"] > 0
    assert set(report["p50_ms"]) == {"decode", "preprocess", "backbone", "adapt", "sinks"}


def test_bench_soak_replays_the_video_without_leaking_file_handles(scene, tmp_path):
    result = tmp_path / "soak.json"
    assert (
        bench(
            "edge_runtime.bench.soak",
            "--model",
            str(scene["model"]),
            "--video",
            str(scene["video"]),
            "--adapter",
            "ncm",
            "--memory",
            str(scene["memories"]["ncm"]),
            "--frames",
            "200",
            "--warmup",
            "50",
            "--checkpoint-every",
            "0",
            "--json",
            str(result),
        )
        == 0
    )
    report = json.loads(result.read_text())
    # 200 frames of a 40-frame video: at least 4 reopenings (a 5th when the reader ran ahead).
    assert report["frames"] == 200 and report["video_loops"] >= 200 // len(scene["truth"]) - 1
    assert report["checkpoints"] >= 200 and report["fds_leaked"] == 0
