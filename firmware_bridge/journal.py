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
write cut short by a power cut or ``kill -9`` is dropped, never misread.

>>> import numpy as np
>>> rec = encode_record(7, TeachOp(2, np.ones(3, np.float32)))
>>> records, end = decode_records(rec + rec[:10])  # a second record, torn after 10 bytes
>>> records, end == len(rec)
([Record(seq=7, op=TeachOp(label=2, x=array([1., 1., 1.], dtype=float32)))], True)
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from edge_runtime.adapters import Adapter
from edge_runtime.files import fsync_dir
from edge_runtime.state import Checkpoints, StateError
from firmware_bridge.crc import crc32

SEGMENT_MAGIC = b"EDGERTJ1"
SEGMENT_FORMAT = 1
RECORD = struct.Struct("<4sIQB")
RECORD_MAGIC = b"REC1"
CRC = struct.Struct("<I")
SEGMENT_RE = re.compile(r"^journal-(\d{16})\.log$")
TEACH, FORGET, ADAPT = 1, 2, 3
MAX_BODY = 1 << 20  # a record longer than this is damage, not data (features are a few kB)


class TeachOp(NamedTuple):
    label: int
    x: np.ndarray  # (d,) float32, exactly as passed to the adapter

    def body(self) -> bytes:
        return struct.pack("<H", self.label) + np.ascontiguousarray(self.x, "<f4").tobytes()


class ForgetOp(NamedTuple):
    scope: int
    value: int

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
    head = RECORD.pack(RECORD_MAGIC, len(body), seq, KIND[type(op)])
    return head + body + CRC.pack(crc32(body, crc32(head)))


def _decode_op(kind: int, body: bytes) -> Optional[Op]:
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


def _segment_header(first_seq: int, model_sha256: str, adapter: str) -> bytes:
    meta = json.dumps(
        {"format": SEGMENT_FORMAT, "first_seq": first_seq, "model_sha256": model_sha256, "adapter": adapter},
        sort_keys=True,
    ).encode()
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


class Journal:
    """The segments of one state folder: read them after a checkpoint, append, commit, compact.

    One writer at a time: the folder's lock is held by ``Checkpoints``.
    """

    def __init__(self, checkpoints: Checkpoints, *, every_records: int = 1000, every_seconds: float = 60.0) -> None:
        self.checkpoints = checkpoints
        self.folder = checkpoints.folder
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.seq = 0  # last record written (or replayed)
        self.base_seq = 0  # last record the newest checkpoint holds
        self.prev_seq = 0  # last record the previous kept checkpoint holds
        self.commits = 0  # fdatasync calls that made records durable
        self.records_written = 0
        self._fd: Optional[int] = None
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
        would lose acknowledged operations without a word.
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
            if meta.get("model_sha256") != ckpt.model_sha256 or meta.get("adapter") != ckpt.adapter:
                problems.append(
                    f"{path}: written for adapter {meta.get('adapter')!r} and model "
                    f"{str(meta.get('model_sha256'))[:12]}..., not this one; skipped"
                )
                continue
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
        return Replay(records, problems)

    # -- writing -----------------------------------------------------------------------------------
    def append(self, op: Op) -> int:
        """Write one record (not yet durable: ``commit()`` makes it so); returns its seq."""
        if self._fd is None:
            self._open_segment()
        self.seq += 1
        data = encode_record(self.seq, op)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]  # type: ignore[arg-type]
        self._unsynced_ack |= not isinstance(op, AdaptOp)
        self.records_written += 1
        return self.seq

    def commit(self) -> None:
        """Make every appended record durable with one fdatasync, if a TEACH or FORGET awaits it.

        ADAPT records alone are not synced: nothing acknowledged them, and an fsync per frame
        would cost a camera its frame rate. They reach the disk with the next commit or checkpoint.
        """
        if self._unsynced_ack and self._fd is not None:
            os.fdatasync(self._fd)
            self._unsynced_ack = False
            self.commits += 1

    def _open_segment(self) -> None:
        path = self.folder / f"journal-{self.seq + 1:016d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.write(fd, _segment_header(self.seq + 1, self.checkpoints.model_sha256, self.checkpoints.adapter))
        os.fsync(fd)
        fsync_dir(self.folder)  # the segment's name must survive a power cut with its records
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None

    # -- compaction --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records since the newest checkpoint."""
        return self.seq - self.base_seq

    def due(self) -> bool:
        return self.pending >= self.every_records or (
            self.pending > 0 and time.monotonic() - self._last_checkpoint >= self.every_seconds
        )

    def checkpoint(self, adapter: Adapter, classes: list[str], meta: Optional[dict[str, Any]] = None) -> Optional[Path]:
        """Write the adapter as the next checkpoint (holding every record so far); start a new segment.

        Returns None without writing when the newest checkpoint already holds every record.
        """
        self.commit()
        if self.pending == 0 and self.checkpoints.files():
            return None
        path = self.checkpoints.save(adapter, classes, {**(meta or {}), "journal_seq": self.seq})
        self.close()
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
    "FORGET",
    "ForgetOp",
    "Journal",
    "Op",
    "Record",
    "Replay",
    "TEACH",
    "TeachOp",
    "decode_records",
    "encode_record",
]
