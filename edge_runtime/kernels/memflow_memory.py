"""MemFlow's memory: per-neuron class Gaussians (sufficient statistics), their read-out and reinforcement.

Symbols and formulas: ``edge_runtime.kernels.memflow``'s docstring.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edge_runtime.kernels.common import FAST, LN2, LOG2E, LOG_2PI, exp2, softmax

# A neuron whose best class is more than this (log2 units) below the read-out's reference is
# redone against its best class (see ``retrieve``): up to it, every class within 67 of the best
# stays above ``exp2``'s floor of 2^-125, and one further below weighs < 2^-67 anyway.
_FAR = np.float32(58.0)
_BLOCK = 32  # neurons summed in float32 before the read-out's float64 vote takes them


@njit(cache=True, error_model="numpy", fastmath=FAST, inline="always")
def _gaps(
    m_i: float,
    i: int,
    ref: float,
    mu: np.ndarray,
    hiv: np.ndarray,
    lnorm: np.ndarray,
    per_class: bool,
    present: np.ndarray,
    masked: bool,
    row: np.ndarray,
) -> float:
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
            u = abs((ref - lnorm[i, k] + diff * diff * hiv[i, k]) * LOG2E)
            row[k] = u
            lowest = np.minimum(lowest, np.float32(u).view(np.int32))
    else:
        s = hiv[i, 0] * LOG2E
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


@njit(cache=True, error_model="numpy", fastmath=FAST, inline="always")
def _likelihoods(m_i: float, i: int, mu: np.ndarray, hiv: np.ndarray, row: np.ndarray) -> tuple[float, float]:
    """Pooled variances, every class present: row[k] = exp(ll_ik - lnorm_i) = 2^-u_ik and
    (min_k u_ik, sum_k row[k]) in one vectorised loop (the read-out's hot path; see ``_gaps``)."""
    s = hiv[i, 0] * LOG2E
    lowest = np.int32(0x7F800000)
    norm = np.float32(0.0)
    for k in range(mu.shape[1]):
        diff = m_i - mu[i, k]
        u = abs(diff * diff * s)
        lowest = np.minimum(lowest, np.float32(u).view(np.int32))
        v = exp2(-u)
        row[k] = v
        norm += v
    return np.int32(lowest).view(np.float32), norm


@njit(cache=True, error_model="numpy", fastmath=FAST)
def scores(
    m: np.ndarray,
    mu: np.ndarray,
    hiv: np.ndarray,
    lnorm: np.ndarray,
    per_class: bool,
    present: np.ndarray,
    alive: np.ndarray,
    product: bool,
    confidence: bool,
    tau: float,
    row: np.ndarray,
    part: np.ndarray,
    vote: np.ndarray,
    out: np.ndarray,
) -> None:
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
                    row[k] = exp2(lowest - row[k])
                    norm += row[k]
        c_i = np.float32(1.0)
        if confidence:
            best = ref - lowest * LN2
            if best > top:
                if c_sum > 0.0:
                    shrink = exp2((top - best) * LOG2E)
                    c_sum *= shrink
                    for k in range(n_classes):
                        vote[k] *= shrink
                        part[k] *= shrink
                top = best
            c_i = exp2((best - top) * LOG2E)
        c_sum += c_i
        if product:  # row holds u_ik: ll_ik = ref - u_ik ln 2
            for k in range(n_classes):
                part[k] += c_i * (ref - row[k] * LN2)
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
def retrieve(
    m: np.ndarray,
    mu: np.ndarray,
    hiv: np.ndarray,
    lnorm: np.ndarray,
    per_class: bool,
    present: np.ndarray,
    alive: np.ndarray,
    product: bool,
    confidence: bool,
    tau: float,
    row: np.ndarray,
    part: np.ndarray,
    vote: np.ndarray,
    out: np.ndarray,
) -> None:
    """Class probabilities ``out`` (K,) of the memory alone (``scores``, normalised)."""
    scores(m, mu, hiv, lnorm, per_class, present, alive, product, confidence, tau, row, part, vote, out)
    softmax(out)


@njit(cache=True, error_model="numpy")
def memorise(m: np.ndarray, k: int, weight: float, stats: np.ndarray) -> None:
    """Add one labelled trace to the sufficient statistics: stats[:, k, i] += w (1, m_i, m_i^2)."""
    for i in range(m.shape[0]):
        v = float(m[i])
        stats[0, k, i] += weight
        stats[1, k, i] += weight * v
        stats[2, k, i] += weight * v * v


@njit(cache=True, error_model="numpy", fastmath=FAST)
def reinforce(
    m: np.ndarray,
    k: int,
    weight: float,
    gamma: float,
    confidence_update: bool,
    mu: np.ndarray,
    hiv: np.ndarray,
    target: np.ndarray,
) -> None:
    """EMA update of class k's target statistics: R_ki <- gamma R_ki + weight E_i (1, m_i, m_i^2),
    E_i = exp(-(m_i - mu_ki)^2 hiv_ki) with the confidence-weighted update, else 1 (E_i by the
    vectorisable ``exp2``: a float32 weight is ample, the sums stay float64)."""
    for i in range(m.shape[0]):
        v = float(m[i])
        e = weight
        if confidence_update:
            diff = m[i] - mu[i, k]
            e *= exp2(-diff * diff * hiv[i, k] * LOG2E)
        target[0, k, i] = gamma * target[0, k, i] + e
        target[1, k, i] = gamma * target[1, k, i] + e * v
        target[2, k, i] = gamma * target[2, k, i] + e * v * v


@njit(cache=True, error_model="numpy")
def refresh_class(
    k: int,
    source: np.ndarray,
    target: np.ndarray,
    source_weight: float,
    per_class: bool,
    tv: np.ndarray,
    floor_v: np.ndarray,
    blur_v: np.ndarray,
    mu: np.ndarray,
    hiv: np.ndarray,
    lnorm: np.ndarray,
    present: np.ndarray,
) -> None:
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
            lnorm[i, k] = -0.5 * (LOG_2PI + math.log(v / tv[i]))
    present[k] = any_mass
