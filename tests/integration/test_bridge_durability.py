"""Issue #24, part 1 and 2: a journal bound to its base, disk full and lost fsyncs, request ids.

Real files in temporary folders; faults are injected by replacing ``os.write`` / ``os.fdatasync``
as the journal module sees them (the bench does the same on a real full tmpfs).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.state import Checkpoints, StateError
from firmware_bridge import journal as journal_mod
from firmware_bridge import state_folder
from firmware_bridge.cli import _load_device, configure
from firmware_bridge.codes import Capability, ErrorCode, ForgetScope
from firmware_bridge.framing import Packet
from firmware_bridge.journal import Journal
from firmware_bridge.messages import Ack, Error, Hello
from firmware_bridge.records import TeachOp, encode_record, segment_header
from firmware_bridge.samples import Features, ForgetOnce, Teach, TeachOnce
from firmware_bridge.state_folder import BASE_FILE, BaseMismatch, make_folder

CLASSES = "a,b,c"
DIM = 16


def _args(folder: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    opts = {"--adapter": "knn", "--classes": CLASSES, "--dim": str(DIM)}
    pairs = dict(zip(extra[::2], extra[1::2]))
    opts.update(pairs)
    argv = ["serve", "--port", "stdio://", "--state", str(folder)]
    for k, v in opts.items():
        argv += [k, v]
    return parser.parse_args(argv)


def _start(folder: Path, *extra: str):
    return _load_device(_args(folder, *extra))


def _stop(device) -> None:
    device.checkpoint()
    device.journal.close()
    device.journal.checkpoints.close()


def _row(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def _teach(device, seed: int, rid: int = 0, label: int = 0):
    body = TeachOnce(label, Features.quantize(_row(seed)), rid) if rid else Teach(label, Features.quantize(_row(seed)))
    (reply,) = device.handle_batch([Packet(seed + 1, body)])[0]
    return reply.body


def _items(device) -> int:
    return 0 if not device.ready else len(device.adapter.memory.entries()["ids"])


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


# -- 1. the base ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [("--dim", "8"), ("--classes", "a,b"), ("--adapter", "ncm")])
def test_a_restart_with_another_base_is_refused_in_one_line_and_changes_nothing(tmp_path: Path, change) -> None:
    device = _start(tmp_path)
    for seed in range(3):
        assert _teach(device, seed) == Ack(1)
    _stop(device)
    device = _start(tmp_path)
    assert _teach(device, 9) == Ack(1)  # a journal record after the checkpoint, too
    device.journal.close()
    device.journal.checkpoints.close()
    before = _listing(tmp_path)
    with pytest.raises(BaseMismatch) as err:
        _start(tmp_path, *change)
    message = str(err.value)
    assert "\n" not in message and "Nothing was changed" in message
    name = change[0].lstrip("-")
    assert f"{name if name != 'adapter' else 'adapter'}" in message
    if name == "dim":
        assert "dim 16" in message and "dim 8" in message
    if name == "adapter":
        assert "adapter knn" in message and "adapter ncm" in message
    assert _listing(tmp_path) == before  # nothing written, nothing deleted
    device = _start(tmp_path)  # the original options still work, with every item
    assert _items(device) == 4
    _stop(device)


def test_a_folder_without_a_base_file_whose_checkpoints_do_not_fit_is_refused_not_emptied(tmp_path: Path) -> None:
    device = _start(tmp_path)
    assert _teach(device, 1) == Ack(1)
    _stop(device)
    (tmp_path / BASE_FILE).unlink()  # a folder from before the base file
    before = _listing(tmp_path)
    with pytest.raises(StateError, match="nothing was changed"):
        _start(tmp_path, "--adapter", "ncm")
    assert _listing(tmp_path) == before


def test_an_existing_segment_is_never_truncated(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path, "", "knn")
    segment = tmp_path / "journal-0000000000000001.log"
    data = segment_header(1, "", "knn") + encode_record(1, TeachOp(0, _row(0)))
    segment.write_bytes(data)
    journal = Journal(checkpoints)  # seq 0: the next segment would be journal-...1.log
    with pytest.raises(StateError, match="holds records"):
        journal.append(TeachOp(1, _row(1)))
    assert segment.read_bytes() == data
    checkpoints.close()


def test_journal_and_base_files_are_private_and_the_folder_name_is_synced(tmp_path: Path, monkeypatch) -> None:
    synced = []
    real = state_folder.fsync_dir
    monkeypatch.setattr(state_folder, "fsync_dir", lambda folder: (synced.append(Path(folder)), real(folder)))
    folder = tmp_path / "deep" / "state"
    make_folder(folder)
    assert tmp_path in synced and tmp_path / "deep" in synced
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    device = _start(folder)
    assert _teach(device, 1) == Ack(1)
    _stop(device)
    for name in [
        BASE_FILE,
        *(p.name for p in folder.glob("journal-*.log")),
        *(p.name for p in folder.glob("checkpoint-*")),
    ]:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name


# -- 1. disk full and lost fsyncs ------------------------------------------------------------------------
def test_disk_full_is_reported_cut_back_and_nothing_acknowledged_is_lost(tmp_path: Path, monkeypatch) -> None:
    device = _start(tmp_path, "--compact-every", "100000")
    acked = 0
    for seed in range(5):
        acked += _teach(device, seed) == Ack(1)
    real_write = os.write
    full = {"on": True}

    def write(fd: int, data) -> int:  # the disk fills in the middle of a record
        if full["on"] and len(data) > 20:
            real_write(fd, bytes(data[:20]))
            full["on"] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_mod.os, "write", write)
    reply = _teach(device, 100)
    assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE and "disk full (ENOSPC)" in reply.message
    assert _items(device) == 5  # refused before it changed the memory
    for seed in range(5, 10):  # space is back: service resumes
        acked += _teach(device, seed) == Ack(1)
    assert acked == 10
    monkeypatch.undo()
    device.journal.close()
    device.journal.checkpoints.close()  # a kill: no checkpoint
    device = _start(tmp_path)
    assert _items(device) == 10
    _stop(device)


def test_a_failed_fsync_is_never_retried_on_the_same_descriptor(tmp_path: Path, monkeypatch) -> None:
    device = _start(tmp_path, "--compact-every", "100000")
    assert _teach(device, 0) == Ack(1)
    calls: list[int] = []
    real = os.fdatasync
    failed: set[int] = set()

    def fdatasync(fd: int) -> None:
        inode = os.fstat(fd).st_ino  # descriptors are reused: the file is what must not be synced again
        calls.append(inode)
        if not failed:
            failed.add(inode)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(journal_mod.os, "fdatasync", fdatasync)
    bad_fd = os.fstat(device.journal._fd).st_ino
    # The record went to the page cache, the fsync failed: the rewrite (a checkpoint) makes it durable.
    assert _teach(device, 1) == Ack(1)
    assert calls.count(bad_fd) == 1 and device.journal.sync_failures == 1 and not device.journal.needs_rescue
    assert _teach(device, 2) == Ack(1)
    assert calls.count(bad_fd) == 1
    monkeypatch.undo()
    device.journal.close()
    device.journal.checkpoints.close()
    device = _start(tmp_path)
    assert _items(device) == 3
    _stop(device)


def test_when_the_rewrite_fails_too_the_change_is_not_acknowledged_and_a_resend_is_applied_once(
    tmp_path: Path, monkeypatch
) -> None:
    device = _start(tmp_path, "--compact-every", "100000")
    assert _teach(device, 0) == Ack(1)
    monkeypatch.setattr(journal_mod.os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    monkeypatch.setattr(
        device.journal.checkpoints,
        "save",
        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    reply = _teach(device, 1, rid=77)
    assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE and "same request id" in reply.message
    monkeypatch.undo()
    device._rescue_retry_at = 0.0
    assert _teach(device, 1, rid=77) == Ack(1)  # the same id: made durable, not taught twice
    assert _items(device) == 2
    device.journal.close()
    device.journal.checkpoints.close()
    device = _start(tmp_path)
    assert _items(device) == 2
    _stop(device)


# -- 2. request ids ------------------------------------------------------------------------------------------
def test_a_request_id_is_applied_once_across_replay_and_checkpoints(tmp_path: Path) -> None:
    device = _start(tmp_path)
    (hello,) = device.handle_batch([Packet(1, Hello(1024))])[0]
    assert hello.body.capabilities & Capability.IDEMPOTENT
    assert _teach(device, 0) == Ack(1)  # item 0 stays (a kNN memory cannot be emptied)
    assert _teach(device, 1, rid=5) == Ack(1)
    assert _teach(device, 1, rid=5) == Ack(1)
    assert _items(device) == 2 and device.repeats == 1
    other = _teach(device, 2, rid=5)  # the same id for another sample: refused, not answered
    assert isinstance(other, Error) and other.code == ErrorCode.BAD_INPUT
    (forget,) = device.handle_batch([Packet(9, ForgetOnce(ForgetScope.ITEM, 1, 6))])[0]
    assert forget.body == Ack(1)
    (again,) = device.handle_batch([Packet(9, ForgetOnce(ForgetScope.ITEM, 1, 6))])[0]
    assert again.body == Ack(1)  # the first reply, not "0 removed"
    device.journal.close()
    device.journal.checkpoints.close()  # killed: the ids come back from the journal
    device = _start(tmp_path)
    assert _teach(device, 1, rid=5) == Ack(1) and _items(device) == 1
    _stop(device)  # a checkpoint: the ids come back from it
    device = _start(tmp_path)
    assert _teach(device, 1, rid=5) == Ack(1) and _items(device) == 1
    assert _teach(device, 3, rid=8) == Ack(1) and _items(device) == 2
    _stop(device)


def test_junk_on_the_link_before_a_teach_does_not_teach_it_twice() -> None:
    """The measured bug: junk, then one TEACH; the client resends on the link error it caused."""
    import threading

    from edge_runtime.adapters.knn import KNN
    from firmware_bridge.client import BridgeClient
    from firmware_bridge.device import BridgeDevice
    from firmware_bridge.link import serve
    from firmware_bridge.transport import FdTransport

    device = BridgeDevice(KNN(), classes=["a", "b", "c"], dim=DIM)
    to_device, from_host = os.pipe()
    to_host, from_device = os.pipe()
    stop = threading.Event()
    server = threading.Thread(
        target=serve,
        args=(FdTransport(to_device, from_device), device),
        kwargs={"should_stop": stop.is_set},
        daemon=True,
    )
    server.start()

    class Junky(FdTransport):
        armed = False

        def write(self, data: bytes) -> None:
            if self.armed and len(data) > 40:
                self.armed = False
                data = b"\x07junk\x00" + data
            super().write(data)

    link = Junky(to_host, from_host)
    client = BridgeClient(link, timeout=5)
    client.hello()
    link.armed = True
    assert client.teach(0, _row(1)) == 1
    assert client.stats().teaches == 1 and _items(device) == 1
    stop.set()
    server.join(5)
    for fd in (to_device, from_host, to_host, from_device):
        os.close(fd)


def test_run_checkpoints_keep_the_journal_sequence(tmp_path: Path) -> None:
    from edge_runtime.cli.run import load_adapter

    device = _start(tmp_path)
    for seed in range(3):
        assert _teach(device, seed, rid=seed + 1) == Ack(1)
    _stop(device)
    (tmp_path / BASE_FILE).unlink()  # edgert run does not use the bridge's base

    class Card:
        sha256 = ""

    class Backbone:
        card = Card()

    args = argparse.Namespace(state=tmp_path, adapter="knn", memory=None)
    adapter, classes, checkpoints, meta = load_adapter(args, Backbone())
    assert meta["journal_seq"] == 3 and len(meta["request_ids"]) == 3
    checkpoints.close()
