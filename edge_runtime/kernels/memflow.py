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
``Temporal``, ``Work``); every other kernel is a plain function over arrays: the network in
``memflow_net``, the Gaussian memory and its read-out in ``memflow_memory``, shared numerics in ``common``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edge_runtime.kernels import align
from edge_runtime.kernels.common import FAST, argmax, softmax
from edge_runtime.kernels.memflow_memory import memorise, refresh_class, reinforce, retrieve, scores
from edge_runtime.kernels.memflow_net import bridge_links, normalise, propagate
from edge_runtime.kernels.memflow_state import (  # noqa: F401 - the kernels' state types, K.<Name>
    Head,
    Memory,
    Net,
    Slots,
    Stage,
    Temporal,
    Work,
)
from edge_runtime.kernels.temporal import step as temporal_step


@njit(cache=True, error_model="numpy", fastmath=FAST)
def combine_prior(
    z: np.ndarray,
    centre_source: np.ndarray,
    factor: np.ndarray,
    prior_w: np.ndarray,
    prior_b: np.ndarray,
    scale: float,
    memory_weight: float,
    unit: bool,
    f: np.ndarray,
    work: np.ndarray,
    out: np.ndarray,
) -> int:
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


@njit(cache=True, error_model="numpy", fastmath=FAST)
def shift_traces(
    m: np.ndarray,
    trace_mean: np.ndarray,
    trace_sum: np.ndarray,
    weight: float,
    prior: float,
    gamma: float,
    learn: bool,
    w: float,
) -> None:
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
def _propagate(
    z: np.ndarray, net: Net, a: np.ndarray, h: np.ndarray, o: np.ndarray, o_prev: np.ndarray, m: np.ndarray
) -> None:
    """The frame z through the fixed network into m, with a, h, o, o_prev as work buffers
    (``memflow_net.propagate``)."""
    propagate(
        z,
        net.w_entry_hub,
        net.w_hub_hub,
        net.order,
        net.entry_width,
        net.entry_src,
        net.entry_w,
        net.rec_width,
        net.rec_src,
        net.rec_w,
        net.rounds,
        net.spiking,
        a,
        h,
        o,
        o_prev,
        m,
    )


@njit(cache=True, error_model="numpy")
def _filter(out_r: np.ndarray, temporal: Temporal) -> None:
    """The temporal filter's step on the frame's posterior (``kernels.temporal.step``)."""
    temporal_step(
        out_r,
        temporal.class_prior,
        temporal.belief,
        temporal.history,
        temporal.moments,
        temporal.frames,
        temporal.gamma,
        temporal.trust,
        temporal.most,
    )


@njit(cache=True, error_model="numpy")
def run_batch(
    xs: np.ndarray,
    learn: bool,
    stage: Stage,
    net: Net,
    memory: Memory,
    head: Head,
    temporal: Temporal,
    work: Work,
    out: np.ndarray,
) -> int:
    """Frames xs in order, no allocation: each row is normalised, aligned (its own statistics join
    after it is read), propagated, retrieved into out[r] and, when ``learn``, reinforces its
    pseudo-class (whose Gaussians are refreshed) and passes the temporal filter before the next
    row is read. Returns -1, or the first row ``normalise`` refuses (rows before it have been
    processed; nothing of that row is read or changed). The class-balanced statistics have their
    own entry point, ``run_batch_balanced``: the arrays of ``Slots`` are not unboxed on every
    call of an adapter that does not use them (9 classes, p50 116.0 -> 110.6 us)."""
    z = work.z
    for r in range(xs.shape[0]):
        if normalise(xs[r], z) != 0:
            return r
        out_r = out[r]
        weight = stage.weight[0]  # the frames before this one
        prior = align.prior_weight(stage.prior, stage.fade, stage.gamma, weight)
        variance = align.stage(
            stage.centre_source,
            stage.scale,
            stage.input_var,
            stage.sums,
            stage.squares,
            weight,
            prior,
            stage.shift,
            stage.spread,
            work.centre,
            work.factor,
        )
        w, aged = 1.0, stage.gamma
        learning = learn and stage.shift
        if learning:
            frames = stage.frames[0]
            align.source_projection(z, stage.centre_source, stage.basis, work.y64)
            if stage.ring.shape[0] and stage.basis.shape[0]:
                w = align.ring_novelty(work.y64, stage.ring, stage.ring_count, stage.rho, stage.basis_var.sum())
            else:
                w = align.novelty(z, stage.recent, frames, stage.rho, variance)
            aged = stage.gamma**w  # a frame of weight w ages the running statistics by gamma^w
            align.learn(z, work.y64, w, aged, stage.sums, stage.squares, stage.weight, stage.proj_sum, stage.proj_sq)
            stage.frames[0] = frames + 1
        align.apply(z, work.centre, work.factor, stage.basis, stage.mix, work.y, work.t)
        if learning and stage.frames[0] % stage.every == 0:
            after = stage.weight[0]
            align.refresh_mix(
                stage.basis_var,
                stage.proj_sum,
                stage.proj_sq,
                after,
                align.prior_weight(stage.prior, stage.fade, stage.gamma, after),
                stage.mix,
            )
        _propagate(z, net, work.a, work.h, work.o, work.o_prev, work.m)
        if stage.shift:
            shift_traces(work.m, stage.trace_mean, stage.trace_sum, weight, prior, aged, learn, w)
        _read_out(z, learn, w, stage, memory, head, temporal, work, out_r)
        if learn and temporal.on:
            _filter(out_r, temporal)
    return -1


@njit(cache=True, error_model="numpy")
def _read_out(
    z: np.ndarray,
    learn: bool,
    w: float,
    stage: Stage,
    memory: Memory,
    head: Head,
    temporal: Temporal,
    work: Work,
    out_r: np.ndarray,
) -> None:
    """Memory read-out, head product, reinforcement (weight w) and temporal filter of one frame
    whose aligned input is z and traces work.m."""
    scores(
        work.m,
        memory.mu,
        memory.hiv,
        memory.lnorm,
        memory.per_class,
        memory.present,
        memory.alive,
        memory.product,
        memory.confidence,
        memory.tau,
        work.row,
        work.part,
        work.vote,
        out_r,
    )
    k_memory = argmax(out_r)
    k_prior = k_memory
    if head.on:
        k_prior = combine_prior(
            z,
            stage.centre_source,
            work.factor,
            head.w,
            head.b,
            head.scale,
            head.memory_weight,
            head.unit,
            work.centre,
            work.logits,
            out_r,
        )
    else:
        softmax(out_r)
    if learn and memory.reinforce:
        k = argmax(out_r)
        if out_r[k] >= memory.gate and k == k_memory and k == k_prior:
            # a frame counts by its novelty weight here too: an object held in view is learnt once
            reinforce(
                work.m,
                k,
                w * float(out_r[k]),
                memory.gamma**w,
                memory.confidence_update,
                memory.mu,
                memory.hiv,
                memory.target,
            )
            refresh_class(
                k,
                memory.source,
                memory.target,
                memory.source_weight,
                memory.per_class,
                memory.tv,
                memory.floor_v,
                memory.blur_v,
                memory.mu,
                memory.hiv,
                memory.lnorm,
                memory.present,
            )


@njit(cache=True, error_model="numpy")
def _run_balanced(
    z: np.ndarray,
    learn: bool,
    stage: Stage,
    net: Net,
    memory: Memory,
    head: Head,
    temporal: Temporal,
    work: Work,
    slots: Slots,
    out_r: np.ndarray,
) -> None:
    """One frame with the class-balanced domain statistics (``Slots``): read through the slots as
    they stand, classified, then (``learn``) folded into its pseudo-class's slot by its evidence;
    the temporal filter reads the frame's own posterior afterwards and feeds nothing back."""
    d = z.shape[0]
    gain = align.slot_gain(slots.weight, slots.prior, slots.pi, slots.floor) if stage.shift else 0.0
    for j in range(d):
        slots.zraw[j] = z[j]
        work.centre[j] = stage.centre_source[j] + gain * slots.offset[j]
        work.factor[j] = stage.scale[j]
    w = 1.0
    learning = learn and stage.shift
    if learning:
        align.source_projection(z, stage.centre_source, stage.basis, work.y64)
        w = align.ring_novelty(work.y64, slots.ring, slots.count, slots.rho, stage.basis_var.sum())
        stage.frames[0] += 1
    align.apply(z, work.centre, work.factor, stage.basis, stage.mix, work.y, work.t)
    _propagate(z, net, work.a, work.h, work.o, work.o_prev, work.m)
    if stage.shift:
        for i in range(work.m.shape[0]):
            slots.mraw[i] = work.m[i]
            work.m[i] -= gain * slots.trace_offset[i]
    _read_out(z, learn, w, stage, memory, head, temporal, work, out_r)
    if learning:
        best = argmax(out_r)
        for k in range(out_r.shape[0]):
            # hard: the pseudo-class alone, if confident enough; soft: every class by its posterior
            if slots.soft:
                p = float(out_r[k])
            else:
                p = float(out_r[k]) if k == best else 0.0
            e = w * p
            if p < slots.gate or e <= 0.0:
                continue
            g = slots.gamma**e
            align.learn_slot(
                k,
                e,
                g,
                slots.prior,
                slots.pi[k],
                slots.zraw,
                slots.reference[k],
                slots.sums,
                slots.weight,
                slots.offset,
            )
            align.learn_slot(
                k,
                e,
                g,
                slots.prior,
                slots.pi[k],
                slots.mraw,
                slots.trace_reference[k],
                slots.trace_sums,
                slots.weight,
                slots.trace_offset,
            )
            align.learn_slot_moments(k, e, g, work.y64, slots.y1, slots.y2)
            slots.weight[k] = g * slots.weight[k] + e
        if stage.frames[0] % stage.every == 0:
            align.refresh_mix_balanced(
                stage.basis_var,
                slots.weight,
                slots.y1,
                slots.y2,
                slots.source_y1,
                slots.source_y2,
                slots.cov_prior,
                slots.pi,
                slots.floor,
                stage.mix,
            )
    if learn and temporal.on:
        _filter(out_r, temporal)


@njit(cache=True, error_model="numpy")
def run_batch_balanced(
    xs: np.ndarray,
    learn: bool,
    stage: Stage,
    net: Net,
    memory: Memory,
    head: Head,
    temporal: Temporal,
    work: Work,
    slots: Slots,
    out: np.ndarray,
) -> int:
    """``run_batch`` with the class-balanced domain statistics (``Slots``) in place of the
    stage's running sums."""
    for r in range(xs.shape[0]):
        if normalise(xs[r], work.z) != 0:
            return r
        _run_balanced(work.z, learn, stage, net, memory, head, temporal, work, slots, out[r])
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
        _propagate(zs[r], net, a, h, o, o_prev, out[r])


__all__ = [
    "Head",
    "Memory",
    "Net",
    "Stage",
    "Temporal",
    "Work",
    "argmax",
    "bridge_links",
    "combine_prior",
    "memorise",
    "normalise",
    "propagate",
    "refresh_class",
    "reinforce",
    "retrieve",
    "run_batch",
    "run_batch_balanced",
    "scores",
    "shift_traces",
    "softmax",
    "traces",
]
