"""Durable acknowledgements: an append-only journal of memory changes beside the checkpoints.

Every change a device makes to its adapter is a record: TEACH (label + features), FORGET
(scope + value) and ADAPT (features of an unlabelled sample the adapter learned from). A record is
sequence-numbered and checksummed; replaying the records after the checkpoint they follow, in
order, rebuilds exactly the memory the device had. TEACH and FORGET are answered with ACK only
after their record is on stable storage (``commit()``: one ``fdatasync`` for every record of a
batch, so concurrent TEACHes share it); ADAPT records ride along unsynced, since nothing
acknowledged them.

Files, in the checkpoint folder::

    checkpoint-00000007.npz      the adapter after record 5120 (header meta "journal_seq": 5120)
    journal-0000000000005121.log records 5121, 5122, ... (the number is the segment's first seq)

Compaction writes a new checkpoint (every ``every_records`` records or ``every_seconds``, and at
shutdown) and starts a new segment; segments only the deleted checkpoints needed are removed, so
the previous good checkpoint can always be brought up to date too.

The records and segment headers are laid out in ``firmware_bridge.records``; the folder's base
and its private, atomic files are ``firmware_bridge.state_folder``'s.

**Failures.** A write that fails (disk full) is cut back to the last whole record before anything
else is appended, and the operation is refused (``StorageError``) before it changes the memory.
An fsync that fails is never retried on the same descriptor (the kernel may already have dropped
the pages it could not write, and report success the second time, as PostgreSQL learned in 2018):
the segment is abandoned and every record since the last checkpoint is rewritten as a new
checkpoint (``needs_rescue``) before anything is acknowledged again.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

from edge_runtime.adapters import Adapter
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.files import fsync_dir
from edge_runtime.state import Checkpoints, StateError
from firmware_bridge.records import (
    SEGMENT_FORMAT,
    AdaptOp,
    Op,
    Record,
    decode_records,
    encode_record,
    read_segment_header,
    segment_header,
)
from firmware_bridge.state_folder import FILE_MODE, BaseMismatch

SEGMENT_RE = re.compile(r"^journal-(\d{16})\.log$")


class StorageError(EdgeRuntimeError):
    """A change that could not be made durable (disk full, I/O error): it was not applied, or not
    acknowledged. ``cause`` is the OSError; the message names it for the peer."""

    def __init__(self, message: str, cause: Optional[OSError] = None) -> None:
        super().__init__(message)
        self.cause = cause


def describe_oserror(err: OSError) -> str:
    """'disk full (ENOSPC)', 'I/O error (EIO)', ...: the cause in words a peer can act on."""
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    words = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EIO: "I/O error",
        errno.EROFS: "read-only file system",
    }.get(err.errno or 0, err.strerror or "OS error")
    return f"{words} ({name})"


class Replay(NamedTuple):
    records: list[Record]
    problems: list[str]  # torn tails and skipped segments, one line each, for stderr


class Journal:
    """The segments of one state folder: read them after a checkpoint, append, commit, compact.

    One writer at a time: the folder's lock is held by ``Checkpoints``. ``base`` is the digest of
    the folder's base (``bind_base``): segments of another base are refused, not skipped.
    """

    def __init__(
        self, checkpoints: Checkpoints, *, every_records: int = 1000, every_seconds: float = 60.0, base: str = ""
    ) -> None:
        self.checkpoints = checkpoints
        self.folder = checkpoints.folder
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.base = base
        self.seq = 0  # last record written (or replayed)
        self.base_seq = 0  # last record the newest checkpoint holds
        self.prev_seq = 0  # last record the previous kept checkpoint holds
        self.synced_seq = 0  # last record known to be on stable storage
        self.commits = 0  # fdatasync calls that made records durable
        self.records_written = 0
        self.write_failures = 0
        self.sync_failures = 0
        self.needs_rescue = False  # records up to ``seq`` are in memory only: a checkpoint must hold them
        self._fd: Optional[int] = None
        self._size = 0  # bytes of the open segment that hold whole records
        self._last_start = 0  # where the last record appended starts
        self._unsynced_ack = False  # a TEACH/FORGET record written and not yet fsync'd
        self._last_checkpoint = time.monotonic()

    # -- reading -----------------------------------------------------------------------------------
    def segments(self) -> list[tuple[int, Path]]:
        """(first seq, path) of each segment, oldest first."""
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := SEGMENT_RE.match(p.name))]
        return sorted(found)

    def read(self, after: int) -> Replay:
        """Records with seq > ``after``, consecutive, from every segment; set ``seq`` to the last one.

        A gap (the records right after ``after`` are gone) raises ``StateError``: starting anyway
        would lose acknowledged operations without a word. So does a segment of another base.
        """
        records: list[Record] = []
        problems: list[str] = []
        expected = after + 1
        ckpt = self.checkpoints
        for first, path in self.segments():
            data = path.read_bytes()
            meta, start = read_segment_header(data)
            if meta is None or meta.get("format") != SEGMENT_FORMAT:
                problems.append(f"{path}: not a journal segment this runtime reads; skipped")
                continue
            if (
                meta.get("model_sha256") != ckpt.model_sha256
                or meta.get("adapter") != ckpt.adapter
                or (self.base and meta.get("base", self.base) != self.base)
            ):
                raise BaseMismatch(
                    f"{path} was written for adapter {meta.get('adapter')!r}, model "
                    f"{str(meta.get('model_sha256'))[:12]}... and base {str(meta.get('base'))[:12]}, "
                    f"not this start's; nothing was changed: move the folder away or start with "
                    f"its options"
                )
            found, end = decode_records(data, start)
            if end < len(data):
                problems.append(
                    f"{path}: {len(data) - end} bytes after record {found[-1].seq if found else first - 1} "
                    f"are incomplete or damaged (a write cut short); dropped"
                )
            for record in found:
                if record.seq < expected:
                    continue
                if record.seq != expected:
                    raise StateError(
                        f"journal in {self.folder} jumps from record {expected - 1} to {record.seq}: "
                        f"records are missing; move the folder away to start from --memory"
                    )
                records.append(record)
                expected += 1
        self.seq = self.base_seq = self.prev_seq = after
        if records:
            self.seq = records[-1].seq
        self.synced_seq = self.seq
        return Replay(records, problems)

    # -- writing -----------------------------------------------------------------------------------
    def append(self, op: Op) -> int:
        """Write one record (not yet durable: ``commit()`` makes it so); returns its seq.

        A failed write raises ``StorageError`` after cutting the segment back to its last whole
        record: nothing is left for the next record to land behind.
        """
        if self.needs_rescue:
            raise StorageError("the journal lost an fsync and waits for a checkpoint; not applied, retry later")
        data = encode_record(self.seq + 1, op)
        try:
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            self.write_failures += 1
            self._cut_back()
            raise StorageError(
                f"journal write failed: {describe_oserror(err)}; not applied, retry later", err
            ) from None
        self._last_start = self._size
        self._size += len(data)
        self.seq += 1
        self._unsynced_ack |= not isinstance(op, AdaptOp)
        self.records_written += 1
        return self.seq

    def undo(self, seq: int) -> None:
        """Take back the record just appended (the change it records failed): cut the segment back."""
        if self._fd is None or seq != self.seq:
            return
        try:
            os.ftruncate(self._fd, self._last_start)
        except OSError as err:  # the record stays: replay applies it (it was never acknowledged)
            print(f"edgert bridge: journal: cannot take back record {seq}: {err}", file=sys.stderr)
            return
        self._size = self._last_start
        self.seq -= 1
        self.records_written -= 1

    @property
    def size(self) -> int:
        return self._size

    def _cut_back(self) -> None:
        """After a failed write: cut the open segment back to its last whole record."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as err:
            # The torn bytes stay; replay stops at them, so nothing may follow them in this segment:
            # the next record goes to a new one, once the records before it are durable.
            print(
                f"edgert bridge: journal: cannot cut back a failed write ({err}); starting a new segment",
                file=sys.stderr,
            )
            fd, self._fd = self._fd, None
            try:
                if self._unsynced_ack:
                    os.fdatasync(fd)
                    self._unsynced_ack = False
                    self.synced_seq = self.seq
            except OSError:
                self.needs_rescue = self.seq > self.base_seq
            finally:
                os.close(fd)

    def commit(self) -> None:
        """Make every appended record durable with one fdatasync, if a TEACH or FORGET awaits it.

        ADAPT records alone are not synced: nothing acknowledged them, and an fsync per frame
        would cost a camera its frame rate. They reach the disk with the next commit or checkpoint.
        A failed fsync abandons the segment's descriptor (never fsynced again) and raises
        ``StorageError``; ``needs_rescue`` is then set until a checkpoint holds every record.
        """
        if self.needs_rescue:
            raise StorageError("journal fsync failed earlier: waiting for a checkpoint to hold the records")
        if self._unsynced_ack and self._fd is not None:
            try:
                os.fdatasync(self._fd)
            except OSError as err:
                self.sync_failures += 1
                self._abandon()
                raise StorageError(f"journal fsync failed: {describe_oserror(err)}; not acknowledged", err) from None
            self._unsynced_ack = False
            self.synced_seq = self.seq
            self.commits += 1

    def _abandon(self) -> None:
        """Drop the open segment's descriptor without another fsync (its pages may be lost already)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._unsynced_ack = False
        self.needs_rescue = True

    def _open_segment(self) -> None:
        """A new segment for records from ``seq + 1``: written as a temp file and renamed in, never
        truncating a file that holds records."""
        first = self.seq + 1
        path = self.folder / f"journal-{first:016d}.log"
        if path.exists():
            data = path.read_bytes()
            meta, start = read_segment_header(data)
            if meta is not None and decode_records(data, start)[0]:
                raise StateError(f"{path} exists and holds records: refusing to overwrite it")
        header = segment_header(first, self.checkpoints.model_sha256, self.checkpoints.adapter, self.base)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        try:
            view = memoryview(header)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.replace(tmp, path)
            fsync_dir(self.folder)  # the segment's name must survive a power cut with its records
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd = fd
        self._size = len(header)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._unsynced_ack:
                    os.fdatasync(fd)
                    self.synced_seq = self.seq
            except OSError as err:
                self.sync_failures += 1
                self.needs_rescue = self.seq > self.base_seq
                print(f"edgert bridge: journal: fsync at close failed: {describe_oserror(err)}", file=sys.stderr)
            finally:
                self._unsynced_ack = False
                os.close(fd)

    # -- compaction --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records since the newest checkpoint."""
        return self.seq - self.base_seq

    def due(self) -> bool:
        return (
            self.needs_rescue
            or self.pending >= self.every_records
            or (self.pending > 0 and time.monotonic() - self._last_checkpoint >= self.every_seconds)
        )

    def checkpoint(self, adapter: Adapter, classes: list[str], meta: Optional[dict[str, Any]] = None) -> Optional[Path]:
        """Write the adapter as the next checkpoint (holding every record so far); start a new segment.

        Returns None without writing when the newest checkpoint already holds every record. After
        a failed fsync this is the rewrite: the checkpoint is a new file, fsynced, and holds every
        record the abandoned segment may have lost.
        """
        if not self.needs_rescue:
            try:
                self.commit()
            except StorageError:
                pass  # the checkpoint below holds every record anyway
        if self.pending == 0 and self.checkpoints.files() and not self.needs_rescue:
            return None
        path = self.checkpoints.save(adapter, classes, {**(meta or {}), "journal_seq": self.seq})
        try:
            os.chmod(path, FILE_MODE)
        except OSError:
            pass
        self.close()
        self.needs_rescue = False
        self.synced_seq = self.seq
        self.prev_seq, self.base_seq = self.base_seq, self.seq
        self._last_checkpoint = time.monotonic()
        # Segments whose every record the previous kept checkpoint holds are no longer needed.
        segments = self.segments()
        ends = [first - 1 for first, _ in segments[1:]] + [self.seq]
        for (_, segment), last in zip(segments, ends):
            if last <= self.prev_seq:
                segment.unlink(missing_ok=True)
        return path


__all__ = ["Journal", "Replay", "StorageError", "describe_oserror"]
