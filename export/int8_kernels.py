"""Numba kernels of the int8 network simulation (``simulation.py``): one pass over memory each.

Images are NHWC, so the channel loop is innermost and contiguous. No kernel uses ``fastmath``:
without it LLVM neither reassociates nor fuses a multiply and an add, so every float result is
the same on any x86 or Arm CPU. Sums of integers (codes and weight levels) are exact in float64
in any order; the one float sum (``depthwise_moments``' cross term) runs in a fixed order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

LANES = 8  # interleaved partial sums of a float dot product: one 512-bit register of float64
BLOCK = 2048  # output positions whose patches are held at once (per channel: k*k x BLOCK float64)


@njit(cache=True, parallel=True)
def value_range(acc: np.ndarray, alpha: np.ndarray, beta: np.ndarray, relu6: bool) -> tuple[float, float]:
    """min and max over the tensor of v = acc * alpha_c + beta_c (ReLU6-clipped when ``relu6``),
    acc (P, C) int32; as ``requantize`` computes v."""
    rows, channels = acc.shape
    low = np.zeros(rows)
    high = np.zeros(rows)
    for p in prange(rows):
        lo, hi = np.inf, -np.inf
        for c in range(channels):
            v = acc[p, c] * alpha[c] + beta[c]
            if relu6:
                v = min(max(v, 0.0), 6.0)
            lo, hi = min(lo, v), max(hi, v)
        low[p], high[p] = lo, hi
    return low.min(), high.max()


@njit(cache=True, parallel=True)
def requantize(
    acc: np.ndarray, alpha: np.ndarray, beta: np.ndarray, relu6: bool, step: float, zero: int, codes: np.ndarray
) -> None:
    """codes = clip(rint(v / step) + zero, 0, 255), v = acc * alpha_c + beta_c (ReLU6-clipped when
    ``relu6``): the int8 layer's output on the 8-bit grid of ``step`` and ``zero``."""
    rows, channels = acc.shape
    for p in prange(rows):
        for c in range(channels):
            v = acc[p, c] * alpha[c] + beta[c]
            if relu6:
                v = min(max(v, 0.0), 6.0)
            codes[p, c] = min(max(np.rint(v / step) + zero, 0.0), 255.0)


@njit(cache=True, parallel=True)
def depthwise_conv(
    x: np.ndarray, weight: np.ndarray, kernel: int, stride: int, top: int, left: int, out: np.ndarray
) -> None:
    """out[n, i, j, c] = sum over taps (a, b) of weight[c, a*k + b] x[n, s*i + a - top, s*j + b - left, c],
    zero padding, float64; taps added in order."""
    images, height, width, channels = x.shape
    _, out_h, out_w, _ = out.shape
    for ni in prange(images * out_h):
        n, i = ni // out_h, ni % out_h
        for j in range(out_w):
            for c in range(channels):
                out[n, i, j, c] = 0.0
            for a in range(kernel):
                y = stride * i + a - top
                if y < 0 or y >= height:
                    continue
                for b in range(kernel):
                    xx = stride * j + b - left
                    if xx < 0 or xx >= width:
                        continue
                    t = a * kernel + b
                    for c in range(channels):
                        out[n, i, j, c] += weight[c, t] * np.float64(x[n, y, xx, c])


@njit(cache=True)
def _patches(
    codes: np.ndarray,
    c: int,
    zero: int,
    kernel: int,
    stride: int,
    top: int,
    left: int,
    out_h: int,
    out_w: int,
    first: int,
    rows: int,
    patch: np.ndarray,
) -> int:
    """patch[t, r * out_w + j] = centred code of channel c under tap t of output position (row
    ``first + r`` over images and rows, column j); zero where the tap reads padding, and up to
    the next multiple of LANES after the last position. Returns that padded length."""
    channels, images, height, width = codes.shape
    used = rows * out_w + (-rows * out_w) % LANES
    patch[:, :used] = 0.0
    for r in range(rows):
        n, i = (first + r) // out_h, (first + r) % out_h
        for a in range(kernel):
            y = stride * i + a - top
            if y < 0 or y >= height:
                continue
            for b in range(kernel):
                t = a * kernel + b
                for j in range(out_w):
                    x = stride * j + b - left
                    if 0 <= x < width:
                        patch[t, r * out_w + j] = np.float64(codes[c, n, y, x]) - zero
    return used


def block_shape(out_w: int) -> tuple[int, int]:
    """Output rows per block and the block's padded length (a multiple of LANES)."""
    rows = max(1, BLOCK // out_w)
    return rows, rows * out_w + (-rows * out_w) % LANES


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def depthwise_gram(
    codes: np.ndarray,
    zero: int,
    kernel: int,
    stride: int,
    top: int,
    left: int,
    out_h: int,
    out_w: int,
    rows_per_block: int,
    size: int,
    gram: np.ndarray,
) -> None:
    """Adds, for every channel c, sum over output positions of x x' to gram[c] (k*k, k*k), x the
    centred input patch (codes - zero, padding 0); ``codes`` is channel-major (C, N, H, W).

    Every product and partial sum is an integer below 2^53, exact in float64 in any order: so the
    compiler may reassociate (``fastmath`` reassoc) and vectorise the sums, and the result is
    still the same on every machine."""
    channels = codes.shape[0]
    taps = kernel * kernel
    all_rows = codes.shape[1] * out_h
    for c in prange(channels):
        patch = np.zeros((taps, size))
        g = np.zeros((taps, taps))
        for first in range(0, all_rows, rows_per_block):
            used = _patches(
                codes,
                c,
                zero,
                kernel,
                stride,
                top,
                left,
                out_h,
                out_w,
                first,
                min(rows_per_block, all_rows - first),
                patch,
            )
            for t in range(taps):
                for u in range(t, taps):
                    total = 0.0
                    for q in range(used):
                        total += patch[t, q] * patch[u, q]
                    g[t, u] += total
        for t in range(taps):
            for u in range(t, taps):
                gram[c, t, u] += g[t, u]
                if u != t:
                    gram[c, u, t] += g[t, u]


@njit(cache=True, parallel=True)
def depthwise_cross(
    codes: np.ndarray,
    zero: int,
    f: np.ndarray,
    kernel: int,
    stride: int,
    top: int,
    left: int,
    out_h: int,
    out_w: int,
    rows_per_block: int,
    size: int,
    cross: np.ndarray,
) -> None:
    """Adds sum over output positions p of f[c, p] x_p to cross[c] (k*k) for every channel c, x_p
    the centred input patch; ``codes`` channel-major (C, N, H, W), ``f`` (C, P) float64.

    A float sum: taken in LANES interleaved partial sums, then those in order, a fixed order that
    vectorises without reassociation."""
    channels = codes.shape[0]
    taps = kernel * kernel
    all_rows = codes.shape[1] * out_h
    for c in prange(channels):
        patch = np.zeros((taps, size))
        weights = np.zeros(size)
        h = np.zeros((taps, LANES))
        for first in range(0, all_rows, rows_per_block):
            rows = min(rows_per_block, all_rows - first)
            used = _patches(codes, c, zero, kernel, stride, top, left, out_h, out_w, first, rows, patch)
            weights[:used] = 0.0
            weights[: rows * out_w] = f[c, first * out_w : (first + rows) * out_w]
            for t in range(taps):
                for q0 in range(0, used, LANES):
                    for lane in range(LANES):
                        h[t, lane] += weights[q0 + lane] * patch[t, q0 + lane]
        for t in range(taps):
            for lane in range(LANES):
                cross[c, t] += h[t, lane]


@njit(cache=True, parallel=True)
def coordinate_descent(
    levels: np.ndarray,
    low: np.ndarray,
    movable: np.ndarray,
    scale: np.ndarray,
    grad: np.ndarray,
    hessian: np.ndarray,
    qmax: int,
    passes: int,
) -> None:
    """Flips levels[r, j] between low and low + 1 while that lowers dW' H dW + 2 dW' l, in place.

    Row by row (rows are independent), inputs j in order, at most ``passes`` sweeps; a flip of
    step s = (new - old) * scale_r is kept when 2 s g_j + s^2 H_jj < 0, and then g += s H_j.
    ``hessian`` is (1, n, n) when shared by the rows, else (rows, n, n); ``grad`` (rows, n) is
    dW H + l and is updated in place."""
    rows, n = levels.shape
    for r in prange(rows):
        which = min(np.int64(r), hessian.shape[0] - 1)  # the row's own H, or the shared one
        for _ in range(passes):
            flipped = False
            for j in range(n):
                if not movable[r, j]:
                    continue
                other = low[r, j] + 1.0 if levels[r, j] == low[r, j] else low[r, j]
                if abs(other) > qmax:
                    continue
                step = (other - levels[r, j]) * scale[r]
                if 2 * step * grad[r, j] + step * step * hessian[which, j, j] < 0:
                    levels[r, j] = other
                    flipped = True
                    for m in range(n):
                        grad[r, m] += step * hessian[which, j, m]
            if not flipped:
                break
