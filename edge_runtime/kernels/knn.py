"""Numba kernel of the visual memory: candidate similarities computed in one fixed order.

A BLAS matmul may round a row's dot product differently depending on where the row sits in the
matrix (blocking, tails), so after a removal moves a row the last bit of its score can change and
a near-tie can flip. The memory therefore uses BLAS only to shortlist candidates and rescores the
shortlist here: a plain sequential float64 sum per pair, whose result depends on the two vectors
alone. That is what makes unlearning exact (predictions equal those of a memory that never held
the entry).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _dot4(matrix, r0, r1, r2, r3, query):
    """Four rows' dot products with one query, each a sequential float64 sum from 0 in index order:
    the four chains interleave (so the CPU overlaps their latencies), each keeps its own order."""
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    for i in range(matrix.shape[1]):
        v = np.float64(query[i])
        a0 += np.float64(matrix[r0, i]) * v
        a1 += np.float64(matrix[r1, i]) * v
        a2 += np.float64(matrix[r2, i]) * v
        a3 += np.float64(matrix[r3, i]) * v
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _rescore_row(matrix, rows, query, out):
    """out[j] = the sequential float64 dot product of matrix[rows[j]] and query; -inf where rows[j] < 0."""
    n = rows.shape[0]
    j = 0
    while j < n:
        r = np.empty(4, np.int64)
        for u in range(4):  # pad the last group with a valid row; its sums are discarded
            r[u] = rows[min(j + u, n - 1)]
            if r[u] < 0:
                r[u] = 0
        a = _dot4(matrix, r[0], r[1], r[2], r[3], query)
        for u in range(min(4, n - j)):
            out[j + u] = a[u] if rows[j + u] >= 0 else -np.inf
        j += 4


@njit(cache=True)
def rescore(matrix, rows, queries, out):
    """out[q, j] = sum_i matrix[rows[q, j], i] * queries[q, i] in float64, left to right; -inf where rows < 0."""
    for q in range(rows.shape[0]):
        _rescore_row(matrix, rows[q], queries[q], out[q])


@njit(cache=True)
def rank_vote(matrix, ids, labels, sims, queries, k, take, tolerance, scores):
    """Rank-voted class scores of each query's k nearest rows: ``VisualMemory.search`` + ``vote`` in one pass.

    For query q: the ``take`` rows of largest BLAS similarity ``sims[q]`` (the search's
    shortlist), ordered as the search orders them: by the fixed-order score of ``rescore``,
    descending, ties by id. A BLAS similarity is within ``tolerance`` / 2 of that score (the
    caller bounds the float32 rounding error), so rows whose BLAS similarities are further apart
    than ``tolerance`` keep their BLAS order; only runs of rows closer than that are rescored
    and sorted on the exact score. The neighbour of rank r then adds 1 / (r + 2) to
    ``scores[q, label]``, in rank order (what ``visual_memory.vote`` adds). Returns -1, or a
    label that does not fit ``scores``' columns (nothing is then trusted).
    """
    n = sims.shape[1]
    t = min(take, n)
    m = min(k, t)
    rows = np.empty(t, np.int64)
    best = np.empty(t, np.float64)
    sim = np.empty(t, sims.dtype)
    for q in range(sims.shape[0]):
        s = sims[q]
        # the shortlist, sorted by BLAS similarity (descending): insertion into a top-t list
        filled = 0
        for r in range(n):
            v = s[r]
            if filled == t and not v > sim[t - 1]:
                continue
            i = filled if filled < t else t - 1
            if filled < t:
                filled += 1
            while i > 0 and sim[i - 1] < v:
                sim[i] = sim[i - 1]
                rows[i] = rows[i - 1]
                i -= 1
            sim[i] = v
            rows[i] = r
        j = 0
        while j < m:  # runs of near-equal similarities that reach into the top k: exact order
            e = j
            while e + 1 < t and sim[e] - sim[e + 1] <= tolerance:
                e += 1
            if e > j:
                _rescore_row(matrix, rows[j : e + 1], queries[q], best[j : e + 1])
                for u in range(j + 1, e + 1):
                    r, v = rows[u], best[u]
                    i = u - 1
                    while i >= j and (best[i] < v or (best[i] == v and ids[rows[i]] > ids[r])):
                        rows[i + 1], best[i + 1] = rows[i], best[i]
                        i -= 1
                    rows[i + 1], best[i + 1] = r, v
            j = e + 1
        for rank in range(m):
            label = labels[rows[rank]]
            if label < 0 or label >= scores.shape[1]:
                return label
            scores[q, label] += 1.0 / (rank + 2.0)
    return -1
