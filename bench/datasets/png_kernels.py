"""Numba kernels for the streaming PNG reader in ``images.py``: row unfiltering, box reduction.

Kept apart from the reader (which owns chunk parsing, zlib and pixel conversion) so each
kernel stays a pure function over arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def unfilter_row(filter_type: int, row: np.ndarray, prior: np.ndarray, bpp: int) -> None:
    """Reconstruct ``row`` (filtered bytes, uint8) given the reconstructed ``prior`` row.

    With a = byte ``bpp`` to the left, b = byte above, c = byte above-left (0 off the edge):
    0 None; 1 Sub x += a; 2 Up x += b; 3 Average x += (a + b) // 2; 4 Paeth x += the one of
    a, b, c closest to p = a + b - c (ties in that order). Arithmetic is modulo 256.
    """
    n = row.shape[0]
    if filter_type == 1:
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif filter_type == 2:
        for i in range(n):
            row[i] = (row[i] + prior[i]) & 0xFF
    elif filter_type == 3:
        for i in range(n):
            a = np.int32(row[i - bpp]) if i >= bpp else np.int32(0)
            row[i] = (np.int32(row[i]) + ((a + np.int32(prior[i])) >> 1)) & 0xFF
    elif filter_type == 4:
        for i in range(n):
            a = np.int32(row[i - bpp]) if i >= bpp else np.int32(0)
            b = np.int32(prior[i])
            c = np.int32(prior[i - bpp]) if i >= bpp else np.int32(0)
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            if pa <= pb and pa <= pc:
                pred = a
            elif pb <= pc:
                pred = b
            else:
                pred = c
            row[i] = (np.int32(row[i]) + pred) & 0xFF


@njit(cache=True)
def box_accumulate(rgba: np.ndarray, factor: int, sums: np.ndarray) -> None:
    """Add rows of RGBA pixels into per-block sums of premultiplied colour and alpha.

    ``rgba`` is (k, w, 4) uint8 with k <= ``factor`` rows of one block row; ``sums`` is
    (ceil(w / factor), 4) float64 and receives, for block j, the sum over its pixels of
    (R*A, G*A, B*A, A) / 255 for the colour channels and A for alpha. Premultiplying keeps the
    colour of fully transparent pixels (often arbitrary) out of the average.
    """
    k, w = rgba.shape[0], rgba.shape[1]
    for r in range(k):
        for x in range(w):
            j = x // factor
            a = np.float64(rgba[r, x, 3])
            sums[j, 0] += rgba[r, x, 0] * a / 255.0
            sums[j, 1] += rgba[r, x, 1] * a / 255.0
            sums[j, 2] += rgba[r, x, 2] * a / 255.0
            sums[j, 3] += a
