"""Who added what to a memory's mergeable statistics: the bookkeeping that makes sharing exactly-once.

A fleet member's statistics (``adapter.statistics()``: arrays (R, K, N) whose row 0 is a weighted
count per class, e.g. MemFlow's labelled (count, sum, sum of squares) per class and neuron, or
NCM's (count, sum) per class and feature) are the sum of the memory every member started from and
one *contribution* per member. The ledger holds each contribution apart:

- its own: ``own`` (published, up to update ``seq``), ``pending`` (taught or forgotten since);
- each peer's: the contribution applied so far and the sequence number of the last update
  applied (``Peer``).

An update from a peer is a *delta* (its contribution's change in one update, sequence ``seq``)
or a *snapshot* (its whole contribution as of ``seq``; the broker retains the latest). A delta
is applied only if it is the next one (``seq`` = last + 1): an older one is a duplicate (QoS 1
redelivers) and is ignored, a newer one means updates were missed, and the member waits for the
peer's snapshot. A snapshot newer than what was applied replaces the peer's contribution, so the
memory gets the difference: whatever was missed, once, in any order. Every change to the memory
comes back from ``receive`` as a dense difference to add.

Taught batches are kept (the last ``forgettable``) so that ``forget(batch)`` can subtract one
exactly; the subtraction is published like any change and so leaves every member.

The ledger travels inside the device's checkpoint (``state`` / ``restore``): a device restarted
from it knows exactly which update of each peer its memory holds.

>>> zeros = {"source": np.zeros((3, 2, 4))}
>>> a, b = Ledger("a", zeros), Ledger("b", zeros)
>>> batch = a.record({"source": np.ones((3, 2, 4))}, batch=True)
>>> (seq, arrays), = a.take(max_bytes=65536)
>>> b.receive("delta", "a", seq, arrays)[0], b.receive("delta", "a", seq, arrays)[0]
('applied', 'duplicate')
>>> sorted(b.peers), b.peers["a"].seq
(['a'], 1)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edge_runtime.fleet.payload import PayloadError

Stats = dict[str, np.ndarray]
_HEADROOM = 2048  # bytes of a delta payload kept for its JSON header and HMAC


@dataclass
class Peer:
    seq: int
    contribution: Stats


def _copy(stats: Stats) -> Stats:
    return {name: np.array(value, np.float64) for name, value in stats.items()}


def pack(stats: Stats, classes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Payload arrays of statistics (R, K, N), only the classes (axis 1) that are non-zero (or
    ``classes``); a class whose count row (row 0) is one value for every unit sends it once.

    >>> s = np.zeros((3, 4, 5)); s[:, 2] = 1.0
    >>> {k: v.shape for k, v in pack({"source": s}).items()}
    {'source.classes': (1,), 'source.counts': (1,), 'source.values': (2, 1, 5)}
    """
    out = {}
    for name, value in sorted(stats.items()):
        rows = np.flatnonzero(np.any(value != 0, axis=(0, 2))) if classes is None else np.asarray(classes)
        part = value[:, rows]
        out[f"{name}.classes"] = rows.astype(np.int64)
        if part.shape[2] and np.all(part[0] == part[0, :, :1]):
            out[f"{name}.counts"] = part[0, :, 0].copy()
            out[f"{name}.values"] = part[1:]
        else:
            out[f"{name}.values"] = part
    return out


def unpack(arrays: dict[str, np.ndarray], zeros: Stats) -> Stats:
    """Dense statistics from ``pack``'s arrays, checked against the shapes of ``zeros``;
    ``PayloadError("malformed")`` if anything does not fit (nothing is half-read)."""
    out = {}
    expected = {f"{name}.{part}" for name in zeros for part in ("classes", "values")}
    if not expected <= set(arrays) or not set(arrays) <= expected | {f"{name}.counts" for name in zeros}:
        raise PayloadError(f"arrays {sorted(arrays)} are not the statistics {sorted(zeros)}", kind="malformed")
    for name, template in zeros.items():
        rows, values = arrays[f"{name}.classes"], arrays[f"{name}.values"]
        counts = arrays.get(f"{name}.counts")
        n_rows = template.shape[0] - (counts is not None)
        k = len(rows)
        if (
            rows.dtype.kind != "i"
            or rows.ndim != 1
            or len(np.unique(rows)) != k
            or (k and (rows.min() < 0 or rows.max() >= template.shape[1]))
            or values.dtype != np.float64
            or values.shape != (n_rows, k, template.shape[2])
            or (counts is not None and (counts.dtype != np.float64 or counts.shape != (k,)))
        ):
            raise PayloadError(f"statistics {name!r} do not fit a memory of shape {template.shape}", kind="malformed")
        dense = np.zeros_like(template)
        dense[template.shape[0] - n_rows :, rows] = values
        if counts is not None:
            dense[0, rows] = counts[:, None]
        if not np.isfinite(dense).all():
            raise PayloadError(f"statistics {name!r} hold NaN or inf", kind="malformed")
        out[name] = dense
    return out


def _add(into: Stats, delta: Stats, sign: float = 1.0) -> None:
    for name, value in delta.items():
        into[name] += sign * value


class Ledger:
    """The contributions behind one member's statistics (see the module docstring).

    ``zeros`` gives the statistics' names and shapes; ``forgettable`` bounds the taught batches
    kept for ``forget``.
    """

    def __init__(self, device: str, zeros: Stats, *, forgettable: int = 64) -> None:
        self.device = device
        self.forgettable = forgettable
        self._zeros = _copy(zeros)
        self.seq = 0
        self.own = _copy(zeros)
        self.pending = _copy(zeros)
        self.peers: dict[str, Peer] = {}
        self.batches: OrderedDict[int, Stats] = OrderedDict()
        self.next_batch = 1

    def zeros(self) -> Stats:
        return _copy(self._zeros)

    # -- local changes -------------------------------------------------------------------------
    def record(self, delta: Stats, *, batch: bool = False) -> int:
        """A local change (already in the memory), to publish; with ``batch`` it is kept for
        ``forget`` and its batch number returned (else 0)."""
        _add(self.pending, delta)
        if not batch:
            return 0
        number = self.next_batch
        self.next_batch += 1
        self.batches[number] = _copy(delta)
        while len(self.batches) > self.forgettable:
            self.batches.popitem(last=False)
        return number

    def forget(self, batch: int) -> Stats | None:
        """Take taught batch ``batch`` back: returns the change to add to the memory (minus the
        batch), or None if the batch is unknown or too old to be kept."""
        delta = self.batches.pop(batch, None)
        if delta is None:
            return None
        minus = {name: -value for name, value in delta.items()}
        _add(self.pending, minus)
        return minus

    @property
    def has_pending(self) -> bool:
        return any(np.any(value != 0) for value in self.pending.values())

    def take(self, max_bytes: int) -> list[tuple[int, dict[str, np.ndarray]]]:
        """The pending change as deltas (sequence number, payload arrays), each under
        ``max_bytes`` (a class per unit of statistics is never split): they join ``own``."""
        touched = sorted(
            set().union(*(np.flatnonzero(np.any(v != 0, axis=(0, 2))).tolist() for v in self.pending.values()))
        )
        # bytes per class: every row per unit, or one count when the counts agree (``pack``)
        per_class = sum(
            8 * v.shape[2] * (v.shape[0] - np.all(v[0, touched] == v[0, touched, :1])) + 16
            for v in self.pending.values()
        )
        room = max(1, (max_bytes - _HEADROOM) // per_class)
        out = []
        for start in range(0, len(touched), room):
            rows = np.array(touched[start : start + room], np.int64)
            chunk = {name: np.zeros_like(value) for name, value in self.pending.items()}
            for name, value in self.pending.items():
                chunk[name][:, rows] = value[:, rows]
                value[:, rows] = 0.0
            _add(self.own, chunk)
            self.seq += 1
            out.append((self.seq, pack(chunk, rows)))
        return out

    def snapshot(self) -> tuple[int, dict[str, np.ndarray]]:
        """(seq, payload arrays) of the whole published contribution."""
        return self.seq, pack(self.own)

    # -- updates from the fleet -------------------------------------------------------------------
    def receive(
        self,
        kind: str,
        device: str,
        seq: int,
        arrays: dict[str, np.ndarray],
        check: Callable[[Stats], None] = lambda change: None,
    ) -> tuple[str, Stats | None]:
        """Bookkeeping of one verified update: (outcome, change to add to the memory or None).
        ``check`` (the memory's ``check_statistics``) sees the change before the ledger takes
        it: an update the memory would refuse leaves the ledger as it was.

        Outcomes: ``applied`` (the next delta), ``duplicate`` (already applied), ``gap`` (deltas
        missing: wait for the snapshot), ``resynced`` (a newer snapshot), ``stale`` (an older one),
        ``adopted`` (this device's own snapshot is newer than its state: it was restarted from an
        older checkpoint, and takes back what it had published), ``own``.

        On ``adopted`` the checkpoint's pending change is already in the memory and was published
        in the snapshot (every ``take`` publishes all that is pending), so the change is the
        snapshot minus ``own`` minus ``pending``, and nothing stays pending.
        """
        if kind not in ("delta", "snapshot"):
            raise PayloadError(f"unknown update kind {kind!r}", kind="malformed")
        if device == self.device:
            if kind != "snapshot" or seq <= self.seq:
                return "own", None
            snap = unpack(arrays, self._zeros)
            change = {name: snap[name] - self.own[name] - self.pending[name] for name in snap}
            check(change)
            self.own, self.seq, self.pending = snap, seq, self.zeros()
            return "adopted", change
        peer = self.peers.get(device)
        last = peer.seq if peer is not None else 0
        if kind == "delta":
            if seq <= last:
                return "duplicate", None
            if seq != last + 1:
                return "gap", None
            delta = unpack(arrays, self._zeros)
            check(delta)
            if peer is None:
                peer = self.peers[device] = Peer(0, self.zeros())
            _add(peer.contribution, delta)
            peer.seq = seq
            return "applied", delta
        if seq <= last:
            return "stale", None
        snap = unpack(arrays, self._zeros)
        before = peer.contribution if peer is not None else self._zeros
        change = {name: snap[name] - before[name] for name in snap}
        check(change)
        self.peers[device] = Peer(seq, snap)
        return "resynced", change

    # -- persistence ------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able meta, arrays) for the device's checkpoint: copies, which a checkpoint written
        in the background keeps as they were while the ledger goes on."""
        peers = sorted(self.peers)
        meta = {
            "device": self.device,
            "seq": self.seq,
            "next_batch": self.next_batch,
            "peers": {p: self.peers[p].seq for p in peers},
            "batches": list(self.batches),
        }
        arrays = {}
        for name in self._zeros:
            arrays[f"own.{name}"] = self.own[name].copy()
            arrays[f"pending.{name}"] = self.pending[name].copy()
            for i, p in enumerate(peers):
                arrays[f"peer{i}.{name}"] = self.peers[p].contribution[name].copy()
            for number, delta in self.batches.items():
                arrays[f"batch{number}.{name}"] = delta[name].copy()
        return meta, arrays

    @classmethod
    def restore(
        cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], zeros: Stats, *, forgettable: int = 64
    ) -> "Ledger":
        """The ledger ``state`` wrote; ``KeyError``/``ValueError`` if it does not fit ``zeros``."""
        ledger = cls(str(meta["device"]), zeros, forgettable=forgettable)

        def read(prefix: str) -> Stats:
            out = {name: np.array(arrays[f"{prefix}.{name}"], np.float64) for name in zeros}
            if any(out[name].shape != zeros[name].shape for name in zeros):
                raise ValueError(f"fleet statistics {prefix!r} do not fit this memory")
            return out

        ledger.seq, ledger.next_batch = int(meta["seq"]), int(meta["next_batch"])
        ledger.own, ledger.pending = read("own"), read("pending")
        for i, (p, seq) in enumerate(sorted(meta["peers"].items())):
            ledger.peers[p] = Peer(int(seq), read(f"peer{i}"))
        for number in meta["batches"]:
            ledger.batches[int(number)] = read(f"batch{number}")
        return ledger

    def __repr__(self) -> str:
        peers = json.dumps({p: peer.seq for p, peer in sorted(self.peers.items())})
        return f"Ledger({self.device!r}, seq={self.seq}, peers={peers})"


__all__ = ["Ledger", "Peer", "pack", "unpack"]
