"""Numba kernels of DMN's memories (arXiv 2403.17589): a per-class ring of features and its read-out.

A memory is four preallocated arrays that a C program could hold as they are:

- ``ring``    (C, L, d) float32: slot l of class c holds an L2-normalised feature M_cl;
- ``entropy`` (C, L) float32: the entropy recorded when the slot was written (replacement rule);
- ``fill``    (C,) int32: slots 0..fill[c]-1 of class c are occupied;
- ``gram``    (C, L, L) float32: G_c[l, m] = M_cl . M_cm, kept current on every write, so that a
  read-out never forms the weighted prototype over d (one pass over the ring instead of two).

Nothing here allocates per call on the batch-1 path; the Python class validates input and owns the
arrays (see ``edge_runtime.adapters.dmn``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def _dot(a, b):
    acc = np.float32(0.0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(cache=True)
def ring_write(ring, entropy, fill, gram, feature, cls, h):
    """Write ``feature`` (entropy ``h``) into class ``cls``'s ring; return the slot, or -1 if refused.

    While the ring has room the next free slot is taken. When it is full the slot of highest
    entropy is replaced, and only if ``h`` is strictly lower (DMN's rule: a memory keeps its most
    confident samples). The Gram row and column of the written slot are refreshed.
    """
    n = fill[cls]
    L = ring.shape[1]
    if n < L:
        slot = n
        fill[cls] = n + 1
        n += 1
    else:
        slot = 0
        for l in range(1, L):
            if entropy[cls, l] > entropy[cls, slot]:
                slot = l
        if h >= entropy[cls, slot]:
            return -1
    ring[cls, slot, :] = feature
    entropy[cls, slot] = h
    for m in range(n):
        g = _dot(ring[cls, m], feature)
        gram[cls, slot, m] = g
        gram[cls, m, slot] = g
    return slot


@njit(cache=True, fastmath=True)
def ring_logits(ring, fill, gram, anchors, feature, beta, scale, skip_cls, skip_slot, weights, out):
    """Write into ``out`` (C,) the logits ``scale * normalize(sum_l a_l M_cl) . f`` for every class.

    a_l = exp(-beta (1 - cos(f, M_cl))) over occupied slots; the slot (skip_cls, skip_slot) is left
    out (pass -1 to skip nothing) so a sample never retrieves its own write. A class with no
    usable slot falls back to its anchor (a unit vector from the prior, e.g. the source class
    mean), so an empty ring neither wins nor loses by default. ``weights`` is (L,) scratch.
    Since f and M_cl are unit vectors, normalize(sum a M) . f = (sum_l a_l s_l) / sqrt(a' G a)
    with s_l = M_cl . f, which needs only the L dot products and the Gram matrix.
    """
    C = ring.shape[0]
    for c in range(C):
        n = fill[c]
        num = np.float32(0.0)
        used = 0
        for l in range(n):
            if c == skip_cls and l == skip_slot:
                weights[l] = 0.0
                continue
            s = _dot(ring[c, l], feature)
            a = np.exp(-beta * (np.float32(1.0) - s))
            weights[l] = a
            num += a * s
            used += 1
        if used == 0:
            out[c] = scale * _dot(anchors[c], feature)
            continue
        norm2 = np.float32(0.0)
        for l in range(n):
            wl = weights[l]
            if wl == 0.0:
                continue
            row = np.float32(0.0)
            for m in range(n):
                row += gram[c, l, m] * weights[m]
            norm2 += wl * row
        out[c] = scale * num / np.sqrt(max(norm2, np.float32(1e-30)))


@njit(cache=True)
def softmax_inplace(logits):
    """logits <- softmax(logits), stable (max subtracted)."""
    top = logits.max()
    total = np.float32(0.0)
    for i in range(logits.shape[0]):
        logits[i] = np.exp(logits[i] - top)
        total += logits[i]
    for i in range(logits.shape[0]):
        logits[i] /= total


@njit(cache=True)
def entropy_of(p):
    """Shannon entropy (nats) of a probability vector, 0 log 0 taken as 0."""
    h = np.float32(0.0)
    for i in range(p.shape[0]):
        if p[i] > 0.0:
            h -= p[i] * np.log(p[i])
    return h


@njit(cache=True)
def dmn_adapt(
    features,
    prior,
    ring,
    entropy,
    fill,
    gram,
    static,
    static_fill,
    static_gram,
    anchors,
    beta,
    scale,
    weight_dynamic,
    weight_static,
    max_entropy,
    skip_own,
    write,
    out,
    weights,
    logits,
):
    """Online DMN over a batch, sample by sample: write, then read without the own slot, then fuse.

    For sample i with prior probabilities p0 = prior[i]: pseudo-label k = argmax p0, entropy
    H(p0); the feature is written into ring k (DMN writes before it reads) if H(p0) <= max_entropy
    (a confidence gate; inf admits everything, as DMN does). The read-out of the
    dynamic memory skips the slot just written (``skip_own``; false reproduces the official code,
    where the sample retrieves itself), the static memory is read whole, and
    out[i] = normalize(p0 + weight_dynamic * p_dyn + weight_static * p_static). With ``write`` false
    the memories are only read (predict_proba). ``weights`` (L,) and ``logits`` (C,) are scratch.
    """
    C = prior.shape[1]
    for i in range(features.shape[0]):
        f = features[i]
        p0 = prior[i]
        k = 0
        for c in range(1, C):
            if p0[c] > p0[k]:
                k = c
        slot = -1
        if write:
            h = entropy_of(p0)
            if h <= max_entropy:
                slot = ring_write(ring, entropy, fill, gram, f, k, h)
        for c in range(C):
            out[i, c] = p0[c]
        if weight_dynamic != 0.0:
            ring_logits(ring, fill, gram, anchors, f, beta, scale, k, slot if skip_own else -1, weights, logits)
            softmax_inplace(logits)
            for c in range(C):
                out[i, c] += weight_dynamic * logits[c]
        if weight_static != 0.0:
            ring_logits(static, static_fill, static_gram, anchors, f, beta, scale, -1, -1, weights, logits)
            softmax_inplace(logits)
            for c in range(C):
                out[i, c] += weight_static * logits[c]
        total = np.float32(0.0)
        for c in range(C):
            total += out[i, c]
        for c in range(C):
            out[i, c] /= total
