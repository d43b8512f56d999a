"""A durable visual memory (arXiv 2408.08172): labelled feature vectors searched by cosine kNN.

Each entry is (id, feature, label, origin, timestamp). The features live in one contiguous
float32 matrix in RAM for search; when a ``path`` is given every change is also committed to an
embedded SQLite database in WAL mode with ``synchronous=FULL`` before it is applied in RAM, so a
power cut or ``kill -9`` leaves the last committed state on disk and nothing half-written.

The index verbs follow faiss: ``add`` / ``add_with_ids``, ``search`` -> (distances, ids) of shape
(n, k), ``remove_ids`` -> how many were removed, ``reset``, and the attributes ``d`` and
``ntotal``. Distances are cosine distances 1 - cos, ascending; ties are broken by id, so results
never depend on where an entry sits in the matrix. Missing neighbours (k > ntotal) are id -1,
distance inf.

Exact unlearning: ``remove_ids`` / ``remove_origin`` delete the rows from RAM and from the database
(with ``secure_delete``, which zeroes the freed pages); ``compact()`` checkpoints and truncates the
write-ahead log and vacuums the file, after which the removed feature bytes are nowhere in the
database files. With the exact backend, every later search and prediction equals that of a memory
that never held the removed entries.

Capacity and eviction: with ``capacity`` set, adding to a full memory evicts first. Policy
("pseudo-first, largest class, oldest"): among pseudo-labelled entries if there are any, else
among all, take the label with the most entries and evict its oldest entry. Labelled data thus
outlives guesses, and no class is squeezed out by another.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.features import as_features, as_labels
from edge_runtime.kernels import knn as knn_kernels

SCHEMA_VERSION = 1
PSEUDO = "pseudo"
VOTINGS = ("rank", "softmax")
BACKENDS = ("exact", "faiss")
SHORTLIST_MARGIN = 16


def _blas_tolerance(d: int) -> float:
    """Twice a bound on |BLAS float32 similarity - exact dot product| of two unit vectors of width d.

    Any float32 summation order (blocked, FMA) is within gamma_d = d u / (1 - d u) (u = 2^-24) of
    the exact sum of |x_i y_i|, which Cauchy-Schwarz bounds by |x| |y| = 1 (+ a rounding of the
    norms, covered by the factor 2 of safety); the float64 rescore is exact to ~1e-13 of it. Two
    rows whose BLAS similarities differ by more than twice the bound are ordered by them exactly.
    """
    u = 2.0**-24
    return 2 * 2 * d * u / (1 - d * u)


def vote(
    labels: np.ndarray, distances: np.ndarray, n_classes: int, voting: str = "rank", temperature: float = 0.07
) -> tuple[np.ndarray, np.ndarray]:
    """Class scores from neighbours (n, k) in rank order; returns (probabilities (n, C), weights (n, k)).

    RankVoting: the neighbour of rank r (from 0) weighs 1 / (r + 2). Softmax voting weighs
    exp((1 - distance) / temperature). Missing neighbours (label -1) weigh 0; a query with no
    neighbour at all gets the uniform distribution.

    >>> p, w = vote(np.array([[1, 0, 1]]), np.zeros((1, 3), np.float32), 2)
    >>> np.round(p, 3), np.round(w, 3)
    (array([[0.308, 0.692]]), array([[0.5  , 0.333, 0.25 ]]))
    """
    if voting == "rank":
        weights = np.broadcast_to(1.0 / (np.arange(labels.shape[1]) + 2.0), labels.shape).copy()
    elif voting == "softmax":
        sims = 1.0 - distances.astype(np.float64)
        sims[labels < 0] = -np.inf
        top = np.max(sims, axis=1, keepdims=True)
        weights = np.exp((sims - np.where(np.isfinite(top), top, 0.0)) / temperature)
    else:
        raise InputError(f"unknown voting {voting!r}; choose one of {', '.join(VOTINGS)}")
    weights[labels < 0] = 0.0
    scores = np.zeros((labels.shape[0], n_classes))
    rows = np.repeat(np.arange(labels.shape[0]), labels.shape[1])
    valid = labels.ravel() >= 0
    np.add.at(scores, (rows[valid], labels.ravel()[valid]), weights.ravel()[valid])
    totals = scores.sum(axis=1, keepdims=True)
    proba = np.divide(scores, totals, out=np.full_like(scores, 1.0 / n_classes), where=totals > 0)
    return proba, weights


class VisualMemory:
    """Labelled features with cosine kNN search, optional SQLite durability and a capacity bound.

    Parameters
    ----------
    d
        Feature width.
    path
        SQLite database file. ``None`` keeps the memory in RAM only. An existing file is loaded
        (its width must equal ``d``).
    capacity
        Most entries held; adding beyond it evicts (see the module docstring). ``None``: unbounded.
    backend
        ``"exact"`` (numpy matmul, the default) or ``"faiss"`` (IVF-Flat from the optional
        ``faiss-cpu`` package, for large memories; approximate).
    nprobe
        Inverted lists visited per query by the faiss backend.

    >>> mem = VisualMemory(2)
    >>> mem.add(np.array([[1, 0], [0, 1], [1, 0.1]], dtype=np.float32), [0, 1, 0])
    array([0, 1, 2])
    >>> distances, ids = mem.search(np.array([[1, 0.05]], dtype=np.float32), 2)
    >>> ids
    array([[2, 0]])
    >>> mem.remove_ids([2]), mem.ntotal
    (1, 2)
    """

    def __init__(
        self,
        d: int,
        path: str | Path | None = None,
        *,
        capacity: int | None = None,
        backend: str = "exact",
        nprobe: int = 16,
    ) -> None:
        if d < 1:
            raise InputError(f"feature width d must be >= 1, got {d}")
        if capacity is not None and capacity < 1:
            raise InputError(f"capacity must be >= 1 or None, got {capacity}")
        if backend not in BACKENDS:
            raise InputError(f"unknown search backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.d = int(d)
        self.path = None if path is None else Path(path)
        self.capacity = capacity
        self.backend = backend
        self.nprobe = nprobe
        self._clear_ram()
        self._ann = None
        if backend == "faiss":
            from edge_runtime.memory.ann import FaissIVF

            self._ann = FaissIVF(self.d, nprobe=nprobe)
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._open()

    # -- RAM state -------------------------------------------------------------------------------
    def _clear_ram(self, reserve: int = 0) -> None:
        self._matrix = np.zeros((max(reserve, 16), self.d), dtype=np.float32)
        self._ids = np.zeros(len(self._matrix), dtype=np.int64)
        self._labels = np.zeros(len(self._matrix), dtype=np.int64)
        self._origins = np.zeros(len(self._matrix), dtype=np.int32)
        self._timestamps = np.zeros(len(self._matrix), dtype=np.float64)
        self._n = 0
        self._row_of: dict[int, int] = {}
        self._origin_names: list[str] = []
        self._origin_code: dict[str, int] = {}
        self._next_id = 0

    def _grow(self, needed: int) -> None:
        if needed <= len(self._matrix):
            return
        size = max(needed, 2 * len(self._matrix))
        if self.capacity is not None:
            size = max(needed, min(size, self.capacity))
        for name in ("_matrix", "_ids", "_labels", "_origins", "_timestamps"):
            old = getattr(self, name)
            new = np.zeros((size,) + old.shape[1:], dtype=old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def _code(self, origin: str) -> int:
        if origin not in self._origin_code:
            self._origin_code[origin] = len(self._origin_names)
            self._origin_names.append(origin)
        return self._origin_code[origin]

    def _append_ram(
        self, x: np.ndarray, labels: np.ndarray, ids: np.ndarray, origin: str, timestamps: np.ndarray
    ) -> None:
        self._grow(self._n + len(x))
        rows = slice(self._n, self._n + len(x))
        self._matrix[rows] = x
        self._ids[rows] = ids
        self._labels[rows] = labels
        self._origins[rows] = self._code(origin)
        self._timestamps[rows] = timestamps
        for offset, entry in enumerate(ids.tolist()):
            self._row_of[entry] = self._n + offset
        self._n += len(x)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        if self._ann is not None:
            self._ann.add(self._matrix[: self._n], self._ids[: self._n], len(x))

    def _remove_ram(self, ids: np.ndarray) -> None:
        # Swap-with-last keeps the matrix contiguous in O(d) per entry; search results do not
        # depend on row order (ties are broken by id), so this is invisible to every prediction.
        for entry in ids.tolist():
            row = self._row_of.pop(entry)
            last = self._n - 1
            if row != last:
                for array in (self._matrix, self._ids, self._labels, self._origins, self._timestamps):
                    array[row] = array[last]
                self._row_of[int(self._ids[row])] = row
            self._n = last
        if self._ann is not None:
            self._ann.remove(ids)

    # -- durability ------------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None)  # type: ignore[arg-type]
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk (fsync of the log) when commit returns, power cut or not.
            db.execute("PRAGMA synchronous=FULL")
            # Deleted rows and freed pages are overwritten with zeros: an unlearned feature does
            # not linger in free space.
            db.execute("PRAGMA secure_delete=ON")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, label INTEGER NOT NULL, "
                "origin TEXT NOT NULL, timestamp REAL NOT NULL, feature BLOB NOT NULL)"
            )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            rows = db.execute("SELECT id, label, origin, timestamp, feature FROM entries ORDER BY id").fetchall()
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"cannot open visual memory {self.path}: {exc}; move the file away to start empty"
            ) from None
        if not meta:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", str(SCHEMA_VERSION)), ("d", str(self.d))])
            db.execute("COMMIT")
        elif int(meta.get("schema", -1)) != SCHEMA_VERSION:
            raise InputError(
                f"visual memory {self.path} has schema {meta.get('schema')}; this runtime reads {SCHEMA_VERSION}"
            )
        elif int(meta["d"]) != self.d:
            raise InputError(f"visual memory {self.path} holds width {meta['d']} features, not {self.d}")
        self._db = db
        self._clear_ram(len(rows))
        by_origin: dict[str, list[tuple]] = {}
        for row in rows:
            by_origin.setdefault(row[2], []).append(row)
        for origin, group in by_origin.items():
            feats = np.frombuffer(b"".join(r[4] for r in group), dtype="<f4").reshape(len(group), self.d)
            self._append_ram(
                feats,
                np.array([r[1] for r in group], dtype=np.int64),
                np.array([r[0] for r in group], dtype=np.int64),
                origin,
                np.array([r[3] for r in group], dtype=np.float64),
            )
        # Ids of removed entries are never handed out again, even if they were the largest.
        self._next_id = max(self._next_id, int(meta.get("next_id", 0)))

    def _transaction(self, statements: list[tuple[str, Any]]) -> None:
        """Run (sql, rows) pairs as one committed transaction; on any error nothing is applied."""
        if self._db is None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                self._db.executemany(sql, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database (RAM contents stay usable but are no longer persisted)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "VisualMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compact(self) -> None:
        """Checkpoint and truncate the write-ahead log, then vacuum: removed bytes leave the files."""
        if self._db is None:
            return
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- faiss-style verbs -----------------------------------------------------------------------
    @property
    def next_id(self) -> int:
        """The id ``add`` gives next: one past the largest id ever used, removed ones included."""
        return self._next_id

    def reserve_ids(self, next_id: int) -> None:
        """Never hand out an id below ``next_id`` (restoring a memory whose newest entries were
        removed: a host may still hold their ids, and a FORGET by id must not hit a newcomer)."""
        if next_id > self._next_id:
            self._transaction([("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("next_id", str(int(next_id)))])])
            self._next_id = int(next_id)

    @property
    def ntotal(self) -> int:
        """Number of entries held."""
        return self._n

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, (int, np.integer)) and int(entry_id) in self._row_of

    def add(
        self,
        features: np.ndarray,
        labels: Iterable[int] | np.ndarray,
        *,
        origin: str = "user",
        timestamps: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add entries under new ids (one past the largest id ever used); returns the ids."""
        n = len(np.atleast_2d(np.asarray(features)))
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self.add_with_ids(features, labels, ids, origin=origin, timestamps=timestamps)
        return ids

    def add_with_ids(
        self,
        features: np.ndarray,
        labels: Iterable[int] | np.ndarray,
        ids: Iterable[int] | np.ndarray,
        *,
        origin: str = "user",
        timestamps: np.ndarray | None = None,
    ) -> None:
        """Add entries under the given (new, unique, non-negative) ids, evicting first if at capacity."""
        x = as_features(features, self.d)
        y = as_labels(labels, len(x))
        ids = np.asarray(ids)
        if ids.shape != (len(x),) or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"ids must be {len(x)} integers, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if (ids < 0).any() or len(np.unique(ids)) != len(ids):
            raise InputError("ids must be non-negative and unique")
        taken = [int(i) for i in ids if int(i) in self._row_of]
        if taken:
            raise InputError(f"id {taken[0]} is already in the memory: remove it first or use add()")
        if not isinstance(origin, str) or not origin:
            raise InputError("origin must be a non-empty string")
        if self.capacity is not None and len(x) > self.capacity:
            raise InputError(f"cannot add {len(x)} entries to a memory of capacity {self.capacity}")
        stamps = np.full(len(x), time.time()) if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        if stamps.shape != (len(x),):
            raise InputError(f"timestamps must have shape ({len(x)},), got {stamps.shape}")
        evict = self._eviction_victims(len(x))
        next_id = max(self._next_id, int(ids.max()) + 1) if len(ids) else self._next_id
        self._transaction(
            [
                ("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("next_id", str(next_id))]),
                ("DELETE FROM entries WHERE id = ?", [(int(i),) for i in evict]),
                (
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                    [
                        (int(i), int(label), origin, float(t), row.astype("<f4").tobytes())
                        for i, label, t, row in zip(ids, y, stamps, x)
                    ],
                ),
            ]
        )
        if len(evict):
            self._remove_ram(evict)
        self._append_ram(x, y, ids, origin, stamps)

    def _eviction_victims(self, incoming: int) -> np.ndarray:
        if self.capacity is None:
            return np.zeros(0, dtype=np.int64)
        excess = self._n + incoming - self.capacity
        labels = self._labels[: self._n].copy()
        pseudo = self._origin_code.get(PSEUDO, -1)
        is_pseudo = self._origins[: self._n] == pseudo
        alive = np.ones(self._n, dtype=bool)
        victims = []
        for _ in range(max(excess, 0)):
            pool = alive & is_pseudo if (alive & is_pseudo).any() else alive
            largest = np.bincount(labels[pool]).argmax()
            rows = np.flatnonzero(pool & (labels == largest))
            # Oldest first; equal timestamps fall back to the smaller id.
            row = rows[np.lexsort((self._ids[rows], self._timestamps[rows]))[0]]
            alive[row] = False
            victims.append(int(self._ids[row]))
        return np.array(victims, dtype=np.int64)

    def remove_ids(self, ids: Iterable[int] | np.ndarray) -> int:
        """Delete entries by id, durably; returns how many were removed. Unknown ids are refused."""
        ids = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).astype(np.int64))
        missing = [int(i) for i in ids if int(i) not in self._row_of]
        if missing:
            raise InputError(f"id {missing[0]} is not in the memory (nothing was removed)")
        self._transaction([("DELETE FROM entries WHERE id = ?", [(int(i),) for i in ids])])
        self._remove_ram(ids)
        return len(ids)

    def remove_origin(self, origin: str) -> int:
        """Delete every entry of one origin (e.g. all pseudo-labelled ones); returns how many."""
        code = self._origin_code.get(origin)
        if code is None:
            return 0
        ids = self._ids[: self._n][self._origins[: self._n] == code]
        return self.remove_ids(ids) if len(ids) else 0

    def reset(self) -> None:
        """Remove every entry (durably)."""
        self._transaction([("DELETE FROM entries", [()])])
        self._clear_ram()
        if self._ann is not None:
            self._ann.reset()

    def search(
        self,
        features: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        origin: str | None = None,
        pseudo: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest entries of each query: (cosine distances (n, k) float32, ids (n, k) int64).

        ``exclude`` (n,) optionally names one id per query that must not be returned (e.g. the
        query's own entry when scoring the memory against itself); -1 excludes nothing.
        ``origin`` restricts the search to one origin; ``pseudo`` to the pseudo-labelled entries
        (True) or to the others (False). With the faiss backend these filters are applied to an
        enlarged shortlist, so they stay approximate.
        """
        x = as_features(features, self.d)
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        n = self._n
        distances = np.full((len(x), k), np.inf, dtype=np.float32)
        found = np.full((len(x), k), -1, dtype=np.int64)
        if n == 0:
            return distances, found
        # Shortlist with BLAS (plus a margin, so a last-bit difference cannot push a true
        # neighbour out), then rescore the shortlist in a fixed order: see kernels.knn.
        shortlist = k + SHORTLIST_MARGIN + (exclude is not None)
        allowed = self._filter(origin, pseudo)
        if self._ann is not None and self._ann.ready:
            rows = self._ann.candidates(x, shortlist * (1 if allowed is None else 4), self._row_of)
        else:
            sims = x @ self._matrix[:n].T
            if allowed is not None:
                sims[:, ~allowed] = -np.inf
            take = min(shortlist, n)
            rows = (
                np.argpartition(-sims, take - 1, axis=1)[:, :take]
                if take < n
                else np.broadcast_to(np.arange(n), sims.shape).copy()
            )
        if allowed is not None:
            rows = np.where((rows >= 0) & allowed[np.maximum(rows, 0)], rows, -1)
        if exclude is not None:
            banned = np.array([self._row_of.get(int(e), -2) for e in np.asarray(exclude).ravel()])
            rows = np.where(rows == banned[:, None], -1, rows)
        scores = np.empty(rows.shape, dtype=np.float64)
        knn_kernels.rescore(self._matrix, np.ascontiguousarray(rows, dtype=np.int64), x, scores)
        cand_ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)
        for q in range(len(x)):
            # Ties (equal similarity) are broken by id: results are independent of row order.
            order = np.lexsort((cand_ids[q], -scores[q]))
            order = order[np.isfinite(scores[q][order])][:k]
            distances[q, : len(order)] = 1.0 - scores[q][order]
            found[q, : len(order)] = cand_ids[q][order]
        return distances, found

    def _filter(self, origin: str | None, pseudo: bool | None) -> np.ndarray | None:
        """Boolean mask over live rows for the origin filters of ``search`` (None: all rows)."""
        if origin is None and pseudo is None:
            return None
        codes = self._origins[: self._n]
        allowed = np.ones(self._n, dtype=bool)
        if origin is not None:
            allowed &= codes == self._origin_code.get(origin, -1)
        if pseudo is not None:
            allowed &= (codes == self._origin_code.get(PSEUDO, -1)) == pseudo
        return allowed

    # -- classification, explanation, pruning ----------------------------------------------------
    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Labels of the given ids; -1 where the id is -1 (a missing neighbour)."""
        ids = np.asarray(ids)
        flat = [int(self._labels[self._row_of[int(i)]]) if i >= 0 else -1 for i in ids.ravel()]
        return np.array(flat, dtype=np.int64).reshape(ids.shape)

    def predict_proba(
        self, features: np.ndarray, n_classes: int, *, k: int = 10, voting: str = "rank", temperature: float = 0.07
    ) -> np.ndarray:
        """Class probabilities (n, n_classes) from the votes of the k nearest entries."""
        if self.exact_rank_vote(voting, k):
            return self.rank_proba(as_features(features, self.d), n_classes, k)
        distances, ids = self.search(features, k)
        proba, _ = vote(self.labels_of(ids), distances, n_classes, voting, temperature)
        return proba

    def exact_rank_vote(self, voting: str, k: int) -> bool:
        """Whether ``rank_proba`` answers for ``predict_proba`` (exact backend, rank voting, entries)."""
        return voting == "rank" and self._ann is None and k >= 1 and self._n > 0

    def rank_proba(self, x: np.ndarray, n_classes: int, k: int) -> np.ndarray:
        """``predict_proba`` with rank voting for rows ``x`` that ``as_features`` returned: the exact
        search and the vote in one kernel after the BLAS shortlist (kernels.knn.rank_vote): the same
        neighbours (same fixed-order rescoring where it can matter, same tie rule), the same sums."""
        sims = x @ self._matrix[: self._n].T
        scores = np.zeros((len(x), n_classes))
        bad = knn_kernels.rank_vote(
            self._matrix, self._ids, self._labels, sims, x, k, k + SHORTLIST_MARGIN, _blas_tolerance(self.d), scores
        )
        if bad != -1:
            raise InputError(f"the memory holds label {bad}, not one of the {n_classes} classes asked for")
        return scores / scores.sum(axis=1, keepdims=True)  # the nearest neighbour always weighs 1/2 > 0

    def explain(
        self, feature: np.ndarray, n_classes: int, *, k: int = 10, voting: str = "rank", temperature: float = 0.07
    ) -> dict[str, Any]:
        """What decided one prediction: the neighbours (id, label, origin, distance, weight) and the votes."""
        distances, ids = self.search(feature, k)
        if len(ids) != 1:
            raise InputError(f"explain takes one feature vector, got {len(ids)}")
        labels = self.labels_of(ids)
        proba, weights = vote(labels, distances, n_classes, voting, temperature)
        neighbours = [
            {
                "id": int(i),
                "label": int(label),
                "origin": self._origin_names[self._origins[self._row_of[int(i)]]],
                "distance": float(dist),
                "weight": float(w),
            }
            for i, label, dist, w in zip(ids[0], labels[0], distances[0], weights[0])
            if i >= 0
        ]
        return {"prediction": int(proba[0].argmax()), "probabilities": proba[0].tolist(), "neighbours": neighbours}

    def prune(
        self, *, k: int = 10, max_wrong_fraction: float = 0.5, min_hits: int = 3, origin: str | None = None
    ) -> np.ndarray:
        """Remove entries that are often the wrong-label neighbour of their own labelled peers.

        Every entry (of ``origin``, or all) is queried against the rest of the memory, itself
        excluded. An entry that appears at least ``min_hits`` times among those neighbour lists
        and whose label differs from the querying entry's in more than ``max_wrong_fraction`` of
        them is removed. Returns the removed ids. Cost: one all-pairs similarity (n^2 d); meant
        for memories up to some 10^4 entries, run off the hot path.
        """
        n = self._n
        if n < 2:
            return np.zeros(0, dtype=np.int64)
        rows = np.arange(n)
        if origin is not None:
            rows = rows[self._origins[:n] == self._origin_code.get(origin, -1)]
        hits = np.zeros(n, dtype=np.int64)
        wrong = np.zeros(n, dtype=np.int64)
        ids = self._ids[:n].copy()
        labels = self._labels[:n].copy()
        for start in range(0, len(rows), 1024):
            batch = rows[start : start + 1024]
            _, found = self.search(self._matrix[batch], k, exclude=ids[batch])
            valid = found >= 0
            found_rows = np.array([self._row_of[int(i)] if i >= 0 else 0 for i in found.ravel()]).reshape(found.shape)
            np.add.at(hits, found_rows[valid], 1)
            mismatch = valid & (labels[found_rows] != labels[batch][:, None])
            np.add.at(wrong, found_rows[mismatch], 1)
        bad = (hits >= min_hits) & (wrong > max_wrong_fraction * hits)
        victims = ids[bad]
        if len(victims):
            self.remove_ids(victims)
        return victims

    # -- plain arrays (adapter state) ------------------------------------------------------------
    def entries(self) -> dict[str, Any]:
        """Copies of the live entries, in id order: features, labels, ids, origins (names), timestamps."""
        order = np.argsort(self._ids[: self._n], kind="stable")
        codes = self._origins[: self._n][order]
        return {
            "features": self._matrix[: self._n][order].copy(),
            "labels": self._labels[: self._n][order].copy(),
            "ids": self._ids[: self._n][order].copy(),
            "origins": [self._origin_names[c] for c in codes],
            "timestamps": self._timestamps[: self._n][order].copy(),
        }

    def origin_counts(self) -> dict[str, np.ndarray]:
        """Per origin, the count of entries of each label (an array indexed by label)."""
        counts = {}
        for name, code in self._origin_code.items():
            mask = self._origins[: self._n] == code
            counts[name] = np.bincount(self._labels[: self._n][mask])
        return counts
