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

A segment starts with ``EDGERTJ1``, a u32 length, a JSON header (format, model sha256, adapter
name, first seq) and its CRC-32. A record is::

    offset 0   4s   magic b"REC1"
           4   u32  length L of the body
           8   u64  seq
          16   u8   kind: 1 TEACH, 2 FORGET, 3 ADAPT
          17   L    body: TEACH u16 label + f32 values; FORGET u8 scope + u32 value; ADAPT f32 values
        17+L   u32  CRC-32 of bytes [0, 17+L)

Reading stops at the first record that is incomplete, fails its CRC or breaks the sequence: a
write cut short by a power cut or ``kill -9`` is dropped, never misread. Kinds 4 (TEACH) and 5
(FORGET) are the same operations sent with a request id: their body starts with the u64 id, which
replay puts back into the device's table of answered requests (``firmware_bridge.device``).

**Bound to its base.** ``bridge-base.json`` (mode 0600, written once) names what the journal and
the checkpoints are changes *to*: the model, the adapter and its parameters, the source memory's
checksum, the feature width and the class names; every segment header carries its digest. A start
with another base is refused (``BaseMismatch``, one line naming both) before anything is written
or deleted.

**Failures.** A write that fails (disk full) is cut back to the last whole record before anything
else is appended, and the operation is refused (``StorageError``) before it changes the memory.
An fsync that fails is never retried on the same descriptor (the kernel may already have dropped
the pages it could not write, and report success the second time, as PostgreSQL learned in 2018):
the segment is abandoned and every record since the last checkpoint is rewritten as a new
checkpoint (``needs_rescue``) before anything is acknowledged again.

>>> import numpy as np
>>> rec = encode_record(7, TeachOp(2, np.ones(3, np.float32)))
>>> records, end = decode_records(rec + rec[:10])  # a second record, torn after 10 bytes
>>> records, end == len(rec)
([Record(seq=7, op=TeachOp(label=2, x=array([1., 1., 1.], dtype=float32), rid=0))], True)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import struct
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from edge_runtime.adapters import Adapter
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.files import fsync_dir
from edge_runtime.state import Checkpoints, StateError
from firmware_bridge.crc import crc32

SEGMENT_MAGIC = b"EDGERTJ1"
SEGMENT_FORMAT = 1
RECORD = struct.Struct("<4sIQB")
RECORD_MAGIC = b"REC1"
CRC = struct.Struct("<I")
SEGMENT_RE = re.compile(r"^journal-(\d{16})\.log$")
TEACH, FORGET, ADAPT, TEACH_ID, FORGET_ID = 1, 2, 3, 4, 5
MAX_BODY = 1 << 20  # a record longer than this is damage, not data (features are a few kB)
RID = struct.Struct("<Q")
BASE_FILE = "bridge-base.json"
FILE_MODE = 0o600  # journal records are the memory's contents: its owner's only


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


class BaseMismatch(StateError):
    """A state folder made for another model, adapter, memory, width or classes."""


class TeachOp(NamedTuple):
    label: int
    x: np.ndarray  # (d,) float32, exactly as passed to the adapter
    rid: int = 0  # the client's request id (0: none)

    def body(self) -> bytes:
        return struct.pack("<H", self.label) + np.ascontiguousarray(self.x, "<f4").tobytes()


class ForgetOp(NamedTuple):
    scope: int
    value: int
    rid: int = 0

    def body(self) -> bytes:
        return struct.pack("<BI", self.scope, self.value)


class AdaptOp(NamedTuple):
    x: np.ndarray

    def body(self) -> bytes:
        return np.ascontiguousarray(self.x, "<f4").tobytes()


Op = Union[TeachOp, ForgetOp, AdaptOp]
KIND = {TeachOp: TEACH, ForgetOp: FORGET, AdaptOp: ADAPT}


class Record(NamedTuple):
    seq: int
    op: Op


def encode_record(seq: int, op: Op) -> bytes:
    body = op.body()
    kind = KIND[type(op)]
    if getattr(op, "rid", 0):
        body = RID.pack(op.rid) + body  # type: ignore[union-attr]
        kind = TEACH_ID if kind == TEACH else FORGET_ID
    head = RECORD.pack(RECORD_MAGIC, len(body), seq, kind)
    return head + body + CRC.pack(crc32(body, crc32(head)))


def op_digest(op: Op) -> int:
    """CRC-32 of what an operation does (its body without the request id): a request id sent
    again with other content is refused, not answered with the first reply."""
    return crc32(op.body())


def _decode_op(kind: int, body: bytes) -> Optional[Op]:
    if kind in (TEACH_ID, FORGET_ID):
        if len(body) < RID.size:
            return None
        (rid,) = RID.unpack_from(body)
        inner = _decode_op(TEACH if kind == TEACH_ID else FORGET, body[RID.size :])
        return inner._replace(rid=rid) if inner is not None and rid else None  # type: ignore[union-attr,call-arg]
    if kind == TEACH and len(body) >= 2 and (len(body) - 2) % 4 == 0:
        return TeachOp(struct.unpack_from("<H", body)[0], np.frombuffer(body, "<f4", offset=2).copy())
    if kind == FORGET and len(body) == 5:
        return ForgetOp(*struct.unpack("<BI", body))
    if kind == ADAPT and len(body) % 4 == 0:
        return AdaptOp(np.frombuffer(body, "<f4").copy())
    return None


def decode_records(data: bytes, offset: int = 0) -> tuple[list[Record], int]:
    """The valid records of ``data`` from ``offset`` on, and the offset where they end.

    Stops at the first record that is incomplete, damaged (magic, CRC, layout) or whose seq
    does not follow the previous one; everything from there on is the torn tail.
    """
    records: list[Record] = []
    pos = offset
    while pos + RECORD.size + CRC.size <= len(data):
        magic, length, seq, kind = RECORD.unpack_from(data, pos)
        end = pos + RECORD.size + length
        if magic != RECORD_MAGIC or length > MAX_BODY or end + CRC.size > len(data):
            break
        if crc32(data[pos:end]) != CRC.unpack_from(data, end)[0]:
            break
        if records and seq != records[-1].seq + 1:
            break
        op = _decode_op(kind, data[pos + RECORD.size : end])
        if op is None:
            break
        records.append(Record(seq, op))
        pos = end + CRC.size
    return records, pos


def _segment_header(first_seq: int, model_sha256: str, adapter: str, base: str = "") -> bytes:
    fields: dict[str, Any] = {
        "format": SEGMENT_FORMAT,
        "first_seq": first_seq,
        "model_sha256": model_sha256,
        "adapter": adapter,
    }
    if base:
        fields["base"] = base
    meta = json.dumps(fields, sort_keys=True).encode()
    return SEGMENT_MAGIC + struct.pack("<I", len(meta)) + meta + CRC.pack(crc32(meta))


def _read_segment_header(data: bytes) -> tuple[Optional[dict[str, Any]], int]:
    if not data.startswith(SEGMENT_MAGIC) or len(data) < len(SEGMENT_MAGIC) + 4:
        return None, 0
    (n,) = struct.unpack_from("<I", data, len(SEGMENT_MAGIC))
    start = len(SEGMENT_MAGIC) + 4
    meta = data[start : start + n]
    if len(meta) != n or len(data) < start + n + 4 or crc32(meta) != CRC.unpack_from(data, start + n)[0]:
        return None, 0
    try:
        return json.loads(meta), start + n + 4
    except (ValueError, UnicodeDecodeError):
        return None, 0


class Replay(NamedTuple):
    records: list[Record]
    problems: list[str]  # torn tails and skipped segments, one line each, for stderr


# -- the base a state folder is bound to ---------------------------------------------------------------
def base_digest(base: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()


def _describe_base(base: dict[str, Any], keys: list[str]) -> str:
    """The fields ``keys`` of a base, for one line of text."""
    parts = []
    for key in keys:
        value = base.get(key)
        if key == "classes":
            names = [str(c) for c in (value or [])]
            text = f"{len(names)} classes [{','.join(names[:6])}{',...' if len(names) > 6 else ''}]"
        elif key in ("memory", "model_sha256"):
            text = f"{key} {str(value)[:12] + '...' if value else 'none'}"
        elif key == "params":
            text = f"adapter parameters {json.dumps(value, sort_keys=True, default=str)[:120]}"
        else:
            text = f"{key} {value}"
        parts.append(text)
    return ", ".join(parts)


def write_file(path: Path, data: bytes) -> None:
    """``path`` = ``data``, durably and atomically, mode 0600 (temp file, fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_folder(folder: Path) -> Path:
    """Create the state folder (mode 0700) and make its name durable: fsync every parent that gained an entry."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fsync_dir(path.parent)
    return folder


def bind_base(folder: Path, base: dict[str, Any], *, record: bool = True) -> str:
    """Check (or, in a folder without one and with ``record``, record) the base the folder's state
    is changes to. Returns the base's digest. ``BaseMismatch`` (one line naming both) when the folder was made
    for another base: nothing in the folder is changed.
    """
    base = json.loads(json.dumps(base, sort_keys=True, default=str))
    path = Path(folder) / BASE_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not an object")
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise StateError(f"{path} is unreadable ({err}): move the folder away to start afresh") from None
        if old != base:
            diff = [
                k
                for k in ("adapter", "params", "memory", "dim", "classes", "model_sha256", "format")
                if old.get(k) != base.get(k)
            ]
            raise BaseMismatch(
                f"state folder {folder} holds changes to {_describe_base(old, diff)}; this start asks "
                f"for {_describe_base(base, diff)}. Nothing was changed: start with the folder's "
                f"options, or give another --state folder"
            )
        return base_digest(base)
    if record:
        write_file(path, (json.dumps(base, sort_keys=True, indent=1) + "\n").encode())
    return base_digest(base)


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
            meta, start = _read_segment_header(data)
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
            meta, start = _read_segment_header(data)
            if meta is not None and decode_records(data, start)[0]:
                raise StateError(f"{path} exists and holds records: refusing to overwrite it")
        header = _segment_header(first, self.checkpoints.model_sha256, self.checkpoints.adapter, self.base)
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


__all__ = [
    "ADAPT",
    "AdaptOp",
    "BASE_FILE",
    "BaseMismatch",
    "FORGET",
    "FORGET_ID",
    "ForgetOp",
    "Journal",
    "Op",
    "Record",
    "Replay",
    "StorageError",
    "TEACH",
    "TEACH_ID",
    "TeachOp",
    "base_digest",
    "bind_base",
    "decode_records",
    "describe_oserror",
    "encode_record",
    "make_folder",
    "op_digest",
    "write_file",
]
