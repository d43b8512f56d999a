"""The journal without a server: record codec, torn tails, replay after a checkpoint, pruning, group commit.

Real files in a temporary folder; the device's ``handle_batch`` is the code the server runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.adapters.knn import KNN
from edge_runtime.state import Checkpoints, StateError, read_state, write_state
from firmware_bridge.device import BridgeDevice
from firmware_bridge.framing import Packet
from firmware_bridge.journal import Journal
from firmware_bridge.messages import Ack
from firmware_bridge.records import AdaptOp, ForgetOp, TeachOp, decode_records, encode_record
from firmware_bridge.samples import Features, Teach

CLASSES = ["a", "b", "c"]
DIM = 16


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _journaled(folder: Path, every: int = 1000) -> tuple[BridgeDevice, Journal, list[str]]:
    """A kNN device over the state folder, as ``edgert bridge serve --state`` starts one: (device, journal, problems)."""
    checkpoints = Checkpoints(folder, "", "knn")
    journal = Journal(checkpoints, every_records=every, every_seconds=1e9)
    loaded = checkpoints.load()
    replay = journal.read(after=int(loaded.meta.get("journal_seq", 0)) if loaded else 0)
    device = BridgeDevice(loaded.adapter if loaded else KNN(), classes=CLASSES, dim=DIM, journal=journal)
    device.replay([r.op for r in replay.records])
    return device, journal, replay.problems


def _entries(device: BridgeDevice) -> list[tuple[int, tuple]]:
    e = device.adapter.memory.entries()
    return sorted((int(i), tuple(np.round(f, 5))) for i, f in zip(e["ids"], e["features"]))


def test_records_round_trip_and_every_kind_decodes() -> None:
    ops = [TeachOp(2, _rows(1)[0]), ForgetOp(1, 2**32 - 1), AdaptOp(_rows(1, 1)[0])]
    data = b"".join(encode_record(5 + i, op) for i, op in enumerate(ops))
    records, end = decode_records(data)
    assert end == len(data) and [r.seq for r in records] == [5, 6, 7]
    assert records[1].op == ForgetOp(1, 2**32 - 1)
    np.testing.assert_array_equal(records[0].op.x, ops[0].x)
    np.testing.assert_array_equal(records[2].op.x, ops[2].x)


@pytest.mark.parametrize("damage", ["cut", "flip", "gap", "garbage"])
def test_a_damaged_record_ends_the_journal_and_is_never_misread(damage: str) -> None:
    good = [encode_record(i, TeachOp(i % 3, _rows(1, i)[0])) for i in (1, 2, 3)]
    last = {
        "cut": good[2][:-3],
        "flip": good[2][:20] + bytes([good[2][20] ^ 1]) + good[2][21:],
        "gap": encode_record(5, TeachOp(0, _rows(1)[0])),
        "garbage": b"\xff" * 40,
    }[damage]
    records, end = decode_records(good[0] + good[1] + last)
    assert [r.seq for r in records] == [1, 2] and end == len(good[0]) + len(good[1])


def test_torn_tail_is_dropped_and_the_rest_replayed(tmp_path: Path) -> None:
    device, journal, _ = _journaled(tmp_path)
    x = _rows(4)
    for i, row in enumerate(x):
        (reply,) = device.handle_batch([Packet(i + 1, Teach(i % 3, Features.quantize(row)))])[0]
        assert reply.body == Ack(1)
    expected = _entries(device)
    journal.close()
    journal.checkpoints.close()
    (segment,) = tmp_path.glob("journal-*.log")
    with open(segment, "ab") as f:  # a fifth record cut short by a power cut
        f.write(encode_record(5, TeachOp(0, x[0]))[:30])
    device, journal, problems = _journaled(tmp_path)
    assert _entries(device) == expected and journal.seq == 4
    assert len(problems) == 1 and "30 bytes after record 4" in problems[0]
    journal.checkpoints.close()


def test_replay_rebuilds_the_memory_a_kill_left_behind(tmp_path: Path) -> None:
    """Checkpoints every 5 records, a journal after the last one: the restart equals the live memory."""
    device, journal, _ = _journaled(tmp_path, every=5)
    x = _rows(23, 3)
    for i, row in enumerate(x):
        device.handle_batch([Packet(i + 1, Teach(i % 3, Features.quantize(row)))])
        if i % 7 == 6:
            device.apply(ForgetOp(1, i - 3))
            journal.commit()
        device.maintain()
    expected = _entries(device)
    assert len(list(tmp_path.glob("checkpoint-*.npz"))) == 2  # newest + previous good one
    # No close, no final checkpoint: as after kill -9 (written records are in the page cache).
    journal.checkpoints.close()
    restarted, journal2, _ = _journaled(tmp_path)
    assert _entries(restarted) == expected and journal2.seq == journal.seq
    journal2.checkpoints.close()


def _teach_and_compact(device: BridgeDevice, rows: np.ndarray) -> None:
    """One TEACH a batch, as one peer sends them, compacting whenever the journal is due."""
    for i, row in enumerate(rows):
        device.handle_batch([Packet(i + 1, Teach(i % 3, Features.quantize(row)))])
        device.maintain()


def test_segments_the_previous_checkpoint_needs_are_kept(tmp_path: Path) -> None:
    device, journal, _ = _journaled(tmp_path, every=3)
    _teach_and_compact(device, _rows(10, 4))
    expected = _entries(device)
    journal.checkpoints.close()
    newest = sorted(tmp_path.glob("checkpoint-*.npz"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # the newest checkpoint is lost: its predecessor + journal serve
    device, journal, _ = _journaled(tmp_path)
    assert _entries(device) == expected
    journal.checkpoints.close()


def test_a_gap_in_the_journal_refuses_to_start(tmp_path: Path) -> None:
    device, journal, _ = _journaled(tmp_path, every=2)
    _teach_and_compact(device, _rows(7, 5))
    journal.checkpoints.close()
    for checkpoint in tmp_path.glob("checkpoint-*.npz"):
        checkpoint.unlink()  # both checkpoints gone: the first records are too (pruned)
    with pytest.raises(StateError, match="records are missing"):
        _journaled(tmp_path)


def test_concurrent_teaches_share_one_fsync(tmp_path: Path) -> None:
    device, journal, _ = _journaled(tmp_path)
    batch = [Packet(i + 1, Teach(i % 3, Features.quantize(row))) for i, row in enumerate(_rows(8, 6))]
    replies = device.handle_batch(batch)
    assert [r[0].body for r in replies] == [Ack(1)] * 8
    assert journal.commits == 1 and journal.records_written == 8
    device.handle_batch([Packet(9, Features.quantize(_rows(1, 7)[0]))])  # ADAPT record: not fsync'd
    assert journal.commits == 1 and journal.records_written == 9
    journal.close()
    journal.checkpoints.close()


def test_a_knn_checkpoint_reads_back(tmp_path: Path) -> None:
    """kNN stores its class count as a 0-d array; state files once stored it as (1,) and could not read it."""
    x = _rows(6, 8)
    knn = KNN().fit(x, np.arange(6) % 3)
    path = write_state(tmp_path / "knn.npz", knn, kind="checkpoint", model_sha256="", classes=CLASSES)
    restored = read_state(path).adapter
    np.testing.assert_array_equal(restored.predict_proba(x), knn.predict_proba(x))


def test_journal_segment_of_another_adapter_is_refused_by_name(tmp_path: Path) -> None:
    # Issue #24: skipping it let the next compaction delete it; the start is refused instead.
    device, journal, _ = _journaled(tmp_path)
    device.handle_batch([Packet(1, Teach(0, Features.quantize(_rows(1)[0])))])
    journal.close()
    journal.checkpoints.close()
    checkpoints = Checkpoints(tmp_path, "", "ncm")
    with pytest.raises(StateError, match="written for adapter 'knn'"):
        Journal(checkpoints).read(after=0)
    checkpoints.close()
