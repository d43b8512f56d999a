"""MemFlow's network: input normalisation, the bridges' gather layout and spiking propagation.

Symbols and the propagation rule: ``edge_runtime.kernels.memflow``'s docstring.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edge_runtime.kernels.common import FAST

_GROUP = 64  # bridges per group of equal gather widths (see ``bridge_links``)


@njit(cache=True, error_model="numpy")
def normalise(x: np.ndarray, z: np.ndarray) -> int:
    """z = x / ||x||. Returns 0 on success, 1 if x holds NaN/inf, 2 if x is all zero.

    A NaN or inf anywhere makes the float64 sum of squares non-finite (float32 values cannot
    overflow it), so one check after the loop finds bad input and the loop has no branch. No
    fastmath here: under "reassoc" LLVM folds the finiteness test away.

    >>> z = np.empty(2, np.float32)
    >>> normalise(np.array([3, 4], np.float32), z), z
    (0, array([0.6, 0.8], dtype=float32))
    """
    # Four running sums, so the additions are not one dependent chain of d (without "reassoc"
    # LLVM keeps the written order; a single chain costs d times the add latency).
    sq0 = sq1 = sq2 = sq3 = 0.0
    d = x.shape[0]
    for j in range(0, d - 3, 4):
        v0, v1 = np.float64(x[j]), np.float64(x[j + 1])  # float(x[j]) would stay float32 (overflow)
        v2, v3 = np.float64(x[j + 2]), np.float64(x[j + 3])
        sq0 += v0 * v0
        sq1 += v1 * v1
        sq2 += v2 * v2
        sq3 += v3 * v3
    for j in range(d - d % 4, d):
        v = np.float64(x[j])
        sq0 += v * v
    sq = (sq0 + sq1) + (sq2 + sq3)
    if not math.isfinite(sq):
        return 1
    if sq == 0.0:
        return 2
    inv = 1.0 / math.sqrt(sq)
    for j in range(x.shape[0]):
        z[j] = x[j] * inv
    return 0


@njit(cache=True, error_model="numpy")
def bridge_links(
    bridge_src: np.ndarray, bridge_w: np.ndarray, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bridges' in-links split by kind, for ``propagate``: derived from the graph, never stored.

    Bridges are visited in ``order``, sorted by their number of links from neurons (stable), in
    groups of ``_GROUP``; each group's links from entries and from neurons are padded (weight 0 on
    node 0) to the group's largest count, ``entry_width[g]`` and ``rec_width[g]``. Row q of
    ``entry_src``/``entry_w`` (entry numbers) and ``rec_src``/``rec_w`` (neuron numbers) holds
    bridge order[q]'s links in their original order. The counts are complementary (they sum to
    the in-degree), so one sort makes both kinds nearly uniform within a group: each gather
    loop has a fixed trip count per group (a per-bridge count was mispredicted at every loop
    exit), and about a third fewer links are read than with every bridge padded to the largest.

    >>> src = np.array([[0, 5, 4], [3, 1, 2]], np.int32)  # d = 3 entries, then neurons 0, 1, 2
    >>> order, entry_width, entry_src, entry_w, rec_width, rec_src, rec_w = bridge_links(
    ...     src, np.arange(1, 7, dtype=np.float32).reshape(2, 3), 3)
    >>> order, entry_width, rec_width  # bridge 1 has one link from a neuron, bridge 0 two
    (array([1, 0], dtype=int32), array([2], dtype=int32), array([2], dtype=int32))
    >>> entry_src, entry_w
    (array([[1, 2],
           [0, 0]], dtype=int32), array([[5., 6.],
           [1., 0.]], dtype=float32))
    >>> rec_src, rec_w
    (array([[0, 0],
           [2, 1]], dtype=int32), array([[4., 0.],
           [2., 3.]], dtype=float32))
    """
    n_bridge, in_degree = bridge_src.shape
    rec_count = np.zeros(n_bridge, np.int64)
    for b in range(n_bridge):
        for s in range(in_degree):
            if bridge_src[b, s] >= d:
                rec_count[b] += 1
    order = np.argsort(rec_count, kind="mergesort").astype(np.int32)
    n_groups = (n_bridge + _GROUP - 1) // _GROUP
    entry_width = np.zeros(n_groups, np.int32)
    rec_width = np.zeros(n_groups, np.int32)
    for q in range(n_bridge):
        g = q // _GROUP
        rec_width[g] = max(rec_width[g], rec_count[order[q]])
        entry_width[g] = max(entry_width[g], in_degree - rec_count[order[q]])
    entry_src = np.zeros((n_bridge, max(entry_width.max(), 1)), np.int32)
    entry_w = np.zeros(entry_src.shape, np.float32)
    rec_src = np.zeros((n_bridge, max(rec_width.max(), 1)), np.int32)
    rec_w = np.zeros(rec_src.shape, np.float32)
    for q in range(n_bridge):
        b, e, r = order[q], 0, 0
        for s in range(in_degree):
            if bridge_src[b, s] < d:
                entry_src[q, e], entry_w[q, e] = bridge_src[b, s], bridge_w[b, s]
                e += 1
            else:
                rec_src[q, r], rec_w[q, r] = bridge_src[b, s] - d, bridge_w[b, s]
                r += 1
    return order, entry_width, entry_src, entry_w, rec_width, rec_src, rec_w


@njit(cache=True, error_model="numpy", fastmath=FAST)
def propagate(
    z: np.ndarray,
    w_entry_hub: np.ndarray,
    w_hub_hub: np.ndarray,
    order: np.ndarray,
    entry_width: np.ndarray,
    entry_src: np.ndarray,
    entry_w: np.ndarray,
    rec_width: np.ndarray,
    rec_src: np.ndarray,
    rec_w: np.ndarray,
    rounds: int,
    spiking: bool,
    a: np.ndarray,
    h: np.ndarray,
    o: np.ndarray,
    o_prev: np.ndarray,
    m: np.ndarray,
) -> None:
    """Traces m (N,) of one centred feature z (d,); a, h, o, o_prev are (N,) work buffers; the
    bridges' links come from ``bridge_links``.

    Entry current a_i = sum_j z_j W_ji; then T synchronous rounds of graded spikes with reset (see
    the module docstring).
    """
    n_hub, d = w_entry_hub.shape
    n_bridge = order.shape[0]
    for i in range(n_hub):
        acc = np.float32(0.0)
        for j in range(d):
            acc += w_entry_hub[i, j] * z[j]
        a[i] = acc
    for q in range(n_bridge):
        acc = np.float32(0.0)
        for s in range(entry_width[q // _GROUP]):
            acc += entry_w[q, s] * z[entry_src[q, s]]
        a[n_hub + order[q]] = acc
    n = n_hub + n_bridge
    if not spiking:
        for i in range(n):
            m[i] = a[i]
        return
    for i in range(n):
        h[i] = 0.0
        m[i] = 0.0
    for t in range(rounds):
        if t == 0:  # no spikes yet: the entry current alone
            for i in range(n):
                h[i] += a[i]
        else:
            for i in range(n_hub):
                acc = a[i]
                for j in range(n_hub):
                    acc += w_hub_hub[i, j] * o_prev[j]
                h[i] += acc
            for q in range(n_bridge):
                i = n_hub + order[q]
                acc = a[i]
                for s in range(rec_width[q // _GROUP]):
                    acc += rec_w[q, s] * o_prev[rec_src[q, s]]
                h[i] += acc
        # Fire (o = h > 0) and reset (h = min(h, 0)) written with np.maximum / np.minimum: the
        # equivalent "x if cond else h[i]" becomes a masked store, which is microcoded and
        # several times slower on AMD Zen.
        for i in range(n):
            o[i] = np.maximum(h[i], np.float32(0.0))
            h[i] = np.minimum(h[i], np.float32(0.0))
            m[i] += o[i]
        for i in range(n):
            o_prev[i] = o[i]
