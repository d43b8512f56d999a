"""The state tuples MemFlow's kernels take (``edge_runtime.kernels.memflow``): switches, source statistics,
running sums and work buffers, gathered once per state by the adapter."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


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
    recent: np.ndarray  # (d,) float32, short EMA of the frames (novelty without a ring)
    ring: np.ndarray  # (M, r) float64, the last M frames' subspace projections (novelty; M = 0: off)
    ring_count: np.ndarray  # (1,) int64, frames that entered the ring
    frames: np.ndarray  # (1,) int64, frames learnt from
    trace_mean: np.ndarray  # (N,) source mean trace
    trace_sum: np.ndarray  # (N,)


class Slots(NamedTuple):
    """Class-balanced domain statistics (``edge_runtime.kernels.align``, "class-balanced"): with
    ``on`` they replace the stage's running sums for the centre, the subspace map and the neuron
    shift; a frame joins its pseudo-class's slot after it is classified."""

    on: bool
    soft: bool  # a frame is evidence for every class by its posterior (else its pseudo-class only)
    prior: float  # P: source pseudo-frames of each slot
    gamma: float  # EMA factor of a slot (aged only when its class is seen)
    gate: float  # least confidence of a frame to count as evidence
    cov_prior: float  # source pseudo-frames of each slot's second moments (the subspace map)
    floor: float  # Lambda: the slots' terms are divided by max(their mass, Lambda) (1: fixed weights)
    rho: float  # evidence novelty scale (0: every frame weighs 1)
    pi: np.ndarray  # (K,) fixed class weights (source frequencies)
    reference: np.ndarray  # (K, d) what each slot's frames are measured from (``refresh_slots``)
    weight: np.ndarray  # (K,) evidence per slot
    sums: np.ndarray  # (K, d)
    offset: np.ndarray  # (d,) combined input offset
    trace_reference: np.ndarray  # (K, N) the same for the traces
    trace_sums: np.ndarray  # (K, N)
    trace_offset: np.ndarray  # (N,)
    y1: np.ndarray  # (K, r)
    y2: np.ndarray  # (K, r, r)
    source_y1: np.ndarray  # (K, r)
    source_y2: np.ndarray  # (K, r, r)
    ring: np.ndarray  # (M, r) float32: the last frames' projections (novelty)
    count: np.ndarray  # (1,) int64
    zraw: np.ndarray  # (d,) float32 buffer
    mraw: np.ndarray  # (N,) float32 buffer


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
