"""Approximate nearest-neighbour search for large visual memories: faiss IVF-Flat, inner product.

The visual memory stays the owner of the entries (RAM matrix + database); this index only
proposes candidate ids, whose exact cosine similarities the memory then recomputes from its own
matrix. Below ``min_train`` entries the index is not built and the memory searches exactly (a
matmul over a few thousand rows is already fast). The coarse quantiser is trained once on a
sample of the entries and rebuilt when the memory has grown ``rebuild_factor`` times since, so the
inverted lists stay balanced.

faiss is optional: ``pip install faiss-cpu`` (it is in the ``bench`` extra of this package).
"""

from __future__ import annotations

import numpy as np

from edge_runtime.errors import EdgeRuntimeError


def _faiss():
    try:
        import faiss
    except ImportError:
        raise EdgeRuntimeError(
            "the faiss search backend needs faiss-cpu: pip install faiss-cpu "
            "(or pip install 'edge-runtime[bench]'), or use backend='exact'"
        ) from None
    return faiss


class FaissIVF:
    """IVF-Flat over unit vectors with nlist = sqrt(n) lists, ``nprobe`` visited per query.

    ``threads`` sets faiss's OpenMP thread count (process-wide).

    >>> index = FaissIVF(8, min_train=64)
    >>> rows = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    >>> rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    >>> index.add(rows, np.arange(100), 100)
    >>> index.ready, index.candidates(rows[:1], 1, {i: i for i in range(100)}).tolist()
    (True, [[0]])
    """

    def __init__(
        self,
        d: int,
        *,
        nprobe: int = 16,
        min_train: int = 8192,
        rebuild_factor: float = 4.0,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.d = d
        self.threads = threads
        self.nprobe = nprobe
        self.min_train = min_train
        self.rebuild_factor = rebuild_factor
        self.seed = seed
        self._faiss = _faiss()
        # One thread by default: a camera queries one frame at a time, and OpenMP workers that
        # spin-wait on a busy small board cost more than they save (process-wide faiss setting).
        self._faiss.omp_set_num_threads(threads)
        self._index = None
        self._trained_on = 0

    @property
    def ready(self) -> bool:
        """Whether the index is built (else the memory searches exactly)."""
        return self._index is not None

    def add(self, matrix: np.ndarray, ids: np.ndarray, n_new: int) -> None:
        """Index the last ``n_new`` rows of the memory's live ``matrix`` (ids alongside)."""
        n = len(matrix)
        if self._index is None or n > self.rebuild_factor * self._trained_on:
            if n >= self.min_train:
                self._build(matrix, ids)
            return
        self._index.add_with_ids(np.ascontiguousarray(matrix[n - n_new :]), np.ascontiguousarray(ids[n - n_new :]))

    def _build(self, matrix: np.ndarray, ids: np.ndarray) -> None:
        faiss = self._faiss
        n = len(matrix)
        nlist = max(1, int(np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(self.d)
        index = faiss.IndexIVFFlat(quantizer, self.d, nlist, faiss.METRIC_INNER_PRODUCT)
        # 64 points per list is plenty for k-means and keeps training to seconds at 10^5 entries.
        sample = np.random.default_rng(self.seed).choice(n, min(n, 64 * nlist), replace=False)
        index.cp.seed = self.seed
        # Spherical k-means (unit centroids): with plain inner-product k-means a few large-norm
        # centroids attract most points and one list ends up holding nearly the whole memory.
        index.cp.spherical = True
        index.train(np.ascontiguousarray(matrix[np.sort(sample)]))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(1) remove_ids by id
        index.add_with_ids(np.ascontiguousarray(matrix), np.ascontiguousarray(ids))
        index.nprobe = min(self.nprobe, nlist)
        self._index = index
        self._trained_on = n

    def remove(self, ids: np.ndarray) -> None:
        """Drop ids from the inverted lists."""
        if self._index is not None:
            self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def reset(self) -> None:
        """Forget the index entirely (it is rebuilt once the memory is large again)."""
        self._index = None
        self._trained_on = 0

    def candidates(self, queries: np.ndarray, k: int, row_of: dict[int, int]) -> np.ndarray:
        """Memory rows (n, k) of the approximate k nearest ids; -1 where fewer were found."""
        _, ids = self._index.search(np.ascontiguousarray(queries), k)  # type: ignore[attr-defined]
        return np.array([row_of.get(int(i), -1) if i >= 0 else -1 for i in ids.ravel()], dtype=np.int64).reshape(
            ids.shape
        )
