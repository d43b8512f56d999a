"""MemFlow kernels: spiking propagation, Gaussian memory, confidence-weighted retrieval, reinforcement.

Plain ``@njit(cache=True, error_model="numpy")`` functions over arrays;
``edge_runtime.adapters.memflow.MemFlow`` validates input, owns the state and the preallocated
work buffers these kernels write into, so a batch-1 call allocates nothing here. numpy's error
model leaves divisions unchecked for zero (every divisor here is positive by construction), so
loops with a division vectorise: the check alone made the spread stage's 1280 divisions and
square roots scalar (4 µs instead of 1), and cost 6-9% of a whole adapt.

Symbols follow the paper (Lv et al., arXiv 2402.14598):

- Network: entry nodes carry the (centred) feature z; H hub and B bridge nodes are the neurons
  i = 0..N-1 (N = H + B; hubs first). Weights come from ``edge_runtime.kernels.prng.make_graph``.
- Propagation, T rounds, synchronous: the entry nodes drive every round with the constant current
  a_i = sum_j z_j W_ji (computed once). Round t: h_i <- h_i + a_i + sum_{j neuron} o_j^(t-1) W_ji;
  graded spike with reset: if h_i > 0 then o_i = h_i and h_i = 0, else o_i = 0; trace m_i += o_i.
  Without spiking (the ablation's "plain random projection") m_i = a_i.
- Memory, per neuron i and class k, two sets of sufficient statistics (weighted count, sum, sum of
  squares), shape (3, K, N), float64: the source set S (labelled; ``fit``/``teach``) and the target
  set R (reinforcement, an EMA per class). Sums merge two memories of one network by addition.
- Gaussian per (k, i): mu_ki = (alpha_ki S1 + R1) / (alpha_ki S0 + R0) with alpha_ki = s / S0_ki, so
  the source counts as s pseudo-samples per class however much source there was, and R0, an EMA,
  saturates at 1 / (1 - gamma): the source can never be washed out. The derived Gaussians (mu,
  and 1 / (2 V) and the log normaliser) are held neuron-major, (N, K), the order the read-out
  walks them.
  Variance: pooled within-class variance of the source (per neuron), or per class from S and R;
  floored at ``floor * tv_i`` (tv_i = total source variance of neuron i).
- Blurred memory: convolving N(mu, sigma^2) with the kernel N(0, sigma_1^2 / 2) gives the paper's
  Q(m | k) ~ exp(-(m - mu)^2 / (2 sigma^2 + sigma_1^2)); sigma_1 = blur * sqrt(tv_i), per neuron,
  so one blur value fits neurons of any scale. V_ki = sigma_ki^2 + sigma_1i^2 / 2 and
  log Q(m_i | k) = -(m_i - mu_ki)^2 / (2 V_ki) - log(2 pi V_ki) / 2.
- Confidence c_i = Q(m_i | K_i) at the neuron's best class K_i (or 1 when switched off).
- Retrieval, "mixture" (the paper): Pr(k | x) ~ (sum_i c_i Pr(k | m_i) / sum_i c_i)^(1 / tau) with
  Pr(k | m_i) = Q_ki / sum_c Q_ci (tau = 1 is the paper; a calibrated tau makes the flat vote
  a usable confidence for the reinforcement gate). "product": the confidence-weighted mean log-likelihood,
  logit_k = sum_i c_i log Q(m_i | k) / (tau sum_i c_i), Pr = softmax(logit): a product of experts.
- Alignment (label-free, so it moves every class alike and cannot feed a self-confirming class):
  the input z = x/||x|| is mapped back to the source by the running statistics of the frames
  before it (``edge_runtime.kernels.align``: centre, optional per-dimension spread, low-rank
  covariance, novelty weights); after propagation m_i <- m_i + mu^s_i - mu^t_i (source mean
  trace vs. its running mean on the target, same prior, decay and weights). A frame joins the
  statistics after it is classified.
- Source-head prior (optional): Pr(k | x) ~ softmax(W f + b)_k Pr_mem(k | x)^memory_weight with
  (W, b) the source linear head and f = z / factor + mu_s the aligned feature without the spread
  factor (with the default fading EMA and no subspace map, exactly the ``shift`` baseline's
  feature), optionally rescaled to unit norm, as the head's training features were.
- Reinforced memorisation: pseudo-label k* = argmax Pr(k | x); when p* = Pr(k* | x) >= gate and
  the memory alone and the head alone also pick k* (agreement of two views),
  E_i = exp(-(m_i - mu_k*i)^2 / (2 V_k*i)) (the paper's Q(m_i | k*) without its normalising factor,
  so that 0 < E_i <= 1; E_i = 1 without the confidence-weighted update) and, for class k* only,
  R_k*i <- gamma R_k*i + p* E_i (1, m_i, m_i^2); then class k*'s Gaussians are refreshed, O(N).
- Temporal filter (optional, ``edge_runtime.kernels.temporal``): while adapting, the posterior is
  read with the last frame's (an HMM forward pass whose stay probability is measured on the
  stream). It runs after reinforcement, which learns from the frame's own posterior.

``run_batch`` takes the state as a few named tuples (``Stage``, ``Net``, ``Memory``, ``Head``,
``Temporal``, ``Work``); every other kernel is a plain function over arrays.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from edge_runtime.kernels import align
from edge_runtime.kernels.temporal import step as temporal_step

_LOG_2PI = math.log(2.0 * math.pi)
# Reassociation lets LLVM vectorise the dot products and sums; NaN/inf semantics are kept (no
# "nnan"/"ninf") because absent classes are -inf and input checks must see NaN.
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_LOG2E = np.float32(1.4426950408889634)
_LN2 = np.float32(math.log(2.0))
# A neuron whose best class is more than this (log2 units) below the read-out's reference is
# redone against its best class (see ``retrieve``): up to it, every class within 67 of the best
# stays above ``_exp2``'s floor of 2^-125, and one further below weighs < 2^-67 anyway.
_FAR = np.float32(58.0)
_GROUP = 64  # bridges per group of equal gather widths (see ``bridge_links``)
_BLOCK = 32  # neurons summed in float32 before the read-out's float64 vote takes them
# 2^f on [0, 1] = 1 + f (c1 + f (c2 + ... + f c5)): near-minimax relative error (a Lawson-reweighted
# least-squares fit with c0 = 1 fixed), 1.6e-7 evaluated in float32 (about one float32 ulp; the
# degree-8 Taylor series it replaced: 1.3e-7 with three multiply-adds more).
_C = tuple(np.float32(c) for c in (0.69315131, 0.24016445, 0.05579991, 0.00901703, 0.00186713))


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _exp2(t: float) -> np.float32:
    """2^t in float32 for t <= 0 (t below -125 gives 2^-125, i.e. ~0): t = n + f with
    n = floor(t), 2^f by polynomial on [0, 1], times 2^n built in the exponent field of a float's
    bits. Branch-free, call-free and all in 32-bit lanes (np.floor keeps n a float32:
    math.floor would make it an int64, which AVX2 cannot convert in vector registers), so LLVM
    vectorises the loops that use it; numba has no vector exp without SVML."""
    t = max(np.float32(t), np.float32(-125.0))
    n = np.floor(t)
    f = np.float32(t - n)
    p = np.float32(1.0) + f * (_C[0] + f * (_C[1] + f * (_C[2] + f * (_C[3] + f * _C[4]))))
    return p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


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
def bridge_links(bridge_src: np.ndarray, bridge_w: np.ndarray, d: int
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


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def propagate(z: np.ndarray, w_entry_hub: np.ndarray, w_hub_hub: np.ndarray, order: np.ndarray,
              entry_width: np.ndarray, entry_src: np.ndarray, entry_w: np.ndarray, rec_width: np.ndarray,
              rec_src: np.ndarray, rec_w: np.ndarray, rounds: int, spiking: bool, a: np.ndarray,
              h: np.ndarray, o: np.ndarray, o_prev: np.ndarray, m: np.ndarray) -> None:
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


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _gaps(m_i: float, i: int, ref: float, mu: np.ndarray, hiv: np.ndarray, lnorm: np.ndarray,
          per_class: bool, present: np.ndarray, masked: bool, row: np.ndarray) -> float:
    """row[k] = u_ik = (ref - ll_ik) log2(e) >= 0 for neuron i (+inf for an absent class), with
    ref = max_k lnorm_ik (pooled: lnorm_i0), an upper bound of every ll_ik; returns min_k u_ik.
    The minimum is taken over the bits of the non-negative floats, whose order as integers is
    the float order: an integer minimum vectorises with no NaN guard (np.maximum costs six
    instructions, builtin max becomes a masked store); abs() keeps a -0.0 from reading as the
    largest."""
    lowest = np.int32(0x7F800000)  # +inf
    if per_class:
        for k in range(mu.shape[1]):
            diff = m_i - mu[i, k]
            u = abs((ref - lnorm[i, k] + diff * diff * hiv[i, k]) * _LOG2E)
            row[k] = u
            lowest = np.minimum(lowest, np.float32(u).view(np.int32))
    else:
        s = hiv[i, 0] * _LOG2E
        for k in range(mu.shape[1]):
            diff = m_i - mu[i, k]
            u = abs(diff * diff * s)
            row[k] = u
            lowest = np.minimum(lowest, np.float32(u).view(np.int32))
    if not masked:
        return np.int32(lowest).view(np.float32)
    low = np.float32(np.inf)  # absent classes (fitted without examples) take no part
    for k in range(mu.shape[1]):
        if present[k]:
            low = min(low, row[k])
        else:
            row[k] = np.inf
    return low


@njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _likelihoods(m_i: float, i: int, mu: np.ndarray, hiv: np.ndarray, row: np.ndarray) -> tuple[float, float]:
    """Pooled variances, every class present: row[k] = exp(ll_ik - lnorm_i) = 2^-u_ik and
    (min_k u_ik, sum_k row[k]) in one vectorised loop (the read-out's hot path; see ``_gaps``)."""
    s = hiv[i, 0] * _LOG2E
    lowest = np.int32(0x7F800000)
    norm = np.float32(0.0)
    for k in range(mu.shape[1]):
        diff = m_i - mu[i, k]
        u = abs(diff * diff * s)
        lowest = np.minimum(lowest, np.float32(u).view(np.int32))
        v = _exp2(-u)
        row[k] = v
        norm += v
    return np.int32(lowest).view(np.float32), norm


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def scores(m: np.ndarray, mu: np.ndarray, hiv: np.ndarray, lnorm: np.ndarray, per_class: bool,
           present: np.ndarray, alive: np.ndarray, product: bool, confidence: bool, tau: float,
           row: np.ndarray, part: np.ndarray, vote: np.ndarray, out: np.ndarray) -> None:
    """The read-out's log class probabilities up to a common constant, ``out`` (K,), -inf for an
    absent class (``retrieve`` normalises them), from traces m (N,); mu, hiv and lnorm are neuron-major
    (N, K) (pooled variances: every column is the same); row and part (K,) float32 and vote (K,)
    float64 are work buffers. The vote is summed over hundreds of neurons and then raised to
    1 / tau (~75): summed in float32 it differed from a float64 reference by up to 2e-4
    relative, so it is summed in float32 blocks of ``_BLOCK`` neurons (``part``) added up in
    float64 (4e-6), nearly at float32 speed.

    ll_ik = lnorm_ik - (m_i - mu_ik)^2 hiv_ik with hiv = 1 / (2 V), lnorm = -log(2 pi V / tv_i) / 2
    (the density of the standardised trace m_i / sqrt(tv_i), so confidences compare across neurons
    of different scale); c_i = alive_i exp(best_i - max_i best_i) with best_i = max_k ll_ik (the
    confidence Q(m_i | K_i) up to a common factor; alive_i = 0 for a neuron that never varied on
    the source); then the "product" or "mixture" read-out of the module docstring. Absent classes
    get 0.

    One pass over the memory, neuron by neuron, with its K values in L1: the common factor of the
    confidences is the running maximum of best_i, and the sums already made are rescaled when it
    grows (as in an online softmax; about log N times per frame), so nothing of size K x N is
    written. On the hot path (pooled, all classes present) the mixture's exponentials are taken
    against ref = lnorm_i in the same loop that finds best_i; a neuron whose best class lies
    ``_FAR`` below (a trace many deviations from every class) is redone against its best class,
    so float32 underflow never empties its posterior.
    """
    n, n_classes = mu.shape
    masked = False
    for k in range(n_classes):
        vote[k] = 0.0
        part[k] = 0.0
        masked |= not present[k]
    fast = not (product or per_class or masked)
    top = np.float32(-np.inf)
    c_sum = 0.0
    filled = 0
    for i in range(n):
        if alive[i] == 0.0:
            continue
        ref = lnorm[i, 0]
        if per_class:
            for k in range(1, n_classes):
                ref = max(ref, lnorm[i, k])
        norm = np.float32(0.0)
        if fast:
            lowest, norm = _likelihoods(m[i], i, mu, hiv, row)
        if not fast or lowest > _FAR:
            lowest = _gaps(m[i], i, ref, mu, hiv, lnorm, per_class, present, masked, row)
            if not product:  # exponentials against the best class, which weighs 1
                norm = np.float32(0.0)
                for k in range(n_classes):
                    row[k] = _exp2(lowest - row[k])
                    norm += row[k]
        c_i = np.float32(1.0)
        if confidence:
            best = ref - lowest * _LN2
            if best > top:
                if c_sum > 0.0:
                    shrink = _exp2((top - best) * _LOG2E)
                    c_sum *= shrink
                    for k in range(n_classes):
                        vote[k] *= shrink
                        part[k] *= shrink
                top = best
            c_i = _exp2((best - top) * _LOG2E)
        c_sum += c_i
        if product:  # row holds u_ik: ll_ik = ref - u_ik ln 2
            for k in range(n_classes):
                part[k] += c_i * (ref - row[k] * _LN2)
        else:
            w_i = c_i / norm
            for k in range(n_classes):
                part[k] += w_i * row[k]
        filled += 1
        if filled == _BLOCK:
            for k in range(n_classes):
                vote[k] += part[k]
                part[k] = 0.0
            filled = 0
    for k in range(n_classes):
        vote[k] += part[k]
    if product:  # logit_k = sum_i c_i ll_ik / (tau sum_i c_i); Pr = softmax(logit)
        for k in range(n_classes):
            out[k] = vote[k] / (c_sum * tau) if present[k] else -np.inf
        return
    # Pr ~ vote^(1 / tau): the (flat) vote sharpened by the calibrated temperature; sum_i c_i
    # cancels in the normalisation.
    hi = 0.0
    for k in range(n_classes):
        if present[k]:
            hi = max(hi, vote[k])
    for k in range(n_classes):
        out[k] = math.log(vote[k] / hi) / tau if present[k] and vote[k] > 0.0 else -np.inf


@njit(cache=True, error_model="numpy")
def softmax(out: np.ndarray) -> None:
    """out <- exp(out - max) / sum, in place (-inf entries give 0)."""
    hi = -np.inf
    for k in range(out.shape[0]):
        hi = max(hi, out[k])
    total = 0.0
    for k in range(out.shape[0]):
        out[k] = math.exp(out[k] - hi)
        total += out[k]
    for k in range(out.shape[0]):
        out[k] /= total


@njit(cache=True, error_model="numpy")
def retrieve(m: np.ndarray, mu: np.ndarray, hiv: np.ndarray, lnorm: np.ndarray, per_class: bool,
             present: np.ndarray, alive: np.ndarray, product: bool, confidence: bool, tau: float,
             row: np.ndarray, part: np.ndarray, vote: np.ndarray, out: np.ndarray) -> None:
    """Class probabilities ``out`` (K,) of the memory alone (``scores``, normalised)."""
    scores(m, mu, hiv, lnorm, per_class, present, alive, product, confidence, tau, row, part, vote, out)
    softmax(out)


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def combine_prior(z: np.ndarray, centre_source: np.ndarray, factor: np.ndarray, prior_w: np.ndarray,
                  prior_b: np.ndarray, scale: float, memory_weight: float, unit: bool, f: np.ndarray,
                  work: np.ndarray, out: np.ndarray) -> int:
    """Product with the source linear head's posterior on the shifted feature, taken in the log
    domain: ``out`` holds the memory's log scores (``scores``) and receives
    Pr(k | x) ~ exp(scale (W f + b)_k) Pr_mem(k | x)^memory_weight, f = z / factor + mu_s (the
    aligned feature; ``factor`` is the input stage's, see ``edge_runtime.kernels.align.stage``),
    rescaled to unit norm when ``unit`` (the head was fitted on unit-norm features; the ``shift``
    baseline reads it so too). ``f`` (d,) and ``work`` (>= K) are buffers. Returns the head's own
    argmax."""
    n_classes, d = prior_w.shape
    sq = 0.0
    for j in range(d):
        f[j] = z[j] / factor[j] + centre_source[j]
        sq += f[j] * f[j]
    if unit and sq > 0.0:
        inv = 1.0 / math.sqrt(sq)
        for j in range(d):
            f[j] *= inv
    hi = -np.inf
    best = 0
    for k in range(n_classes):
        acc = prior_b[k]
        for j in range(d):
            acc += prior_w[k, j] * f[j]
        work[k] = acc
        if acc > hi:
            hi = acc
            best = k
    for k in range(n_classes):  # a class the memory rules out stays out, whatever memory_weight
        out[k] = scale * work[k] + memory_weight * out[k] if out[k] > -np.inf else -np.inf
    softmax(out)
    return best


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def shift_traces(m: np.ndarray, trace_mean: np.ndarray, trace_sum: np.ndarray, weight: float,
                 prior: float, gamma: float, learn: bool, w: float) -> None:
    """The shift stage again, on the neurons: m_i <- m_i + mu^s_i - mu^t_i with mu^s_i the source
    mean trace and mu^t_i its running mean on the target over the frames before this one (total
    weight ``weight``), pulled to mu^s_i by ``prior`` pseudo-frames; with ``learn`` the unshifted
    trace joins the sum afterwards with the frame's weight ``w`` (EMA factor gamma), as the input
    statistics do (``edge_runtime.kernels.align``). Label-free, so it moves every class alike: it
    cannot feed a self-confirming class."""
    total = prior + weight
    inv = 1.0 / total if total > 0.0 else 0.0
    keep = 1.0 if total > 0.0 else 0.0  # no weight at all: no shift
    for i in range(m.shape[0]):
        raw = m[i]
        m[i] += keep * (trace_mean[i] - (prior * trace_mean[i] + trace_sum[i]) * inv)
        if learn:
            trace_sum[i] = gamma * trace_sum[i] + w * raw


@njit(cache=True, error_model="numpy")
def argmax(values: np.ndarray) -> int:
    best = 0
    for k in range(values.shape[0]):
        if values[k] > values[best]:
            best = k
    return best


@njit(cache=True, error_model="numpy")
def memorise(m: np.ndarray, k: int, weight: float, stats: np.ndarray) -> None:
    """Add one labelled trace to the sufficient statistics: stats[:, k, i] += w (1, m_i, m_i^2)."""
    for i in range(m.shape[0]):
        v = float(m[i])
        stats[0, k, i] += weight
        stats[1, k, i] += weight * v
        stats[2, k, i] += weight * v * v


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def reinforce(m: np.ndarray, k: int, weight: float, gamma: float, confidence_update: bool,
              mu: np.ndarray, hiv: np.ndarray, target: np.ndarray) -> None:
    """EMA update of class k's target statistics: R_ki <- gamma R_ki + weight E_i (1, m_i, m_i^2),
    E_i = exp(-(m_i - mu_ki)^2 hiv_ki) with the confidence-weighted update, else 1 (E_i by the
    vectorisable ``_exp2``: a float32 weight is ample, the sums stay float64)."""
    for i in range(m.shape[0]):
        v = float(m[i])
        e = weight
        if confidence_update:
            diff = m[i] - mu[i, k]
            e *= _exp2(-diff * diff * hiv[i, k] * _LOG2E)
        target[0, k, i] = gamma * target[0, k, i] + e
        target[1, k, i] = gamma * target[1, k, i] + e * v
        target[2, k, i] = gamma * target[2, k, i] + e * v * v


@njit(cache=True, error_model="numpy")
def refresh_class(k: int, source: np.ndarray, target: np.ndarray, source_weight: float,
                  per_class: bool, tv: np.ndarray, floor_v: np.ndarray, blur_v: np.ndarray,
                  mu: np.ndarray, hiv: np.ndarray, lnorm: np.ndarray, present: np.ndarray) -> None:
    """Recompute class k's Gaussians (mu, and V when per class) from the statistics, O(N).

    alpha_ki = source_weight / S0_ki (1 when source_weight <= 0: raw counts); n = alpha S0 + R0;
    mu = (alpha S1 + R1) / n; per class V = max((alpha S2 + R2) / n - mu^2, floor_v) + blur_v.
    In pooled mode hiv and lnorm hold the fixed pooled source variance and are left alone.
    """
    any_mass = False
    for i in range(mu.shape[0]):
        s0 = source[0, k, i]
        alpha = 1.0
        if source_weight > 0.0 and s0 > 0.0:
            alpha = source_weight / s0
        n = alpha * s0 + target[0, k, i]
        if n <= 0.0:
            mu[i, k] = 0.0
            continue
        any_mass = True
        mean = (alpha * source[1, k, i] + target[1, k, i]) / n
        mu[i, k] = mean
        if per_class:
            var = (alpha * source[2, k, i] + target[2, k, i]) / n - mean * mean
            if var < floor_v[i]:
                var = floor_v[i]
            v = var + blur_v[i]
            hiv[i, k] = 0.5 / v
            lnorm[i, k] = -0.5 * (_LOG_2PI + math.log(v / tv[i]))
    present[k] = any_mass


class Stage(NamedTuple):
    """The input and neuron shift stages: switches, source statistics, running sums (see
    ``edge_runtime.kernels.align`` and ``shift_traces``)."""

    shift: bool
    spread: bool
    prior: float  # source pseudo-frames
    fade: bool
    gamma: float  # EMA factor of every running sum
    rho: float  # novelty scale (0: every frame weighs 1)
    every: int  # frames between refreshes of the subspace map
    centre_source: np.ndarray  # (d,) float32
    scale: np.ndarray  # (d,) float32
    input_var: np.ndarray  # (d,) source variance
    basis: np.ndarray  # (r, d) float32, source principal directions
    basis_var: np.ndarray  # (r,) source variance along them
    sums: np.ndarray  # (d,)
    squares: np.ndarray  # (d,)
    weight: np.ndarray  # (1,)
    proj_sum: np.ndarray  # (r,)
    proj_sq: np.ndarray  # (r, r)
    mix: np.ndarray  # (r, r) float32, A - I
    recent: np.ndarray  # (d,) float32, short EMA of the frames (novelty)
    frames: np.ndarray  # (1,) int64, frames learnt from
    trace_mean: np.ndarray  # (N,) source mean trace
    trace_sum: np.ndarray  # (N,)


class Net(NamedTuple):
    """The fixed random network (``bridge_links`` splits the bridges' links)."""

    w_entry_hub: np.ndarray
    w_hub_hub: np.ndarray
    order: np.ndarray
    entry_width: np.ndarray
    entry_src: np.ndarray
    entry_w: np.ndarray
    rec_width: np.ndarray
    rec_src: np.ndarray
    rec_w: np.ndarray
    rounds: int
    spiking: bool


class Memory(NamedTuple):
    """Statistics, the Gaussians derived from them, the read-out and reinforcement settings."""

    source: np.ndarray  # (3, K, N)
    target: np.ndarray  # (3, K, N)
    source_weight: float
    per_class: bool
    tv: np.ndarray
    floor_v: np.ndarray
    blur_v: np.ndarray
    alive: np.ndarray
    mu: np.ndarray  # (N, K)
    hiv: np.ndarray  # (N, K)
    lnorm: np.ndarray  # (N, K)
    present: np.ndarray  # (K,)
    product: bool
    confidence: bool
    tau: float
    reinforce: bool
    gate: float
    gamma: float
    confidence_update: bool


class Head(NamedTuple):
    """The source linear head the memory's posterior is multiplied with (``combine_prior``)."""

    on: bool
    w: np.ndarray  # (K, d)
    b: np.ndarray  # (K,)
    scale: float  # of the head's logits
    memory_weight: float
    unit: bool


class Temporal(NamedTuple):
    """The temporal filter's settings and state (``edge_runtime.kernels.temporal``)."""

    on: bool
    class_prior: np.ndarray  # (K,)
    belief: np.ndarray  # (K,)
    history: np.ndarray  # (L, K) float32, the last L frames' own posteriors
    moments: np.ndarray  # (7,)
    frames: np.ndarray  # (1,) int64
    gamma: float
    trust: float
    most: float


class Work(NamedTuple):
    """Per-frame buffers: a batch-1 call allocates nothing."""

    centre: np.ndarray  # (d,) float32
    factor: np.ndarray  # (d,) float32
    z: np.ndarray  # (d,) float32
    a: np.ndarray  # (N,) float32, and h, o, o_prev, m
    h: np.ndarray
    o: np.ndarray
    o_prev: np.ndarray
    m: np.ndarray
    row: np.ndarray  # (K,) float32, and part
    part: np.ndarray
    vote: np.ndarray  # (K,) float64
    logits: np.ndarray  # (K,) float32
    y: np.ndarray  # (r,) float32, and t
    t: np.ndarray
    y64: np.ndarray  # (r,) float64


@njit(cache=True, error_model="numpy")
def run_batch(xs: np.ndarray, learn: bool, stage: Stage, net: Net, memory: Memory, head: Head,
              temporal: Temporal, work: Work, out: np.ndarray) -> int:
    """Frames xs in order, no allocation: each row is normalised, aligned (its own statistics join
    after it is read), propagated, retrieved into out[r] and, when ``learn``, reinforces its
    pseudo-class (whose Gaussians are refreshed) and passes the temporal filter before the next
    row is read. Returns -1, or the first row ``normalise`` refuses (rows before it have been
    processed; nothing of that row is read or changed)."""
    z = work.z
    for r in range(xs.shape[0]):
        if normalise(xs[r], z) != 0:
            return r
        out_r = out[r]
        weight = stage.weight[0]  # the frames before this one
        prior = align.prior_weight(stage.prior, stage.fade, stage.gamma, weight)
        variance = align.stage(stage.centre_source, stage.scale, stage.input_var, stage.sums, stage.squares, weight,
                               prior, stage.shift, stage.spread, work.centre, work.factor)
        w, aged = 1.0, stage.gamma
        learning = learn and stage.shift
        if learning:
            frames = stage.frames[0]
            w = align.novelty(z, stage.recent, frames, stage.rho, variance)
            aged = stage.gamma ** w  # a frame of weight w ages the running statistics by gamma^w
            align.learn(z, w, aged, stage.centre_source, stage.basis, stage.sums, stage.squares,
                        stage.weight, stage.proj_sum, stage.proj_sq, work.y64)
            stage.frames[0] = frames + 1
        align.apply(z, work.centre, work.factor, stage.basis, stage.mix, work.y, work.t)
        if learning and stage.frames[0] % stage.every == 0:
            after = stage.weight[0]
            align.refresh_mix(stage.basis_var, stage.proj_sum, stage.proj_sq, after,
                              align.prior_weight(stage.prior, stage.fade, stage.gamma, after), stage.mix)
        propagate(z, net.w_entry_hub, net.w_hub_hub, net.order, net.entry_width, net.entry_src, net.entry_w,
                  net.rec_width, net.rec_src, net.rec_w, net.rounds, net.spiking, work.a, work.h, work.o,
                  work.o_prev, work.m)
        if stage.shift:
            shift_traces(work.m, stage.trace_mean, stage.trace_sum, weight, prior, aged, learn, w)
        scores(work.m, memory.mu, memory.hiv, memory.lnorm, memory.per_class, memory.present, memory.alive,
               memory.product, memory.confidence, memory.tau, work.row, work.part, work.vote, out_r)
        k_memory = argmax(out_r)
        k_prior = k_memory
        if head.on:
            k_prior = combine_prior(z, stage.centre_source, work.factor, head.w, head.b, head.scale,
                                    head.memory_weight, head.unit, work.centre, work.logits, out_r)
        else:
            softmax(out_r)
        if learn and memory.reinforce:
            k = argmax(out_r)
            if out_r[k] >= memory.gate and k == k_memory and k == k_prior:
                # a frame counts by its novelty weight here too: an object held in view is learnt once
                reinforce(work.m, k, w * float(out_r[k]), memory.gamma ** w, memory.confidence_update, memory.mu,
                          memory.hiv, memory.target)
                refresh_class(k, memory.source, memory.target, memory.source_weight, memory.per_class, memory.tv,
                              memory.floor_v, memory.blur_v, memory.mu, memory.hiv, memory.lnorm, memory.present)
        if learn and temporal.on:
            temporal_step(out_r, temporal.class_prior, temporal.belief, temporal.history, temporal.moments,
                          temporal.frames, temporal.gamma, temporal.trust, temporal.most)
    return -1


@njit(cache=True, error_model="numpy")
def traces(zs: np.ndarray, net: Net, out: np.ndarray) -> None:
    """Traces (n, N) of already aligned rows zs (n, d), for memorising."""
    n = out.shape[1]
    a = np.empty(n, np.float32)
    h = np.empty(n, np.float32)
    o = np.empty(n, np.float32)
    o_prev = np.empty(n, np.float32)
    for r in range(zs.shape[0]):
        propagate(zs[r], net.w_entry_hub, net.w_hub_hub, net.order, net.entry_width, net.entry_src, net.entry_w,
                  net.rec_width, net.rec_src, net.rec_w, net.rounds, net.spiking, a, h, o, o_prev, out[r])
