"""The request ids a device has applied (TEACH_ONCE, FORGET_ONCE), each with its first reply.

A host that got no answer sends the same request again with the same id; the device answers the
repeat from here instead of applying it twice. The newest ``limit`` ids are kept; they travel in
the journal's records and the checkpoints' meta, so a restart remembers them.

>>> from firmware_bridge.records import ForgetOp
>>> ids = RequestIds(limit=2)
>>> ids.remember(7, ForgetOp(0, 0, 7), count=3, seq=12)
>>> 7 in ids, ids.first_reply(7, ForgetOp(0, 0, 7))
(True, (3, 12))
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence

from edge_runtime.errors import InputError
from firmware_bridge.records import Op, op_digest

MAX_REQUESTS = 4096  # request ids remembered (a host resends within seconds; thousands is ample)


class RequestIds:
    """Request id -> (digest of the operation, count acknowledged, journal seq of its record),
    least recently used first; the oldest beyond ``limit`` are dropped."""

    def __init__(self, limit: int = MAX_REQUESTS) -> None:
        self.limit = limit
        self._table: OrderedDict[int, tuple[int, int, int]] = OrderedDict()

    def __contains__(self, rid: object) -> bool:
        return rid in self._table

    def __len__(self) -> int:
        return len(self._table)

    def first_reply(self, rid: int, op: Optional[Op]) -> tuple[int, int]:
        """(count acknowledged, journal seq of its record) of request ``rid``. ``InputError`` when
        ``op`` (None: not compared) is another operation than the one first sent with that id."""
        digest, count, seq = self._table[rid]
        if op is not None and op_digest(op) != digest:
            raise InputError(f"request id {rid:#x} was used for another request: draw a new id per request")
        self._table.move_to_end(rid)
        return count, seq

    def remember(self, rid: int, op: Op, count: int, seq: int) -> None:
        self._table[rid] = (op_digest(op), int(count), seq)
        self._table.move_to_end(rid)
        while len(self._table) > self.limit:
            self._table.popitem(last=False)

    def entries(self) -> list[list[int]]:
        """[id, digest, count] of each id, oldest first: what a checkpoint keeps."""
        return [[rid, digest, count] for rid, (digest, count, _) in self._table.items()]

    def restore(self, entries: Sequence[Any]) -> int:
        """Take back the ``entries()`` a checkpoint kept (malformed ones are skipped); returns how many ids are held."""
        for entry in entries[-self.limit :]:
            try:
                rid, digest, count = (int(v) for v in entry)
            except (TypeError, ValueError):
                continue
            self._table[rid] = (digest, count, 0)
        return len(self._table)


__all__ = ["MAX_REQUESTS", "RequestIds"]
