"""MemFlow: a fixed random spiking network whose neurons memorise, per class, how they respond.

The maths and the kernels are in ``edge_runtime.kernels.memflow``; the graph and its PRNG spec in
``edge_runtime.kernels.prng``. This class validates input, owns the state (seed, sizes and
sufficient statistics; never the weights, which are regenerated from the seed) and the work
buffers the batch-1 path reuses.

The design choices, what each answers and the measurements behind them: ``docs/memflow.md``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.adapters.memflow.alignment import InputStage, principal_directions, source_traces, trace_shift
from edge_runtime.adapters.memflow.calibration import (
    MEMORY_WEIGHTS,
    SCALES,
    best_calibration,
    calibrate,
    memory_logp,
    nll_grid,
    recalibrate,
    source_head,
)
from edge_runtime.adapters.memflow.kernel_args import compiled_entry, kernel_args
from edge_runtime.adapters.memflow.statistics import (
    SLOT_SOURCE,
    STREAM,
    SUMS,
    add_statistics,
    allocate_slots,
    c_export,
    check_params,
    check_statistics,
    domain_statistics,
    fit_slots,
    load_arrays,
    merge,
    refresh_slots,
    slot_offset,
    taught_statistics,
)
from edge_runtime.errors import InputError
from edge_runtime.kernels import align
from edge_runtime.kernels import memflow as K
from edge_runtime.kernels import temporal as T
from edge_runtime.kernels.prng import make_graph


class MemFlow(Adapter):
    """Gradient-free spiking memory over L2-normalised features (see the module docstring).

    Parameters
    ----------
    n_hub, n_bridge, in_degree, rounds, seed
        The network: hub and bridge neuron counts, bridge in-degree, propagation rounds T, and the
        splitmix64 seed it is regenerated from.
    spiking, blur, confidence_update, reinforce
        The paper's ablation switches (spiking propagation vs. a plain random projection; blur
        width sigma_1 relative to each neuron's source spread, 0 = no blur; E_i-weighted updates;
        reinforcement from unlabelled frames at all).
    readout, confidence, variance, var_floor, temperature
        Retrieval: "mixture" or "product"; confidence-weighted neurons; "pooled" or "class"
        variances floored at ``var_floor`` times the neuron's total source variance; the read-out
        temperature (None: calibrated on the source at ``fit``).
    source_weight, decay, gate
        Reinforcement: source pseudo-samples per class, per-class EMA factor of the target memory,
        minimum confidence p* of a frame to be learnt from.
    shift, shift_prior, shift_decay, shift_fade, shift_spread, shift_rank, shift_every, shift_novelty, shift_ring
        The alignment stages (``edge_runtime.kernels.align``): on/off, source pseudo-frames, EMA
        factor of the running statistics (a window of 1 / (1 - decay) frames), whether the
        pseudo-frames fade with the EMA (else they anchor the statistics for good), the spread
        stage (per-dimension variance), the rank of the subspace whose covariance is aligned (0:
        none) and the frames between refreshes of its map, the novelty scale rho of the frames'
        weights (0: every frame weighs 1), and how many recent frames a frame's novelty is measured
        against (0: a short average of the last few, in the full feature space).
    temporal, temporal_lag, temporal_max
        The temporal filter (``edge_runtime.kernels.temporal``): on/off, the lag L whose frames
        stand for independent ones when it measures the stay probability, and that probability's
        ceiling.
    standardise
        Also scale each input dimension by its (shrunk) inverse source spread.
    prior, memory_weight, prior_l2, prior_unit
        Multiply by the source linear head's posterior; exponent of the memory's posterior (None:
        it and the head's scale calibrated on held-out source, then on taught frames); the head's
        L2 strength (None: cross-validated on the source); whether the head reads the shifted
        feature rescaled to unit norm.

    How each default was chosen (never on a reported bench task): ``docs/memflow.md``.

    balanced, slot_prior, slot_decay, slot_gate, slot_novelty, slot_ring, slot_soft, slot_floor, slot_cov_prior,
    slot_reference, slot_leak
        The class-balanced domain statistics (a slot per pseudo-class, fixed class weights): on/off
        (off: one global running window, ``shift_*``), and the slots' prior, ageing, evidence gate,
        novelty guard, confidence spreading, weight floor, second-moment prior and what a slot's
        frames are measured from ("source": the source mean, moved toward the class's own mean just
        enough that a class in view shifts the centre by at most ``slot_leak`` of its distance from
        the mean; "class": the class's source mean); how each was chosen: ``docs/memflow.md``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> means = rng.normal(size=(3, 16)).astype(np.float32)
    >>> y = np.arange(60) % 3
    >>> x = (means[y] + 0.3 * rng.normal(size=(60, 16))).astype(np.float32)
    >>> model = MemFlow(n_hub=8, n_bridge=32, in_degree=4).fit(x, y)
    >>> bool((model.predict(x) == y).mean() > 0.9)
    True
    >>> model.adapt(x[:1]).shape
    (1, 3)
    """

    name: ClassVar[str] = "memflow"
    can_teach = True
    can_merge = True
    # Parameters added after the first state format (0.1.0), set so that a state written without
    # them predicts as it did: no spread, subspace, novelty or temporal stage.
    LEGACY: ClassVar[dict[str, Any]] = {
        "shift_spread": False,
        "shift_rank": 0,
        "shift_novelty": 0.0,
        "shift_ring": 0,
        "temporal": False,
        "balanced": False,
        "slot_reference": "class",
        "slot_leak": 1.0,
    }

    def __init__(
        self,
        n_hub: int = 128,
        n_bridge: int = 512,
        in_degree: int = 30,
        rounds: int = 3,
        seed: int = 0,
        spiking: bool = True,
        blur: float = 0.5,
        confidence_update: bool = True,
        reinforce: bool = True,
        readout: str = "mixture",
        confidence: bool = True,
        variance: str = "pooled",
        var_floor: float = 0.05,
        temperature: float | None = None,
        source_weight: float = 200.0,
        decay: float = 0.99,
        gate: float = 0.9,
        shift: bool = True,
        shift_prior: float = 20.0,
        shift_decay: float = 0.995,
        shift_fade: bool = False,
        shift_spread: bool = False,
        shift_rank: int = 16,
        shift_every: int = 8,
        shift_novelty: float = 0.5,
        shift_ring: int = 64,
        standardise: bool = False,
        prior: bool = True,
        memory_weight: float | None = None,
        prior_l2: float | None = None,
        prior_unit: bool = True,
        temporal: bool = True,
        temporal_lag: int = 16,
        temporal_max: float = 0.95,
        balanced: bool = True,
        slot_prior: float = 1.0,
        slot_decay: float = 0.98,
        slot_gate: float = 0.5,
        slot_novelty: float = 0.25,
        slot_ring: int = 32,
        slot_soft: bool = False,
        slot_floor: float = 1.0,
        slot_cov_prior: float = 10.0,
        slot_reference: str = "source",
        slot_leak: float = 1.0,
    ) -> None:
        self.n_hub = n_hub
        self.n_bridge = n_bridge
        self.in_degree = in_degree
        self.rounds = rounds
        self.seed = seed
        self.spiking = spiking
        self.blur = blur
        self.confidence_update = confidence_update
        self.reinforce = reinforce
        self.readout = readout
        self.confidence = confidence
        self.variance = variance
        self.var_floor = var_floor
        self.temperature = temperature
        self.source_weight = source_weight
        self.decay = decay
        self.gate = gate
        self.shift = shift
        self.shift_prior = shift_prior
        self.shift_decay = shift_decay
        self.shift_fade = shift_fade
        self.shift_spread = shift_spread
        self.shift_rank = shift_rank
        self.shift_every = shift_every
        self.shift_novelty = shift_novelty
        self.shift_ring = shift_ring
        self.standardise = standardise
        self.prior = prior
        self.memory_weight = memory_weight
        self.prior_l2 = prior_l2
        self.prior_unit = prior_unit
        self.temporal = temporal
        self.temporal_lag = temporal_lag
        self.temporal_max = temporal_max
        self.balanced = balanced
        self.slot_prior = slot_prior
        self.slot_decay = slot_decay
        self.slot_gate = slot_gate
        self.slot_novelty = slot_novelty
        self.slot_ring = slot_ring
        self.slot_soft = slot_soft
        self.slot_floor = slot_floor
        self.slot_cov_prior = slot_cov_prior
        self.slot_reference = slot_reference
        self.slot_leak = slot_leak

    # -- construction ----------------------------------------------------------------------
    def _check_params(self) -> None:
        check_params(self)

    def _build(self, dim: int, n_classes: int) -> None:
        """Regenerate the network from the seed and allocate state and work buffers."""
        self._check_params()
        self._dim, self._n_classes = dim, n_classes
        self._graph = make_graph(self.seed, dim, self.n_hub, self.n_bridge, self.in_degree)
        self._links = K.bridge_links(self._graph[2], self._graph[3], dim)
        n = self.n_neurons
        self._source = np.zeros((3, n_classes, n))
        self._target = np.zeros((3, n_classes, n))
        rank = min(self.shift_rank, dim)
        self._basis = np.zeros((rank, dim), np.float32)
        self._basis_var = np.ones(rank)
        self._shift_sum = np.zeros(dim)
        self._shift_sq = np.zeros(dim)
        self._shift_weight = np.zeros(1)
        self._proj_sum = np.zeros(rank)
        self._proj_sq = np.zeros((rank, rank))
        self._mix = np.zeros((rank, rank), np.float32)
        self._recent = np.zeros(dim, np.float32)
        self._ring = np.zeros((int(self.shift_ring), rank))
        self._ring_count = np.zeros(1, np.int64)
        self._frames = np.zeros(1, np.int64)
        self._input_stats = np.zeros((3, dim))
        self._basis_stats = np.zeros((3, rank))
        self._trace_sum = np.zeros(self.n_neurons)
        allocate_slots(self, dim, n_classes, n, rank)
        self._tau = np.ones(1)
        self._weights = np.ones(2)  # the head's scale and the memory's weight in the product
        # NLL of each (scale, weight) on the grid: per held-out source row, and summed over taught frames
        self._calibration = np.zeros((2, len(SCALES), len(MEMORY_WEIGHTS)))
        self._belief = np.zeros(n_classes)
        self._history = np.zeros((self.temporal_lag, n_classes), np.float32)
        self._moments = np.zeros(T.N_MOMENTS)
        self._temporal_frames = np.zeros(1, np.int64)
        # Neuron-major (N, K), as the read-out walks them (see ``K.retrieve``).
        self._mu = np.zeros((n, n_classes), np.float32)
        self._hiv = np.zeros((n, n_classes), np.float32)
        self._lnorm = np.zeros((n, n_classes), np.float32)
        self._present = np.zeros(n_classes, np.bool_)
        self._work = K.Work(
            centre=np.zeros(dim, np.float32),
            factor=np.zeros(dim, np.float32),
            z=np.zeros(dim, np.float32),
            a=np.zeros(n, np.float32),
            h=np.zeros(n, np.float32),
            o=np.zeros(n, np.float32),
            o_prev=np.zeros(n, np.float32),
            m=np.zeros(n, np.float32),
            row=np.zeros(n_classes, np.float32),
            part=np.zeros(n_classes, np.float32),
            vote=np.zeros(n_classes),
            logits=np.zeros(n_classes, np.float32),
            y=np.zeros(rank, np.float32),
            t=np.zeros(rank, np.float32),
            y64=np.zeros(rank),
        )

    @property
    def n_neurons(self) -> int:
        return self.n_hub + self.n_bridge

    def _refresh(self) -> None:
        """Derive every Gaussian and the input variance from the statistics (after fit, teach,
        merge or load)."""
        self._state_args = None  # some derived arrays below are new objects
        n, s1, s2 = self._input_stats
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(n > 0, s2 / n - (s1 / n) ** 2, 0.0)
        # A floor keeps sqrt(v_s / v_t) defined for dimensions constant on the source.
        self._input_var = np.maximum(var, 1e-12 * max(float(var.mean()), 1e-30))
        n, s1, s2 = self._basis_stats
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(n > 0, s2 / n - (s1 / n) ** 2, 0.0)
        self._basis_var = np.maximum(var, 1e-12 * max(float(self._input_var.sum()), 1e-30))
        counts = self._source[0, :, 0] if self.n_neurons else np.zeros(self._n_classes)
        self._class_prior = (counts + 1.0) / (counts.sum() + self._n_classes)
        self._refresh_slots()
        src = self._source
        tot0, tot1, tot2 = (src[j].sum(axis=0) for j in range(3))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(tot0 > 0, tot1 / tot0, 0.0)
            tv = np.where(tot0 > 0, tot2 / tot0 - mean * mean, 0.0)
            alive = tv > 1e-12 * max(float(tv.max()), 1e-30)
            self._tv = np.where(alive, tv, 1.0)
            self._trace_mean = mean
            self._alive = alive.astype(np.float32)
            self._floor_v = self.var_floor * self._tv
            self._blur_v = 0.5 * self.blur**2 * self._tv
            scatter = np.where(src[0] > 0, src[2] - src[1] ** 2 / src[0], 0.0).sum(axis=0)
            pooled = np.where(tot0 > 0, scatter / tot0, self._tv)
        v = np.maximum(pooled, self._floor_v) + self._blur_v
        self._hiv[:] = (0.5 / v)[:, None]
        self._lnorm[:] = (-0.5 * np.log(2 * math.pi * v / self._tv))[:, None]
        for k in range(self._n_classes):
            K.refresh_class(
                k,
                self._source,
                self._target,
                float(self.source_weight),
                self.variance == "class",
                self._tv,
                self._floor_v,
                self._blur_v,
                self._mu,
                self._hiv,
                self._lnorm,
                self._present,
            )

    _refresh_slots = refresh_slots

    def _net(self) -> K.Net:
        return K.Net(*self._graph[:2], *self._links, int(self.rounds), bool(self.spiking))

    def _traces(self, z: np.ndarray) -> np.ndarray:
        out = np.zeros((z.shape[0], self.n_neurons), np.float32)
        K.traces(np.ascontiguousarray(z, np.float32), self._net(), out)
        return out

    def _memorise(self, m: np.ndarray, y: np.ndarray, stats: np.ndarray) -> None:
        for r in range(m.shape[0]):
            K.memorise(m[r], int(y[r]), 1.0, stats)

    # -- verbs -----------------------------------------------------------------------------
    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        n_classes: int | None = None,
        *,
        centre: np.ndarray | None = None,
        basis: np.ndarray | None = None,
    ) -> "MemFlow":
        """Memorise labelled source features from scratch. ``centre`` (d,) fixes the input
        centring (default: the mean of the normalised features) and ``basis`` (shift_rank, d) the
        subspace whose covariance is aligned (default: the source's top principal directions), e.g.
        to build memories on several devices that merge exactly."""
        x = as_features(features, None)
        y = as_labels(labels, x.shape[0], n_classes)
        k = int(n_classes if n_classes is not None else y.max() + 1)
        self._build(x.shape[1], k)
        if centre is None:
            centre = x.mean(axis=0)
        self._centre_source = as_features(np.asarray(centre, np.float32), x.shape[1], normalize=False)[0].copy()
        if self.standardise:
            # Per-dimension scale 1 / sqrt(var_j + mean var): shrunk towards 1 so that rare,
            # nearly constant dimensions are not blown up; rescaled to keep the overall norm.
            var = x.var(axis=0, dtype=np.float64)
            scale = 1.0 / np.sqrt(var + var.mean())
            self._scale = (scale * np.sqrt(var.sum() / (scale**2 * var).sum())).astype(np.float32)
        else:
            self._scale = np.ones(x.shape[1], np.float32)
        x64 = x.astype(np.float64)
        self._input_stats[0] = len(x)
        self._input_stats[1] = x64.sum(axis=0)
        self._input_stats[2] = (x64 * x64).sum(axis=0)
        centred = x64 - self._centre_source
        rank = self._basis.shape[0]
        if rank:
            self._basis[:] = principal_directions(centred, rank) if basis is None else self._checked_basis(basis)
            proj = centred @ self._basis.T.astype(np.float64)
            self._basis_stats[0] = len(x)
            self._basis_stats[1] = proj.sum(axis=0)
            self._basis_stats[2] = (proj * proj).sum(axis=0)
        fit_slots(self, x64, proj if rank else None, y)
        m = self._traces(centred.astype(np.float32) * self._scale)
        if self.prior:
            self._prior_w, self._prior_b, l2 = source_head(x, y, k, self.prior_l2)
        else:
            self._prior_w, self._prior_b, l2 = np.zeros((k, 1), np.float32), np.zeros(k, np.float32), 0.0
        tau, held, truth, fold = self._calibrate(m, y)
        self._tau[0] = tau if self.temperature is None else float(self.temperature)
        self._weights[:] = (1.0, self.memory_weight if self.memory_weight is not None else 1.0)
        if self.prior and self.memory_weight is None and len(truth):
            from edge_runtime.adapters.linear import fit_logistic

            head = np.concatenate(
                [
                    x[fold != f] @ w.T + b
                    for f in (0, 1)
                    if (fold != f).any()
                    for w, b in [fit_logistic(x[fold == f], y[fold == f], k, l2)]
                ]
            )
            grid = nll_grid(head, held / self._tau[0], truth)
            self._calibration[0] = grid / len(truth)
            self._weights[:] = best_calibration(grid)
        self._memorise(m, y, self._source)
        self._refresh()
        return self

    def _checked_basis(self, basis: np.ndarray) -> np.ndarray:
        b = np.asarray(basis, np.float32)
        if b.shape != self._basis.shape or not np.isfinite(b).all():
            raise InputError(
                f"basis must be a finite float array of shape {self._basis.shape} (shift_rank, d), "
                f"got {b.dtype} {b.shape}"
            )
        return b

    _memory_logp = memory_logp

    _calibrate = calibrate

    def teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Memorise labelled examples online: scored for the calibration as the frames being
        adapted to are read, memorised through the source's map (``taught_statistics``)."""
        self._check_fitted()
        x = as_features(features, self._dim)
        y = as_labels(labels, x.shape[0], self._n_classes)
        if self.prior and self.memory_weight is None and self._calibration[0].any():
            stage = self.input_stage()
            z = stage.apply(x)
            self._recalibrate(stage, z, self._traces(z) + self.trace_shift(), y)
        self._memorise(self._source_traces(x), y, self._source)
        self._refresh()

    _source_traces = source_traces

    _recalibrate = recalibrate

    def _prior_weight(self) -> float:
        return align.prior_weight(
            float(self.shift_prior), self.shift_fade, float(self.shift_decay), float(self._shift_weight[0])
        )

    def input_stage(self) -> "InputStage":
        """The map the next frame enters the network through (see ``InputStage``)."""
        self._check_fitted()
        centre, factor = np.empty(self._dim, np.float32), np.empty(self._dim, np.float32)
        if self.balanced:
            centre[:] = self._centre_source + (slot_offset(self) if self.shift else 0.0)
            factor[:] = self._scale
            return InputStage(centre, factor, self._basis.copy(), self._mix.copy())
        align.stage(
            self._centre_source,
            self._scale,
            self._input_var,
            self._shift_sum,
            self._shift_sq,
            float(self._shift_weight[0]),
            self._prior_weight(),
            self.shift,
            self.shift_spread,
            centre,
            factor,
        )
        return InputStage(centre, factor, self._basis.copy(), self._mix.copy())

    def domain_statistics(self) -> dict[str, tuple[np.ndarray, float]]:
        """The domain statistics as they stand, each with its unit (the bench's drift under dwell)."""
        return domain_statistics(self)

    def trace_shift(self) -> np.ndarray:
        """(N,) float32: the neuron-level shift the next frame's traces get (see ``alignment.trace_shift``)."""
        return trace_shift(self)

    def _run(self, features: Any, learn: bool, out: np.ndarray | None) -> np.ndarray:
        self._check_fitted()
        x = np.asarray(features)
        if x.dtype != np.float32:
            raise InputError(f"features must be float32, got {x.dtype}: convert with .astype(np.float32)")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self._dim:
            raise InputError(f"features must have shape (n, {self._dim}) with n >= 1, got {x.shape}")
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        if out is None:
            out = np.empty((x.shape[0], self._n_classes), np.float32)
        elif out.shape != (x.shape[0], self._n_classes) or out.dtype != np.float32:
            raise InputError(
                f"out must be float32 of shape {(x.shape[0], self._n_classes)}, got {out.dtype} {out.shape}"
            )
        if self._state_args is None:
            self._state_args = self._kernel_args()  # type: ignore[assignment]
            self._entry = None
        args = (x, learn, *self._state_args, out)  # type: ignore[misc]
        # the compiled kernel is called directly once known, for arrays of the types it was compiled for
        fast = x.flags.writeable and x.flags.aligned and out.flags.writeable and out.flags.c_contiguous
        if fast and self._entry is not None:
            bad = self._entry(*args)
        else:
            kernel = K.run_batch_balanced if self.balanced else K.run_batch
            bad = kernel(*args)
            if fast:
                self._entry = compiled_entry(kernel, args)
        if bad >= 0:
            what = "is all zero" if np.isfinite(x[bad]).all() else "holds NaN or inf"
            done = " (rows before it were processed)" if bad else ""
            raise InputError(f"features row {bad} {what}{done}")
        return out

    _kernel_args = kernel_args

    def __setattr__(self, name: str, value: Any) -> None:
        # A changed parameter (``model.gate = 0.8``) must reach the kernel's cached arguments.
        super().__setattr__(name, value)
        if not name.startswith("_"):
            super().__setattr__("_state_args", None)

    def predict_proba(self, features: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (n, K); reads only. ``out`` is an optional preallocated result."""
        return self._run(features, False, out)

    def adapt(self, features: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Predict each frame, then reinforce from it (rows in order); returns the predictions
        made before each frame's own update. With ``out`` nothing is allocated per call."""
        return self._run(features, True, out)

    def prepare(self) -> None:
        """Compile (or load from numba's cache) every kernel now, on a copy of the state."""
        self._check_fitted()
        probe = MemFlow.from_state_dict(self.state_dict())
        x = np.ones((1, self._dim), np.float32)
        probe.adapt(x)
        probe.predict_proba(x)

    def c_export(self) -> dict[str, Any]:
        """What the C read-out classifies with (see ``statistics.c_export``)."""
        return c_export(self)

    def merge(self, other: "MemFlow") -> "MemFlow":
        """Add another memory of the same network (seed, sizes, centre, basis): exact, by addition.
        The temporal filter's state is per stream and the taught frames' calibration per device:
        both stay this memory's."""
        return merge(self, other)

    # -- state -----------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "centre_source": self._centre_source,
            "scale": self._scale,
            "basis": self._basis,
            "prior_w": self._prior_w,
            "prior_b": self._prior_b,
            "tau": self._tau,
            "weights": self._weights,
            "calibration": self._calibration,
            **{name[1:]: getattr(self, name) for name in SUMS + STREAM + SLOT_SOURCE},
        }

    _load_arrays = load_arrays

    def state_bytes(self) -> int:
        """Bytes of learned state (statistics grow with neurons x classes only)."""
        return sum(a.nbytes for a in self._arrays().values())

    # -- statistics shared by a fleet (edge_runtime.fleet) ----------------------------------
    def statistics(self) -> dict[str, np.ndarray]:
        """Copies of the statistics that merge across devices exactly, by addition:
        ``{"source": (3, K, N) float64}``, the labelled set (weighted count, sum, sum of squares
        per class and neuron) that ``fit`` and ``teach`` write. Not in here, because they do not
        merge exactly: the reinforcement set (an EMA per class), the alignment sums (EMAs of one
        stream) and the temporal filter (one stream's)."""
        self._check_fitted()
        return {"source": self._source.copy()}

    # what teach would add (without adding it), add a peer's or a forgotten batch's, check one
    taught_statistics = taught_statistics
    add_statistics = add_statistics
    check_statistics = check_statistics
