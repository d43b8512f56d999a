"""The journal's bytes: records of memory changes and the header of the segment files holding them.

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

>>> import numpy as np
>>> rec = encode_record(7, TeachOp(2, np.ones(3, np.float32)))
>>> records, end = decode_records(rec + rec[:10])  # a second record, torn after 10 bytes
>>> records, end == len(rec)
([Record(seq=7, op=TeachOp(label=2, x=array([1., 1., 1.], dtype=float32), rid=0))], True)
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from firmware_bridge.crc import crc32

SEGMENT_MAGIC = b"EDGERTJ1"
SEGMENT_FORMAT = 1
RECORD = struct.Struct("<4sIQB")
RECORD_MAGIC = b"REC1"
CRC = struct.Struct("<I")
TEACH, FORGET, ADAPT, TEACH_ID, FORGET_ID = 1, 2, 3, 4, 5
MAX_BODY = 1 << 20  # a record longer than this is damage, not data (features are a few kB)
RID = struct.Struct("<Q")


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


def segment_header(first_seq: int, model_sha256: str, adapter: str, base: str = "") -> bytes:
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


def read_segment_header(data: bytes) -> tuple[Optional[dict[str, Any]], int]:
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


__all__ = [
    "ADAPT",
    "AdaptOp",
    "FORGET",
    "FORGET_ID",
    "ForgetOp",
    "Op",
    "Record",
    "SEGMENT_FORMAT",
    "TEACH",
    "TEACH_ID",
    "TeachOp",
    "decode_records",
    "encode_record",
    "op_digest",
    "read_segment_header",
    "segment_header",
]
