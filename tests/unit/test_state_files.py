"""State files and checkpoints: round trip, corruption, wrong model, and kill -9 in the middle of a write.

The adapter is the real NCM fitted on scikit-learn's UCI digits (real data, 64-d features).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from edge_runtime.adapters import make_adapter
from edge_runtime.state import Checkpoints, StateError, read_header, read_state, write_state

SHA = "5" * 64
OTHER_SHA = "6" * 64
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


@pytest.fixture()
def fitted(digits):
    x, y = digits
    return make_adapter("ncm").fit(x[:1000], y[:1000], n_classes=10)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_round_trip_restores_identical_predictions(tmp_path, digits, fitted):
    x, _ = digits
    path = write_state(
        tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES, meta={"examples": 1000}
    )
    state = read_state(path, model_sha256=SHA, adapter="ncm")
    np.testing.assert_array_equal(state.adapter.predict_proba(x[1000:]), fitted.predict_proba(x[1000:]))
    assert state.classes == CLASSES
    assert state.header["kind"] == "memory" and state.header["model_sha256"] == SHA
    assert state.meta == {"examples": 1000}
    assert read_header(path)["checksum"] == state.header["checksum"]
    assert not [p for p in tmp_path.iterdir() if p.name != "memory.npz"], "temp files left behind"


def test_state_made_for_another_model_is_refused_by_name(tmp_path, fitted):
    path = write_state(tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES)
    with pytest.raises(StateError, match=r"memory\.npz was made for model sha256 555555555555"):
        read_state(path, model_sha256=OTHER_SHA)
    with pytest.raises(StateError, match=r"memory\.npz holds adapter 'ncm', not 'memflow'"):
        read_state(path, adapter="memflow")


def test_corrupted_array_bytes_and_header_are_detected(tmp_path, fitted):
    path = write_state(tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES)
    raw = path.read_bytes()
    array_at = raw.find(np.ascontiguousarray(fitted.state_dict()["arrays"]["sums"]).tobytes()[:64])
    header_at = raw.find(b'"classes"')
    assert array_at > 0 and header_at > 0
    for offset in (array_at + 1000, header_at + 3):
        broken = tmp_path / f"broken-{offset}.npz"
        broken.write_bytes(raw)
        flip_byte(broken, offset)
        with pytest.raises(StateError, match=f"{broken.name} is corrupt"):
            read_state(broken)


def test_checksum_catches_a_consistent_rewrite(tmp_path, fitted):
    # A file rewritten with valid zip CRCs but changed arrays (a buggy writer, not bit rot).
    path = write_state(tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES)
    with np.load(path, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    members["a/counts"] = members["a/counts"] + 1
    np.savez(tmp_path / "tampered.npz", **members)
    with pytest.raises(StateError, match="tampered.npz fails its checksum"):
        read_state(tmp_path / "tampered.npz")


def test_truncated_foreign_and_pickled_files_are_refused(tmp_path, fitted):
    path = write_state(tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StateError, match="truncated.npz is corrupt or truncated"):
        read_state(truncated)
    np.savez(tmp_path / "foreign.npz", x=np.arange(3))
    with pytest.raises(StateError, match="foreign.npz is not a state file"):
        read_state(tmp_path / "foreign.npz")
    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": 1}], dtype=object))
    with pytest.raises(StateError, match="pickled.npz is corrupt"):
        read_state(tmp_path / "pickled.npz")
    with pytest.raises(StateError, match="not found"):
        read_state(tmp_path / "absent.npz")


def test_checkpoints_keep_newest_and_previous_and_fall_back_past_bad_files(tmp_path, digits, fitted):
    x, y = digits
    with Checkpoints(tmp_path, SHA, "ncm") as checkpoints:
        assert checkpoints.load() is None
        for i in range(4):
            fitted.teach(x[1000 + i : 1001 + i], y[1000 + i : 1001 + i])
            checkpoints.save(fitted, CLASSES, {"frames": i})
        assert [p.name for p in checkpoints.files()] == ["checkpoint-00000004.npz", "checkpoint-00000003.npz"]
    newest, previous = sorted(tmp_path.glob("checkpoint-*.npz"), reverse=True)
    expected = read_state(previous).adapter.predict_proba(x[1100:])
    flip_byte(newest, newest.stat().st_size // 2)
    # A newer checkpoint made for another model must be skipped too, and named.
    other = write_state(
        tmp_path / "checkpoint-00000005.npz",
        fitted,
        kind="checkpoint",
        model_sha256=OTHER_SHA,
        classes=CLASSES,
        name="ncm",
    )
    with Checkpoints(tmp_path, SHA, "ncm") as checkpoints:
        state = checkpoints.load()
        assert state is not None and state.path == previous and state.meta == {"frames": 2}
        np.testing.assert_array_equal(state.adapter.predict_proba(x[1100:]), expected)
        assert len(checkpoints.problems) == 2
        assert other.name in checkpoints.problems[0] and "made for model" in checkpoints.problems[0]
        assert newest.name in checkpoints.problems[1] and "corrupt" in checkpoints.problems[1]
        saved = checkpoints.save(state.adapter, CLASSES, {"frames": 3})
        # The bad files go; the new checkpoint and the previous good one stay.
        assert sorted(p.name for p in checkpoints.files()) == [previous.name, saved.name]
        assert saved.name == "checkpoint-00000006.npz"


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    first = Checkpoints(tmp_path, SHA, "ncm")
    with pytest.raises(StateError, match="in use by another process"):
        Checkpoints(tmp_path, SHA, "ncm")
    first.close()
    Checkpoints(tmp_path, SHA, "ncm").close()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edge_runtime.state import Checkpoints, atomic_write, encode_state, read_state

    folder, memory, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    adapter = read_state(memory).adapter
    checkpoints = Checkpoints(folder, "{sha}", "ncm")
    state = checkpoints.load()
    frames = state.meta["frames"] if state else 0
    if mode == "stall":
        checkpoints.save(adapter, {classes!r}, {{"frames": 1}})
        blob = encode_state(adapter, kind="checkpoint", model_sha256="{sha}", classes={classes!r}, name="ncm",
                            meta={{"frames": 2}})

        def write_half_then_wait(f):
            f.write(blob[: len(blob) // 2])
            f.flush()
            print("writing", flush=True)
            sys.stdin.readline()  # the parent kills us here, half-way through the file
            f.write(blob[len(blob) // 2:])

        atomic_write(folder / "checkpoint-00000002.npz", write_half_then_wait)
    else:
        while True:
            frames += 1
            checkpoints.save(adapter, {classes!r}, {{"frames": frames}})
            print(frames, flush=True)
""")


def writer(tmp_path: Path, memory: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(sha=SHA, classes=CLASSES))
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "state"), str(memory), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_kill_9_half_way_through_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, digits, fitted):
    x, _ = digits
    memory = write_state(tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES)
    proc = writer(tmp_path, memory, "stall")
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = tmp_path / "state"
    assert [p.name for p in folder.glob(".checkpoint-00000002.npz.tmp-*")], "the kill did not land mid-write"
    assert not (folder / "checkpoint-00000002.npz").exists()
    with Checkpoints(folder, SHA, "ncm") as checkpoints:
        state = checkpoints.load()
        assert state is not None and state.meta == {"frames": 1} and checkpoints.problems == []
        np.testing.assert_array_equal(state.adapter.predict_proba(x[1000:]), fitted.predict_proba(x[1000:]))
    assert not list(folder.glob(".checkpoint-*.tmp-*")), "the stale temp file was not cleaned up"


def test_kill_9_at_random_moments_never_loses_a_saved_checkpoint(tmp_path, fitted):
    memory = write_state(tmp_path / "memory.npz", fitted, kind="memory", model_sha256=SHA, classes=CLASSES)
    rng = random.Random(6)
    last_saved = 0
    for _ in range(6):
        proc = writer(tmp_path, memory, "loop")
        for _ in range(rng.randint(3, 40)):
            last_saved = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with Checkpoints(tmp_path / "state", SHA, "ncm") as checkpoints:
            state = checkpoints.load()
            assert checkpoints.problems == []
            # Every checkpoint reported as saved survives the kill (it was fsynced and renamed).
            assert state is not None and state.meta["frames"] >= last_saved
            assert len(checkpoints.files()) <= 3
