"""Input alignment kernels: the target's running statistics and the map that brings a frame back to
the source, label-free (``edge_runtime.adapters.memflow.MemFlow`` owns the state and buffers).

A frame z (L2-normalised, d) is read through the statistics of the frames *before* it, then joins
them (a frame centred partly on itself loses part of its own deviation from the stream mean):

- Running sums over the frames' weights w_t (see novelty, below): W = sum w, S1 = sum w z,
  S2 = sum w z^2 (per dimension), and in an r-dimensional source subspace (the source's top
  principal directions U, r x d, with source variances lambda) Y1 = sum w y, Y2 = sum w y y^T for
  y = U (z - mu_s); a frame of weight w ages them by gamma^w, so the window, 1 / (1 - gamma)
  frames, is counted in novel frames (the caller passes gamma^w to ``learn``). P pseudo-frames of
  the source (``prior``: fixed, or fading as the window fills) pull every statistic to its source
  value, so the first frames move nothing much.
- Centre mu_t = (P mu_s + S1) / (P + W): the shift stage (FOA's activation shifting).
- Spread (optional): per dimension factor_j = sqrt(v^s_j / v^t_j) within [1/4, 4] (AdaBN-like).
- Subspace covariance (CORAL, Sun et al. 2016, kept low-rank and online): the target covariance
  in the subspace, C_t = (P diag(lambda) + Y2) / (P + W) - m m^T with m = Y1 / (P + W), is
  whitened and re-coloured with the source's, A = diag(sqrt(lambda)) C_t^(-1/2) (eigenvalues of
  C_t held within [lambda_min / 16, 16 lambda_max], a guard like the spread's), and the frame is
  mapped as c <- c + U^T (A - I) U c on c = z - mu_t: second moments, not only the mean, move back
  to the source's in the directions where the source varies most. ``mix`` = A - I is refreshed
  every few frames (an r x r eigendecomposition), not per frame.
- Novelty weights: w_t = min(1, min_j ||y_t - y_j||^2 / (rho v)) over the projections y_j of
  the last M frames (a ring; ``ring_novelty``), with v = sum(lambda) the source's variance in
  the subspace; rho = 0 gives every frame weight 1. A camera that looks at
  one object for a minute sends near-identical frames, and a view it comes back to after a few
  seconds is still in the ring: they add almost no weight and age nothing, so the statistics
  neither become that object's (a plain running mean would, and subtracting it would erase the
  object's class) nor forget the frames before it. Distinct images of one class lie closer to
  each other than to other classes' images, so a stay of them weighs less than a mixed stream,
  but not nothing. Without a ring (M = 0, states written before it), z_t is compared with a
  short EMA of the last few frames in the full space against the target's total variance
  (``novelty``), which misses a view seen again after ~5 frames.

These statistics are label-free, not class-balanced: a stay of many distinct images of one class
still moves them towards that class (``edge_runtime.adapters.memflow``, ``balanced``, keeps them
per pseudo-class instead; ``docs/memflow.md`` has the figures of both).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_SPREAD_FLOOR = 1.0 / 16.0  # variance ratio limit of the spread and subspace stages (factors 1/4..4)
_RECENT = np.float32(0.8)  # EMA factor of z_recent: the last ~5 frames


@njit(cache=True, error_model="numpy")
def prior_weight(prior: float, fade: bool, gamma: float, weight: float) -> float:
    """The source's pseudo-frame weight after frames of total EMA weight ``weight``: constant
    ``prior`` (an anchor), or, with ``fade``, prior gamma^n (gamma^n = 1 - (1 - gamma) weight, so
    nothing more is stored); with prior = 1 / (1 - gamma) the fading form is exactly
    FeatureShift's EMA started at the source mean.

    >>> prior_weight(20.0, False, 0.95, 3.0), round(prior_weight(20.0, True, 0.95, 1.0), 6)
    (20.0, 19.0)
    """
    if not fade:
        return prior
    return prior * max(1.0 - (1.0 - gamma) * weight, 0.0)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
def stage(
    centre_source: np.ndarray,
    scale: np.ndarray,
    input_var: np.ndarray,
    sums: np.ndarray,
    squares: np.ndarray,
    weight: float,
    prior: float,
    shift_on: bool,
    spread_on: bool,
    centre: np.ndarray,
    factor: np.ndarray,
) -> float:
    """The stage now: centre (d,) and per-dimension factor (d,) (``scale`` times the spread factor,
    or ``scale`` alone), from the running sums; returns the target's total variance v_t (the
    source's when nothing has been seen). The pseudo-frames count with the source variance
    ``input_var``. Stage off, or no weight at all: the source centre and ``scale``."""
    total = prior + weight
    if not shift_on or total <= 0.0:
        v = 0.0
        for j in range(centre.shape[0]):
            centre[j] = centre_source[j]
            factor[j] = scale[j]
            v += input_var[j]
        return v
    inv = 1.0 / total
    v = 0.0
    for j in range(centre.shape[0]):
        c = float(centre_source[j])
        vs = input_var[j]
        mean = (prior * c + sums[j]) * inv
        centre[j] = mean
        # the variance in float64 (a difference of moments), the ratio in float32
        vt = max((prior * (vs + c * c) + squares[j]) * inv - mean * mean, vs * _SPREAD_FLOOR)
        v += vt
        f = np.float32(1.0)
        if spread_on:
            f = np.sqrt(max(np.float32(vs) / np.float32(vt), np.float32(_SPREAD_FLOOR)))
        factor[j] = scale[j] * f
    return v


@njit(cache=True, error_model="numpy")
def novelty(z: np.ndarray, recent: np.ndarray, frames: int, rho: float, variance: float) -> float:
    """The frame's weight min(1, ||z - z_recent||^2 / (rho v)) and z_recent <- its EMA with z
    (z_recent = z on the first frame, which weighs 1); rho = 0: weight 1, z_recent untouched."""
    if rho <= 0.0:
        return 1.0
    if frames == 0:
        for j in range(z.shape[0]):
            recent[j] = z[j]
        return 1.0
    gap = 0.0
    for j in range(z.shape[0]):
        diff = float(z[j]) - float(recent[j])
        gap += diff * diff
        recent[j] = _RECENT * recent[j] + (np.float32(1.0) - _RECENT) * z[j]
    return min(1.0, gap / (rho * variance)) if variance > 0.0 else 1.0


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
def project(c: np.ndarray, basis: np.ndarray, out: np.ndarray) -> None:
    """out (r,) = U c, for U = ``basis`` (r, d)."""
    for q in range(basis.shape[0]):
        acc = np.float32(0.0)
        for j in range(c.shape[0]):
            acc += basis[q, j] * c[j]
        out[q] = acc


@njit(cache=True, error_model="numpy")
def source_projection(z: np.ndarray, centre_source: np.ndarray, basis: np.ndarray, y: np.ndarray) -> None:
    """y (r,) float64 = U (z - mu_s): the frame in the source's principal directions."""
    for q in range(basis.shape[0]):
        acc = 0.0
        for j in range(z.shape[0]):
            acc += float(basis[q, j]) * (float(z[j]) - float(centre_source[j]))
        y[q] = acc


@njit(cache=True, error_model="numpy")
def learn(
    z: np.ndarray,
    y: np.ndarray,
    w: float,
    gamma: float,
    sums: np.ndarray,
    squares: np.ndarray,
    weight: np.ndarray,
    proj_sum: np.ndarray,
    proj_sq: np.ndarray,
) -> None:
    """Fold frame z, of weight w, and its projection y (``source_projection``) into the running
    sums, aged by ``gamma`` (gamma^w of the window's factor)."""
    for j in range(z.shape[0]):
        v = float(z[j])
        sums[j] = gamma * sums[j] + w * v
        squares[j] = gamma * squares[j] + w * v * v
    weight[0] = gamma * weight[0] + w
    r = y.shape[0]
    for q in range(r):
        proj_sum[q] = gamma * proj_sum[q] + w * y[q]
        for s in range(r):
            proj_sq[q, s] = gamma * proj_sq[q, s] + w * y[q] * y[s]


@njit(cache=True, error_model="numpy")
def recolour(cov: np.ndarray, basis_var: np.ndarray, mix: np.ndarray) -> None:
    """mix = diag(sqrt(lambda)) cov^(-1/2) - I: whiten the target covariance ``cov`` (r, r) in the
    source's principal directions and re-colour it to their source variances ``basis_var``; the
    eigenvalues are clipped to the source's spread so that no direction is blown up or flattened."""
    r = basis_var.shape[0]
    values, vectors = np.linalg.eigh(cov)
    low, high = basis_var.min() * _SPREAD_FLOOR, basis_var.max() / _SPREAD_FLOOR
    for q in range(r):
        values[q] = 1.0 / math.sqrt(min(max(values[q], low), high))
    for q in range(r):
        root = math.sqrt(basis_var[q])
        for s in range(r):
            acc = 0.0
            for t in range(r):
                acc += vectors[q, t] * values[t] * vectors[s, t]
            mix[q, s] = root * acc - (1.0 if q == s else 0.0)


@njit(cache=True, error_model="numpy")
def refresh_mix(
    basis_var: np.ndarray, proj_sum: np.ndarray, proj_sq: np.ndarray, weight: float, prior: float, mix: np.ndarray
) -> None:
    """mix = A - I with A = diag(sqrt(lambda)) C_t^(-1/2) (see the module docstring); the identity
    map (mix = 0) before any weight."""
    r = basis_var.shape[0]
    total = prior + weight
    if r == 0:
        return
    if weight <= 0.0 or total <= 0.0:
        mix[:] = 0.0
        return
    cov = np.empty((r, r))
    for q in range(r):
        mq = proj_sum[q] / total
        for s in range(r):
            cov[q, s] = (proj_sq[q, s] + (prior * basis_var[q] if q == s else 0.0)) / total - mq * proj_sum[s] / total
    recolour(cov, basis_var, mix)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
def apply(
    z: np.ndarray,
    centre: np.ndarray,
    factor: np.ndarray,
    basis: np.ndarray,
    mix: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
) -> None:
    """In place: z <- (c + U^T mix U c) factor with c = z - centre; y and t (r,) are buffers."""
    for j in range(z.shape[0]):
        z[j] = z[j] - centre[j]
    r = basis.shape[0]
    if r > 0:
        project(z, basis, y)
        for q in range(r):
            acc = np.float32(0.0)
            for s in range(r):
                acc += mix[q, s] * y[s]
            t[q] = acc
        for q in range(r):
            tq = t[q]
            for j in range(z.shape[0]):
                z[j] += basis[q, j] * tq
    for j in range(z.shape[0]):
        z[j] *= factor[j]


# -- class-balanced domain statistics ------------------------------------------------------------
# Domain statistics kept per pseudo-class (a slot per class) and combined with fixed weights pi_k
# (the source's class frequencies), each slot shrunk to the source by P pseudo-frames:
#
#   offset   delta = sum_k pi_k (S1_k - W_k mu^s_k) / (P + W_k)      (input centre mu_s + delta)
#   traces   tau   = sum_k pi_k (T_k - W_k t^s_k) / (P + W_k)        (neuron centre t_s + tau)
#   subspace M = sum_k pi_k (P M^s_k + Y2_k) / (P + W_k), m = sum_k pi_k (P m^s_k + Y1_k) / (P + W_k),
#            C_t = M - m m^T, whitened and re-coloured to the source's as ``refresh_mix`` does,
#
# with W_k, S1_k, T_k, Y1_k, Y2_k the slot's EMA sums (weight, frames, traces, projections and
# their products) of the frames pseudo-labelled k, each weighted by its evidence e (novelty times
# confidence). A slot ages only when its class is seen, so one class in view for 10,000 frames
# refines its own slot and moves the combined statistics by at most pi_k times how far its slot
# can go: nothing else moves. The offsets are kept up to date incrementally (O(d + N) a frame).
# Measured from the source mean (``slot_reference`` "source", the default), a slot's term is
# pi_k (S1_k - W_k mu^s) / (P + W_k): a frame counts as what it is, wherever the current alignment
# puts it; measured from its class's source mean mu^s_k ("class"), a frame the alignment reads as
# class k adds only what it differs from that class, which confirms the alignment that labelled
# it. The price of "source": a stay of source-like images of class k moves the combined centre by
# up to pi_k |mu^s_k - mu^s|. ``slot_leak`` rho caps that at rho |mu^s_k - mu^s|: slot k is
# measured from r_k = mu^s + alpha (mu^s_k - mu^s), alpha = max(0, 1 - rho / max_k pi_k), so that
# (1 - alpha) pi_k <= rho whatever the number of classes; one alpha for all, so that the references
# average to the source mean (sum_k pi_k r_k = mu^s) and full slots carry no bias.


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
def ring_novelty(y: np.ndarray, ring: np.ndarray, count: np.ndarray, rho: float, variance: float) -> float:
    """Evidence novelty of a frame from its projection y (r,) on the source's principal
    directions: min(1, min_j ||y - y_j||^2 / (rho v)) over the last frames in ``ring`` (M, r),
    v the source variance in those directions; then y joins the ring. A frame seen again (a
    camera holding an object, a bench stream drawing with replacement) weighs ~0: an object held
    in view is one piece of evidence, not hundreds. rho = 0: every frame weighs 1."""
    n = count[0]
    slots = ring.shape[0]
    best = np.inf
    for j in range(min(n, slots)):
        acc = 0.0
        for q in range(y.shape[0]):
            diff = float(y[q]) - float(ring[j, q])
            acc += diff * diff
        best = min(best, acc)
    row = ring[n % slots]
    for q in range(y.shape[0]):
        row[q] = y[q]
    count[0] = n + 1
    if rho <= 0.0 or n == 0 or variance <= 0.0:
        return 1.0
    return min(1.0, best / (rho * variance))


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
def learn_slot(
    k: int,
    e: float,
    gamma: float,
    prior: float,
    pi: float,
    x: np.ndarray,
    reference: np.ndarray,
    sums: np.ndarray,
    weight: np.ndarray,
    offset: np.ndarray,
) -> None:
    """Fold x (n,) of evidence e into slot k (sums (K, n), weight (K,), EMA factor gamma) and
    keep ``offset`` (n,) = sum_k pi_k (sums_k - weight_k r_k) / (prior + weight_k) up to date,
    r_k = ``reference`` (n,) being what slot k is measured from: slot k's term is taken out and
    put back. ``weight`` is the caller's to update (it is shared by every statistic of the
    slot): here w_old = weight[k], w_new = gamma w_old + e."""
    w_old = weight[k]
    w_new = gamma * w_old + e
    a_old = pi / (prior + w_old) if prior + w_old > 0.0 else 0.0
    a_new = pi / (prior + w_new) if prior + w_new > 0.0 else 0.0
    for j in range(x.shape[0]):
        s_old = sums[k, j]
        s_new = gamma * s_old + e * float(x[j])
        offset[j] += a_new * (s_new - w_new * reference[j]) - a_old * (s_old - w_old * reference[j])
        sums[k, j] = s_new


@njit(cache=True, error_model="numpy")
def learn_slot_moments(k: int, e: float, gamma: float, y: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> None:
    """Slot k's projected sums: y1 (K, r) and y2 (K, r, r) <- gamma (.) + e (y, y y^T)."""
    r = y.shape[0]
    for q in range(r):
        y1[k, q] = gamma * y1[k, q] + e * y[q]
        for s in range(r):
            y2[k, q, s] = gamma * y2[k, q, s] + e * y[q] * y[s]


@njit(cache=True, error_model="numpy")
def balanced_offset(
    sums: np.ndarray, weight: np.ndarray, reference: np.ndarray, prior: float, pi: np.ndarray, offset: np.ndarray
) -> None:
    """offset (n,) = sum_k pi_k (sums_k - weight_k reference_k) / (prior + weight_k), from scratch."""
    offset[:] = 0.0
    for k in range(sums.shape[0]):
        total = prior + weight[k]
        if total <= 0.0 or weight[k] <= 0.0:
            continue
        a = pi[k] / total
        for j in range(sums.shape[1]):
            offset[j] += a * (sums[k, j] - weight[k] * reference[k, j])


@njit(cache=True, error_model="numpy")
def slot_gain(weight: np.ndarray, prior: float, pi: np.ndarray, floor: float) -> float:
    """1 / max(mass, floor), mass = sum_k pi_k W_k / (P + W_k) the evidence mass of the slots
    (<= 1): with floor 1 the slots' terms are combined with their fixed weights pi_k alone (a
    class moves the combined statistic by at most pi_k times its own slot's move); a lower floor
    lets the classes seen so far stand for the others once they hold ``floor`` of the mass (a
    class then moves it by at most pi_k / floor times its slot's move)."""
    mass = 0.0
    for k in range(weight.shape[0]):
        if prior + weight[k] > 0.0:
            mass += pi[k] * weight[k] / (prior + weight[k])
    return 1.0 / max(mass, floor)


@njit(cache=True, error_model="numpy")
def refresh_mix_balanced(
    basis_var: np.ndarray,
    weight: np.ndarray,
    y1: np.ndarray,
    y2: np.ndarray,
    source_y1: np.ndarray,
    source_y2: np.ndarray,
    prior: float,
    pi: np.ndarray,
    floor: float,
    mix: np.ndarray,
) -> None:
    """mix = A - I from the class-balanced subspace covariance (see above); the identity map
    while no slot has weight."""
    r = basis_var.shape[0]
    if r == 0:
        return
    if weight.sum() <= 0.0:
        mix[:] = 0.0
        return
    # source part sum_k pi_k (m^s_k, M^s_k) plus the slots' part sum_k pi_k (Y_k - W_k src_k) / (P + W_k)
    # scaled by the gain (``slot_gain``)
    gain = slot_gain(weight, prior, pi, floor)
    second = np.zeros((r, r))
    mean = np.zeros(r)
    for k in range(weight.shape[0]):
        total = prior + weight[k]
        a = gain * pi[k] / total if total > 0.0 else 0.0
        for q in range(r):
            mean[q] += pi[k] * source_y1[k, q] + a * (y1[k, q] - weight[k] * source_y1[k, q])
            for s in range(r):
                second[q, s] += pi[k] * source_y2[k, q, s] + a * (y2[k, q, s] - weight[k] * source_y2[k, q, s])
    cov = np.empty((r, r))
    for q in range(r):
        for s in range(r):
            cov[q, s] = second[q, s] - mean[q] * mean[s]
    recolour(cov, basis_var, mix)
