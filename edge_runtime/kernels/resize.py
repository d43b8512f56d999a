"""Area (box) downscaling of uint8 images, bit-identical to OpenCV's ``INTER_AREA``, vectorised.

OpenCV shrinks by a non-integer factor (a 504-pixel centre square to 224: 2.25) with a scalar loop:
each source row is summed horizontally into the output columns it covers (weights ``alpha``, in
source order), and those row sums are accumulated into the output rows they cover (weights
``beta``, in source order), in float32, then rounded to nearest-even and saturated. Here the
same two sums run along contiguous memory so LLVM vectorises them: the horizontal one on the
transposed image (``cv2.transpose``), the vertical one on its transposed result. Every output
is the same sequence of float32 multiplies and adds as OpenCV's, so the bytes are equal (tested
against ``cv2.resize``). Integer factors keep OpenCV's own fast path (``area_tables`` is None).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def area_tables(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """OpenCV's ``computeResizeAreaTab`` for one axis as (first tap, tap count, weights) per output.

    ``first[d]`` is the first source index of output ``d``, ``count[d]`` how many follow it, and
    ``weight[d, t]`` the float32 weight of source ``first[d] + t``. None for an integer factor
    (OpenCV's fast path) or an enlargement.
    """
    inv = dst_size / src_size  # as resize() computes inv_scale, then scale = 1 / inv_scale
    scale = 1.0 / inv
    if scale < 1.0 or abs(scale - int(scale)) < np.finfo(np.float64).eps:
        return None
    taps: list[list[tuple[int, float]]] = [[] for _ in range(dst_size)]
    for d in range(dst_size):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src_size - f1)
        s1, s2 = math.ceil(f1), math.floor(f2)
        s2 = min(s2, src_size - 1)
        s1 = min(s1, s2)
        if s1 - f1 > 1e-3:
            taps[d].append((s1 - 1, float(np.float32((s1 - f1) / cell))))
        for s in range(s1, s2):
            taps[d].append((s, float(np.float32(1.0 / cell))))
        if f2 - s2 > 1e-3:
            taps[d].append((s2, float(np.float32(min(min(f2 - s2, 1.0), cell) / cell))))
    width = max(len(t) for t in taps)
    first = np.array([t[0][0] for t in taps], np.int64)
    count = np.array([len(t) for t in taps], np.int64)
    weight = np.zeros((dst_size, width), np.float32)
    for d, t in enumerate(taps):
        if [s for s, _ in t] != list(range(first[d], first[d] + len(t))):
            return None  # not contiguous: never for a shrink, but then leave it to OpenCV
        weight[d, : len(t)] = [w for _, w in t]
    return first, count, weight


@njit(cache=True, nogil=True)
def weighted_rows(src, first, count, weight, out):
    """out[d] = sum over t of weight[d, t] * src[first[d] + t], in t order, from 0 (float32, any dtype src)."""
    n = src.shape[1]
    for d in range(out.shape[0]):
        row = out[d]
        for i in range(n):
            row[i] = np.float32(0.0)
        for t in range(count[d]):
            w = weight[d, t]
            s = src[first[d] + t]
            for i in range(n):
                row[i] += w * np.float32(s[i])


@njit(cache=True, nogil=True)
def weighted_rows_u8(src, first, count, weight, acc, out):
    """As ``weighted_rows`` but the first tap starts the sum (OpenCV's ``sum = beta * buf``) and
    the result is rounded to nearest-even and saturated into uint8 ``out``."""
    n = src.shape[1]
    for d in range(out.shape[0]):
        w = weight[d, 0]
        s = src[first[d]]
        for i in range(n):
            acc[i] = w * s[i]
        for t in range(1, count[d]):
            w = weight[d, t]
            s = src[first[d] + t]
            for i in range(n):
                acc[i] += w * s[i]
        row = out[d]
        for i in range(n):
            v = np.rint(acc[i])
            row[i] = np.uint8(0.0 if v < 0.0 else (255.0 if v > 255.0 else v))


class AreaResize:
    """Shrink square uint8 BGR images of side ``src_size`` to ``dst_size`` exactly as
    ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` does, with preallocated buffers.

    Not thread-safe (the buffers are its own): one per thread. Every step releases the GIL.
    """

    def __init__(self, src_size: int, dst_size: int) -> None:
        import cv2

        self._cv2 = cv2
        self.src_size, self.dst_size = src_size, dst_size
        self.tables = area_tables(src_size, dst_size)
        s, d = src_size, dst_size
        if self.tables is not None:
            self._t = np.empty((s, s, 3), np.uint8)
            self._ht = np.empty((d, s * 3), np.float32)
            self._h = np.empty((s, d, 3), np.float32)
            self._acc = np.empty(d * 3, np.float32)

    def __call__(self, square: np.ndarray, out: np.ndarray) -> np.ndarray:
        cv2, s, d = self._cv2, self.src_size, self.dst_size
        if self.tables is None:  # an integer factor: OpenCV's own (vectorised) fast path
            return cv2.resize(square, (d, d), dst=out, interpolation=cv2.INTER_AREA)
        first, count, weight = self.tables
        cv2.transpose(square, dst=self._t)
        weighted_rows(self._t.reshape(s, s * 3), first, count, weight, self._ht)  # along x, per source row
        cv2.transpose(self._ht.reshape(d, s, 3), dst=self._h)
        weighted_rows_u8(self._h.reshape(s, d * 3), first, count, weight, self._acc, out.reshape(d, d * 3))
        return out
