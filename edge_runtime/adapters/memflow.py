"""MemFlow: a fixed random spiking network whose neurons memorise, per class, how they respond.

The maths and the kernels are in ``edge_runtime.kernels.memflow``; the graph and its PRNG spec in
``edge_runtime.kernels.prng``. This class validates input, owns the state (seed, sizes and
sufficient statistics; never the weights, which are regenerated from the seed) and the work
buffers the batch-1 path reuses.

What this implementation changes from the paper (arXiv 2402.14598), and why. A literal
transcription (random projection, per-neuron class Gaussians, naive pseudo-label reinforcement)
scored 48 on the bench and drifted lower as it reinforced; each change below answers a failure
seen on the source data or the held-out dev tasks:

- Alignment (``edge_runtime.kernels.align``): the entry nodes get the frame brought back to the
  source, label-free, by the running statistics of the target frames before it: centred on their
  mean, and, in the source's top 16 principal directions, whitened and re-coloured to the source
  covariance (low-rank CORAL, online); after propagation each neuron's trace is centred the same
  way (source mean trace vs. its running mean on the target). Random projections of raw,
  all-positive pooled features are dominated by the common mean direction; centring makes the
  neurons' responses class-dependent, and no pseudo-label enters, so no class can confirm itself.
  A frame joins the statistics only after it is classified.
- The statistics follow the domain, not the class in view. A 20-frame EMA of the frames (FOA's
  FeatureShift, this stage's first form) becomes the mean of whatever fills the camera: under the
  bench's camera-like orders it erased the class in view (dev, Dirichlet order: 58.1 against the
  source head's 58.3; bench: 15.6 on mnist->uci-digits). The window is now 200 frames
  (``shift_decay`` 0.995), ten times a run of one class, with the source as 20 pseudo-frames that
  fade as it fills; and each frame counts by its novelty, min(1, |z - z_recent|^2 / (rho v)), so
  the near-identical frames of an object held in view add (and age) almost nothing, in the
  statistics and in reinforcement alike: held 100 frames per object, the unweighted memory fell
  8 points below the source head while the weighted one gained 5 (``tests/test_memflow_stages``).
- Fan-in gains on the weights (see the PRNG spec), so propagation rounds keep one scale.
- Read-out: the paper's confidence-weighted vote of per-neuron posteriors ("mixture"), sharpened
  by a temperature tau calibrated on the source (two-fold held-out NLL) so that its flat vote
  becomes a usable confidence for the reinforcement gate. A product of experts ("product") is
  kept as an option; on the dev tasks it was 1.7-2 points worse.
- Pooled (shared across classes) per-neuron variance with a floor: per-class variances from ~12
  source images per class collapse (the paper's per-class form scored 24% on the dev tasks).
- Source-head prior: the memory's posterior is multiplied with that of the source linear head
  (logistic regression, L2 by cross-validation on the source) on the aligned feature, rescaled to
  unit norm like the features the head was fitted on. The two share their evidence, so the plain
  product is overconfident; the head's scale and the memory's weight in it are fitted by held-out
  NLL on the source (two-fold heads and memories, ``memory_weight=None``). Taught frames weigh
  them again: each is scored on the grid before it is learnt and the source's calibration counts
  as 20 such frames. On mnist -> uci-digits the source gives the memory no weight, so without
  this a taught label changed nothing; with one frame in five taught, 1,924 of 4,311 untaught
  frames right against 1,766 (``tests/test_memflow_adapter.py``). The head is fixed at ``fit`` (it
  is part of the network, like the seed and the centre); only the memory learns.
- Source evidence is a separate frozen set of statistics, worth ``source_weight`` pseudo-samples
  per class; reinforcement writes only a per-class EMA target set whose mass saturates at
  1 / (1 - decay), so self-confirmation can move the memory but never wash the source out.
- Reinforcement is gated: p* >= ``gate`` and the memory alone and the head alone agree on the
  pseudo-label; the update is weighted by p* times E_i = Q(m_i | k*) without its normalising
  factor (so 0 < E_i <= 1). On the dev tasks looser settings (gate 0.5, source_weight 20-50) made
  the most frequent class a sink (its target mean drifts to the middle of the target cloud and
  absorbs more frames) and cost 1-2 points; these settings make reinforcement neutral or better.
- Blur width and confidences are per neuron relative to the neuron's source spread, so one
  setting fits neurons of any scale.
- Temporal filter (``edge_runtime.kernels.temporal``): a camera holds an object in view, so each
  frame's posterior is read with the last (an HMM forward pass) by a stay probability measured on
  the stream from how consecutive posteriors agree beyond frames 16 apart; on a shuffled stream it
  measures ~0 and the filter stands aside. It runs after reinforcement, which never sees it.
- Speed: one kernel call per batch over preallocated buffers. The read-out walks the memory
  once, neuron by neuron (neuron-major Gaussians, the confidences' common factor kept as a
  running maximum, online-softmax style), and its K x N exponentials (and the N of the
  confidences and of the reinforcement weights) use a vectorisable float32 exp2 (numba has no
  vector exp without SVML); bridges gather their links from entries and, in the spiking rounds,
  from neurons, in groups sorted to equal widths (fixed trip counts, a third fewer links read than
  all padded to the widest); running minima, spike resets and fire use integer minima or
  NaN-guarded np.maximum, never a masked store (microcoded on AMD Zen). The kernels use numpy's
  error model (an unchecked division vectorises) and the kernel's state tuples are gathered once
  per state, not per frame.

How each default was chosen is written next to it in ``MemFlow.__init__``'s docstring.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar, NamedTuple

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError
from edge_runtime.kernels import align
from edge_runtime.kernels import memflow as K
from edge_runtime.kernels import temporal as T
from edge_runtime.kernels.prng import make_graph

_READOUTS = ("product", "mixture")
_HEADS: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}


def _source_head(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float | None
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """The source linear head (``edge_runtime.adapters.linear.Linear``, L2 by cross-validation on
    the source) as (W, b, its L2 strength). It is a pure function of the source, so it is computed
    once per source in a process (a bench fits several MemFlow variants on one source)."""
    from edge_runtime.adapters.linear import Linear

    key = hashlib.sha256(x.tobytes() + y.tobytes() + str((x.shape, n_classes, l2)).encode()).hexdigest()
    if key not in _HEADS:
        if len(_HEADS) >= 8:
            _HEADS.pop(next(iter(_HEADS)))
        head = Linear(l2=l2).fit(x, y, n_classes)
        _HEADS[key] = (np.array(head.weight, np.float32), np.array(head.bias, np.float32), head.chosen_l2)
    w, b, chosen = _HEADS[key]
    return w.copy(), b.copy(), chosen


_SCALES = np.geomspace(1 / 8, 8, 25)  # the head's scale in the product
_MEMORY_WEIGHTS = np.linspace(0.0, 2.0, 21)  # the memory's weight in it
_SOURCE_FRAMES = 20.0  # what the source's held-out calibration counts for against taught frames


def _nll_grid(head: np.ndarray, memory: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(len(_SCALES), len(_MEMORY_WEIGHTS)) summed NLL of softmax(scale head + weight memory) over
    labelled rows (logits (n, K) each): the product of two posteriors that share their evidence is
    overconfident, and the temporal filter needs a calibrated one."""
    z = _SCALES[:, None, None, None] * head + _MEMORY_WEIGHTS[None, :, None, None] * memory
    z -= z.max(axis=-1, keepdims=True)
    return (np.log(np.exp(z).sum(axis=-1)) - z[..., np.arange(len(truth)), truth]).sum(axis=-1)


def _best(grid: np.ndarray) -> tuple[float, float]:
    i, j = np.unravel_index(int(np.argmin(grid)), grid.shape)
    return float(_SCALES[i]), float(_MEMORY_WEIGHTS[j])


_VARIANCES = ("pooled", "class")


class InputStage(NamedTuple):
    """The map a frame enters the network through, as it stands (``edge_runtime.kernels.align``):
    z = (c + c U^T mix U) * factor with c = x / ||x|| - centre; U = ``basis`` (r, d)."""

    centre: np.ndarray  # (d,) float32
    factor: np.ndarray  # (d,) float32
    basis: np.ndarray  # (r, d) float32
    mix: np.ndarray  # (r, r) float32

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Rows x (n, d), L2-normalised, through the map (float32)."""
        c = np.asarray(x, np.float32) - self.centre
        return ((c + (c @ self.basis.T) @ self.mix.T @ self.basis) * self.factor).astype(np.float32)


def principal_directions(centred: np.ndarray, rank: int) -> np.ndarray:
    """The top ``rank`` principal directions (rank, d) of centred rows, float32, signs fixed (each
    row's largest entry positive) so that the same source gives the same basis."""
    n, d = centred.shape
    if n < d:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        top = vt[:rank]
    else:  # the d x d scatter is cheaper to decompose than n rows
        values, vectors = np.linalg.eigh(centred.T @ centred)
        top = vectors[:, ::-1][:, :rank].T
    top = top * np.sign(top[np.arange(len(top)), np.abs(top).argmax(axis=1)])[:, None]
    out = np.zeros((rank, d), np.float32)
    out[:len(top)] = top
    return out
# Running sums that merge by addition, and the state of one stream (kept by ``merge``), as the
# attribute names their state arrays are named after (without the underscore).
_SUMS = ("_source", "_target", "_shift_sum", "_shift_sq", "_shift_weight", "_proj_sum", "_proj_sq", "_frames",
         "_input_stats", "_basis_stats", "_trace_sum")
_STREAM = ("_mix", "_recent", "_belief", "_history", "_moments", "_temporal_frames")
_TEMPORAL_TRUST = 10.0  # lagged pairs before the measured stay probability counts half (kernels.temporal)


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
    shift, shift_prior, shift_decay, shift_fade, shift_spread, shift_rank, shift_every, shift_novelty
        The alignment stages (``edge_runtime.kernels.align``): on/off, source pseudo-frames, EMA
        factor of the running statistics (a window of 1 / (1 - decay) frames), whether the
        pseudo-frames fade with the EMA (else they anchor the statistics for good), the spread
        stage (per-dimension variance), the rank of the subspace whose covariance is aligned (0:
        none) and the frames between refreshes of its map, and the novelty scale rho of the
        frames' weights (0: every frame weighs 1).
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

    How the defaults were chosen (never on a reported bench task; "dev" = the held-out dev
    corruptions of ``edge_runtime.bench.tasks.DEV_TASKS`` with the two-fold photo protocol, 3
    seeded streams, EfficientNet-Lite0 features; "control" = the photo halves, i.e. source data).
    The network and read-out were chosen on shuffled streams, first on the four ImageNet-C
    validation corruptions with earlier features:

    - in_degree 30, rounds 3, spiking on, confidence on: the paper.
    - n_hub 128, n_bridge 512: dev mean 72.5 vs 69.3 (paper's 50/50), 68.2 (32/256), 71.6
      (64/512 and 64/1024), 70.4 (256/512); cost grows with n_hub (d x n_hub MACs per frame).
    - readout "mixture": dev 72.5 vs 70.8 for "product" (both with the prior).
    - variance "pooled", var_floor 0.05: per-class variance collapsed (24% dev); the floor is a
      fixed guard, not tuned.
    - blur 0.5: dev flat in blur (71.7 at 0, 71.6 at 0.5, 71.1 at 1.0 on the 64/512 network);
      kept on so the paper's component is in the default.
    - temperature None: calibrated on the source (two-fold NLL).
    - source_weight 200, gate 0.9, decay 0.99: the most conservative of the dev sweep; looser
      settings lost 1-2 points to the read-only memory (see the module docstring).
    - prior on, prior_unit on: control 86.5 vs 84.7 without the prior (linear head: 86.6).
    - standardise off: dev 69.1 on vs 69.5 off (no gain).

    The alignment, the temporal filter and the calibrated product were chosen on the six dev
    corruptions under all three stream orders (iid, dirichlet, runs: ``edgert bench accuracy
    --tasks dev``); mean of the three orders, with the iid, dirichlet and runs means in brackets.
    The defaults score 69.7 (67.9, 70.0, 71.2); ``shift`` 61.8 (65.6, 60.0, 59.7):

    - shift_prior 20, shift_fade on: FeatureShift's start (the source mean as 20 pseudo-frames).
      With its 20-frame window (shift_decay 0.95), no subspace, no novelty and no temporal filter
      MemFlow scores 62.6 (64.9, 61.5, 61.3): the window follows the class in view.
    - shift_decay 0.995 (a 200-frame window): dev cannot tell windows longer than its 105-frame
      streams apart (0.999: 69.7 (67.8, 70.0, 71.4)). 200 frames is ten times a bench run of one
      class; a longer one was slower to catch up with a new domain in ``make demo`` (emoji after
      clipart, int8.tflite: 36.8% adapted at 0.999, 40.7% at 0.995, against 30.4% source-only).
    - shift_rank 16: 67.5 (66.2, 67.3, 69.0) at rank 0; rank 32: 70.2 (67.8, 70.8, 72.1), within
      the orders' spread and 30% more adapt time, not taken. shift_every 8: the map is refreshed
      every 8 frames (an r x r eigendecomposition); every frame scored the same in a head-only
      prototype (65.3 vs 65.6 every 8).
    - shift_spread off: 69.6 (67.9, 69.7, 71.4) on; with the subspace map it adds nothing.
    - shift_novelty 0.25: a guard, not tuned; dev 69.7 either way (its images are all distinct).
      Its job is held frames (``tests/test_memflow_stages.py``: 40 photos held 100 frames each).
    - temporal on: 66.1 (68.0, 65.2, 65.0) off. temporal_lag 16: 69.0 (67.9, 68.9, 70.1) at 32.
      temporal_max 0.95: 0.99 scored the same.
    - memory_weight None (the product calibrated on held-out source): 68.4 (67.9, 68.4, 69.0)
      with the plain product (1.0), 68.8 (67.0, 68.5, 70.8) without the memory (0.0).
    - spiking on: the paper's network. Without spiking (``memflow-no-spike``) 69.9 (68.0, 70.1,
      71.5): the spiking rounds do not earn their place on these tasks (README says so).
    - reinforce on: off (``memflow-static``) 69.6 (67.9, 69.9, 71.2); gate 0.5 or 0.7,
      source_weight 50, decay 0.999: all within 0.1.

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
    # Parameters added after the first state format (0.1.0), set so that a state written without
    # them predicts as it did: no spread, subspace, novelty or temporal stage.
    LEGACY: ClassVar[dict[str, Any]] = {"shift_spread": False, "shift_rank": 0, "shift_novelty": 0.0,
                                        "temporal": False}

    def __init__(self, n_hub: int = 128, n_bridge: int = 512, in_degree: int = 30,
                 rounds: int = 3, seed: int = 0, spiking: bool = True, blur: float = 0.5,
                 confidence_update: bool = True, reinforce: bool = True,
                 readout: str = "mixture", confidence: bool = True, variance: str = "pooled",
                 var_floor: float = 0.05, temperature: float | None = None,
                 source_weight: float = 200.0, decay: float = 0.99, gate: float = 0.9,
                 shift: bool = True, shift_prior: float = 20.0, shift_decay: float = 0.995,
                 shift_fade: bool = False, shift_spread: bool = False, shift_rank: int = 16,
                 shift_every: int = 8, shift_novelty: float = 0.25, standardise: bool = False,
                 prior: bool = True, memory_weight: float | None = None, prior_l2: float | None = None,
                 prior_unit: bool = True, temporal: bool = True, temporal_lag: int = 16,
                 temporal_max: float = 0.95) -> None:
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
        self.standardise = standardise
        self.prior = prior
        self.memory_weight = memory_weight
        self.prior_l2 = prior_l2
        self.prior_unit = prior_unit
        self.temporal = temporal
        self.temporal_lag = temporal_lag
        self.temporal_max = temporal_max

    # -- construction ----------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.readout not in _READOUTS:
            raise InputError(f"readout must be one of {_READOUTS}, got {self.readout!r}")
        if self.variance not in _VARIANCES:
            raise InputError(f"variance must be one of {_VARIANCES}, got {self.variance!r}")
        if self.n_hub < 0 or self.n_bridge < 0 or self.n_hub + self.n_bridge == 0:
            raise InputError(f"need at least one neuron, got n_hub={self.n_hub}, n_bridge={self.n_bridge}")
        if self.rounds < 1:
            raise InputError(f"rounds must be >= 1, got {self.rounds}")
        if not 0.0 <= self.decay < 1.0 or not 0.0 <= self.shift_decay < 1.0:
            raise InputError("decay and shift_decay must be in [0, 1)")
        if self.shift_rank < 0 or self.shift_every < 1 or self.shift_novelty < 0:
            raise InputError(f"need shift_rank >= 0, shift_every >= 1 and shift_novelty >= 0, got "
                             f"{self.shift_rank}, {self.shift_every} and {self.shift_novelty}")
        if self.temporal_lag < 2 or not 0.0 <= self.temporal_max < 1.0:
            raise InputError(f"need temporal_lag >= 2 and temporal_max in [0, 1), got {self.temporal_lag} and "
                             f"{self.temporal_max}")

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
        self._frames = np.zeros(1, np.int64)
        self._input_stats = np.zeros((3, dim))
        self._basis_stats = np.zeros((3, rank))
        self._trace_sum = np.zeros(self.n_neurons)
        self._tau = np.ones(1)
        self._weights = np.ones(2)  # the head's scale and the memory's weight in the product
        # NLL of each (scale, weight) on the grid: per held-out source row, and summed over taught frames
        self._calibration = np.zeros((2, len(_SCALES), len(_MEMORY_WEIGHTS)))
        self._belief = np.zeros(n_classes)
        self._history = np.zeros((self.temporal_lag, n_classes), np.float32)
        self._moments = np.zeros(T.N_MOMENTS)
        self._temporal_frames = np.zeros(1, np.int64)
        # Neuron-major (N, K), as the read-out walks them (see ``K.retrieve``).
        self._mu = np.zeros((n, n_classes), np.float32)
        self._hiv = np.zeros((n, n_classes), np.float32)
        self._lnorm = np.zeros((n, n_classes), np.float32)
        self._present = np.zeros(n_classes, np.bool_)
        self._work = K.Work(centre=np.zeros(dim, np.float32), factor=np.zeros(dim, np.float32),
                            z=np.zeros(dim, np.float32), a=np.zeros(n, np.float32), h=np.zeros(n, np.float32),
                            o=np.zeros(n, np.float32), o_prev=np.zeros(n, np.float32), m=np.zeros(n, np.float32),
                            row=np.zeros(n_classes, np.float32), part=np.zeros(n_classes, np.float32),
                            vote=np.zeros(n_classes), logits=np.zeros(n_classes, np.float32),
                            y=np.zeros(rank, np.float32), t=np.zeros(rank, np.float32), y64=np.zeros(rank))

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
            self._blur_v = 0.5 * self.blur ** 2 * self._tv
            scatter = np.where(src[0] > 0, src[2] - src[1] ** 2 / src[0], 0.0).sum(axis=0)
            pooled = np.where(tot0 > 0, scatter / tot0, self._tv)
        v = np.maximum(pooled, self._floor_v) + self._blur_v
        self._hiv[:] = (0.5 / v)[:, None]
        self._lnorm[:] = (-0.5 * np.log(2 * math.pi * v / self._tv))[:, None]
        for k in range(self._n_classes):
            K.refresh_class(k, self._source, self._target, float(self.source_weight),
                            self.variance == "class", self._tv, self._floor_v, self._blur_v,
                            self._mu, self._hiv, self._lnorm, self._present)

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
    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None, *,
            centre: np.ndarray | None = None, basis: np.ndarray | None = None) -> "MemFlow":
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
            self._scale = (scale * np.sqrt(var.sum() / (scale ** 2 * var).sum())).astype(np.float32)
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
        m = self._traces(centred.astype(np.float32) * self._scale)
        if self.prior:
            self._prior_w, self._prior_b, l2 = _source_head(x, y, k, self.prior_l2)
        else:
            self._prior_w, self._prior_b, l2 = np.zeros((k, 1), np.float32), np.zeros(k, np.float32), 0.0
        tau, held, truth, fold = self._calibrate(m, y)
        self._tau[0] = tau if self.temperature is None else float(self.temperature)
        self._weights[:] = (1.0, self.memory_weight if self.memory_weight is not None else 1.0)
        if self.prior and self.memory_weight is None and len(truth):
            from edge_runtime.adapters.linear import fit_logistic

            head = np.concatenate([x[fold != f] @ w.T + b for f in (0, 1) if (fold != f).any()
                                   for w, b in [fit_logistic(x[fold == f], y[fold == f], k, l2)]])
            grid = _nll_grid(head, held / self._tau[0], truth)
            self._calibration[0] = grid / len(truth)
            self._weights[:] = _best(grid)
        self._memorise(m, y, self._source)
        self._refresh()
        return self

    def _checked_basis(self, basis: np.ndarray) -> np.ndarray:
        b = np.asarray(basis, np.float32)
        if b.shape != self._basis.shape or not np.isfinite(b).all():
            raise InputError(f"basis must be a finite float array of shape {self._basis.shape} (shift_rank, d), "
                             f"got {b.dtype} {b.shape}")
        return b

    def _memory_logp(self, m: np.ndarray) -> np.ndarray:
        """The memory's log posteriors (n, K) at temperature 1 for traces m (n, N); reads only."""
        p = np.zeros((len(m), self._n_classes), np.float32)
        w = self._work
        for r in range(len(m)):
            K.retrieve(m[r], self._mu, self._hiv, self._lnorm, self.variance == "class", self._present,
                       self._alive, self.readout == "product", self.confidence, 1.0, w.row, w.part, w.vote, p[r])
        return np.log(np.maximum(p, 1e-30))

    def _calibrate(self, m: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """Temperature of the read-out minimising the two-fold held-out NLL on the source (folds:
        alternate samples within each class, no randomness); also returns the held-out rows' log
        posteriors at temperature 1 (n, K), their labels, and each row's fold."""
        fold = np.zeros(len(y), np.int64)
        for k in np.unique(y):
            idx = np.flatnonzero(y == k)
            fold[idx[1::2]] = 1
        logp, truth = [], []
        for f in (0, 1):
            self._source[:] = 0.0
            self._memorise(m[fold == f], y[fold == f], self._source)
            self._refresh()
            held = m[fold != f]
            if not len(held):
                continue
            logp.append(self._memory_logp(held))
            truth.append(y[fold != f])
        self._source[:] = 0.0
        if not logp:
            return 1.0, np.zeros((0, self._n_classes)), np.zeros(0, np.int64), fold
        s = np.concatenate(logp).astype(np.float64)
        t = np.concatenate(truth)
        best_tau, best_nll = 1.0, np.inf
        for tau in np.geomspace(1e-4, 10.0, 121):
            z = s / tau
            z -= z.max(axis=1, keepdims=True)
            nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(t)), t]))
            if nll < best_nll:
                best_tau, best_nll = float(tau), nll
        return best_tau, s, t, fold

    def teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Memorise labelled examples online (aligned like the frames being adapted to)."""
        self._check_fitted()
        x = as_features(features, self._dim)
        y = as_labels(labels, x.shape[0], self._n_classes)
        stage = self.input_stage()
        z = stage.apply(x)
        m = self._traces(z) + self.trace_shift()
        if self.prior and self.memory_weight is None and self._calibration[0].any():
            self._recalibrate(stage, z, m, y)
        self._memorise(m, y, self._source)
        self._refresh()

    def _recalibrate(self, stage: "InputStage", z: np.ndarray, m: np.ndarray, y: np.ndarray) -> None:
        """Weigh head and memory again with the taught frames, each scored before it is learnt
        (prequential), the source's held-out calibration counting as ``_SOURCE_FRAMES`` of them:
        taught target frames say how far the memory can be trusted on this domain, where the
        source alone may have given it no weight at all."""
        head, out = np.empty((len(z), self._n_classes)), np.zeros(self._n_classes, np.float32)
        w = self._work
        for r in range(len(z)):  # the read-out's own head, which leaves its logits in w.logits
            K.combine_prior(z[r], self._centre_source, stage.factor, self._prior_w, self._prior_b, 1.0, 0.0,
                            bool(self.prior_unit), w.centre, w.logits, out)
            head[r] = w.logits
        self._calibration[1] += _nll_grid(head, self._memory_logp(m) / self._tau[0], y)
        self._weights[:] = _best(_SOURCE_FRAMES * self._calibration[0] + self._calibration[1])

    def _prior_weight(self) -> float:
        return align.prior_weight(float(self.shift_prior), self.shift_fade, float(self.shift_decay),
                                  float(self._shift_weight[0]))

    def input_stage(self) -> "InputStage":
        """The map the next frame enters the network through (see ``InputStage``)."""
        self._check_fitted()
        centre, factor = np.empty(self._dim, np.float32), np.empty(self._dim, np.float32)
        align.stage(self._centre_source, self._scale, self._input_var, self._shift_sum, self._shift_sq,
                    float(self._shift_weight[0]), self._prior_weight(), self.shift, self.shift_spread, centre, factor)
        return InputStage(centre, factor, self._basis.copy(), self._mix.copy())

    def trace_shift(self) -> np.ndarray:
        """(N,) float32: the neuron-level shift the next frame's traces get (see
        ``K.shift_traces``); zeros with the shift stage off or no weight at all."""
        self._check_fitted()
        delta = np.zeros(self.n_neurons, np.float32)
        if self.shift:
            K.shift_traces(delta, self._trace_mean, self._trace_sum, float(self._shift_weight[0]),
                           self._prior_weight(), float(self.shift_decay), False, 0.0)
        return delta

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
            raise InputError(f"out must be float32 of shape {(x.shape[0], self._n_classes)}, got {out.dtype} {out.shape}")
        if self._state_args is None:
            self._state_args = self._kernel_args()
        bad = K.run_batch(x, learn, *self._state_args, out)
        if bad >= 0:
            what = "is all zero" if np.isfinite(x[bad]).all() else "holds NaN or inf"
            done = f" (rows before it were processed)" if bad else ""
            raise InputError(f"features row {bad} {what}{done}")
        return out

    def _kernel_args(self) -> tuple:
        """``K.run_batch``'s state tuples (between the learn flag and ``out``): gathered once per
        state and parameter set (reading them per frame cost 3-5 µs of a ~100 µs adapt)."""
        stage = K.Stage(bool(self.shift), bool(self.shift_spread), float(self.shift_prior), bool(self.shift_fade),
                        float(self.shift_decay), float(self.shift_novelty), int(self.shift_every),
                        self._centre_source, self._scale, self._input_var, self._basis, self._basis_var,
                        self._shift_sum, self._shift_sq, self._shift_weight, self._proj_sum, self._proj_sq, self._mix,
                        self._recent, self._frames, self._trace_mean, self._trace_sum)
        memory = K.Memory(self._source, self._target, float(self.source_weight), self.variance == "class", self._tv,
                          self._floor_v, self._blur_v, self._alive, self._mu, self._hiv, self._lnorm, self._present,
                          self.readout == "product", bool(self.confidence), float(self._tau[0]), bool(self.reinforce),
                          float(self.gate), float(self.decay), bool(self.confidence_update))
        head = K.Head(bool(self.prior), self._prior_w, self._prior_b, float(self._weights[0]), float(self._weights[1]),
                      bool(self.prior_unit))
        temporal = K.Temporal(bool(self.temporal), self._class_prior, self._belief, self._history, self._moments,
                              self._temporal_frames, float(self.shift_decay), _TEMPORAL_TRUST,
                              float(self.temporal_max))
        return stage, self._net(), memory, head, temporal, self._work

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

    def merge(self, other: "MemFlow") -> "MemFlow":
        """Add another memory of the same network (seed, sizes, centre, basis): exact, by addition.
        The temporal filter's state is per stream and the taught frames' calibration per device:
        both stay this memory's."""
        self._check_fitted()
        other._check_fitted()
        if other.get_params() != self.get_params() or other._source.shape != self._source.shape:
            raise InputError("can only merge memories with identical parameters and sizes")
        if not all(np.array_equal(getattr(other, a), getattr(self, a))
                   for a in ("_centre_source", "_scale", "_basis", "_prior_w", "_prior_b")):
            raise InputError("can only merge memories of the same network: same centre and basis (pass "
                             "fit(..., centre=..., basis=...)) and the same source head (prior=False, or fitted on "
                             "the same source)")
        for name in _SUMS:
            getattr(self, name)[...] += getattr(other, name)
        align.refresh_mix(self._basis_var, self._proj_sum, self._proj_sq, float(self._shift_weight[0]),
                          self._prior_weight(), self._mix)
        self._refresh()
        return self

    # -- state -----------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        return {"centre_source": self._centre_source, "scale": self._scale, "basis": self._basis, "prior_w": self._prior_w, "prior_b": self._prior_b,
                "tau": self._tau, "weights": self._weights, "calibration": self._calibration, **{name[1:]: getattr(self, name) for name in _SUMS + _STREAM}}

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        source = np.asarray(arrays["source"], np.float64)
        if source.ndim != 3 or source.shape[0] != 3 or source.shape[2] != self.n_neurons:
            raise InputError(f"memory statistics have shape {source.shape}, expected (3, K, {self.n_neurons})")
        centre = np.asarray(arrays["centre_source"], np.float32)
        self._build(centre.shape[0], source.shape[1])
        self._centre_source = centre.copy()
        self._scale = np.asarray(arrays["scale"], np.float32).copy()
        self._prior_w = np.ascontiguousarray(arrays["prior_w"], np.float32)
        self._prior_b = np.ascontiguousarray(arrays["prior_b"], np.float32)
        self._tau[:] = arrays["tau"]
        # written before the product was calibrated: the head as it is, the memory at its parameter
        self._weights[:] = arrays["weights"] if "weights" in arrays else (1.0, self.memory_weight)
        # Arrays added after the first format are absent from older states, whose parameters
        # (``LEGACY``) switch off the stages that read them; without "calibration" teaching leaves
        # the weights as they are.
        for name in ("_basis", "_calibration") + _SUMS + _STREAM:
            if name[1:] in arrays:
                target = getattr(self, name)
                value = np.asarray(arrays[name[1:]])
                if value.shape != target.shape:
                    raise InputError(f"memory array {name[1:]!r} has shape {value.shape}, expected {target.shape}")
                target[...] = value
        self._refresh()

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

    def taught_statistics(self, features: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """What ``teach(features, labels)`` would add to ``statistics()``, without adding it."""
        self._check_fitted()
        x = as_features(features, self._dim)
        y = as_labels(labels, x.shape[0], self._n_classes)
        m = self._traces(self.input_stage().apply(x)) + self.trace_shift()
        delta = np.zeros_like(self._source)
        self._memorise(m, y, delta)
        return {"source": delta}

    def add_statistics(self, delta: dict[str, np.ndarray]) -> None:
        """Add a delta of ``statistics()`` (a peer's taught examples, or minus a forgotten batch)
        and refresh the Gaussians; checked before anything changes."""
        self._check_fitted()
        source = delta.get("source")
        if set(delta) != {"source"} or not isinstance(source, np.ndarray) or source.dtype != np.float64 \
                or source.shape != self._source.shape or not np.isfinite(source).all():
            raise InputError(f"a statistics delta is {{'source': finite float64 array {self._source.shape}}}, "
                             f"got {sorted(delta)}")
        self._source += source
        self._refresh()
