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


@njit(cache=True)
def rescore(matrix, rows, queries, out):
    """out[q, j] = sum_i matrix[rows[q, j], i] * queries[q, i] in float64, left to right; -inf where rows < 0."""
    for q in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = rows[q, j]
            if r < 0:
                out[q, j] = -np.inf
                continue
            acc = 0.0
            for i in range(matrix.shape[1]):
                acc += np.float64(matrix[r, i]) * np.float64(queries[q, i])
            out[q, j] = acc
