"""What of a MemFlow memory adds up across devices, and its state arrays: merge, load, statistics deltas;
the parameter check, the class-balanced slots' refresh and the views of the state (drift, C export)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.features import as_features, as_labels
from edge_runtime.kernels import align

# Running sums that merge by addition, and the state of one stream (kept by ``merge``), as the
# attribute names their state arrays are named after (without the underscore).
SUMS = (
    "_source",
    "_target",
    "_shift_sum",
    "_shift_sq",
    "_shift_weight",
    "_proj_sum",
    "_proj_sq",
    "_frames",
    "_input_stats",
    "_basis_stats",
    "_trace_sum",
    "_slot_weight",
    "_slot_sums",
    "_slot_trace_sums",
    "_slot_y1",
    "_slot_y2",
)
STREAM = (
    "_mix",
    "_recent",
    "_ring",
    "_ring_count",
    "_belief",
    "_history",
    "_moments",
    "_temporal_frames",
    "_slot_ring",
    "_slot_count",
)
# the source's class statistics the slots are read against (fixed at fit, like the centre)
SLOT_SOURCE = ("_slot_source_mean", "_slot_source_y1", "_slot_source_y2")
_READOUTS = ("product", "mixture")
_VARIANCES = ("pooled", "class")
_REFERENCES = ("source", "class")  # what a slot's frames are measured from


def merge(model: Any, other: Any) -> Any:
    """``MemFlow.merge``: add another memory of the same network, exactly."""
    model._check_fitted()
    other._check_fitted()
    if other.get_params() != model.get_params() or other._source.shape != model._source.shape:
        raise InputError("can only merge memories with identical parameters and sizes")
    if not all(
        np.array_equal(getattr(other, a), getattr(model, a))
        for a in ("_centre_source", "_scale", "_basis", "_prior_w", "_prior_b")
    ):
        raise InputError(
            "can only merge memories of the same network: same centre and basis (pass "
            "fit(..., centre=..., basis=...)) and the same source head (prior=False, or fitted on "
            "the same source)"
        )
    for name in SUMS:
        getattr(model, name)[...] += getattr(other, name)
    if model.balanced:
        align.refresh_mix_balanced(
            model._basis_var,
            model._slot_weight,
            model._slot_y1,
            model._slot_y2,
            model._slot_source_y1,
            model._slot_source_y2,
            float(model.slot_cov_prior),
            model._slot_pi,
            float(model.slot_floor),
            model._mix,
        )
    else:
        align.refresh_mix(
            model._basis_var,
            model._proj_sum,
            model._proj_sq,
            float(model._shift_weight[0]),
            model._prior_weight(),
            model._mix,
        )
    model._refresh()
    return model


def load_arrays(model: Any, arrays: dict[str, np.ndarray]) -> None:
    """``MemFlow._load_arrays``: rebuild the network from the seed, then restore the state arrays."""
    source = np.asarray(arrays["source"], np.float64)
    if source.ndim != 3 or source.shape[0] != 3 or source.shape[2] != model.n_neurons:
        raise InputError(f"memory statistics have shape {source.shape}, expected (3, K, {model.n_neurons})")
    centre = np.asarray(arrays["centre_source"], np.float32)
    model._build(centre.shape[0], source.shape[1])
    model._centre_source = centre.copy()
    model._scale = np.asarray(arrays["scale"], np.float32).copy()
    model._prior_w = np.ascontiguousarray(arrays["prior_w"], np.float32)
    model._prior_b = np.ascontiguousarray(arrays["prior_b"], np.float32)
    model._tau[:] = arrays["tau"]
    # written before the product was calibrated: the head as it is, the memory at its parameter
    model._weights[:] = arrays["weights"] if "weights" in arrays else (1.0, model.memory_weight)
    # Arrays added after the first format are absent from older states, whose parameters
    # (``LEGACY``) switch off the stages that read them; without "calibration" teaching leaves
    # the weights as they are.
    for name in ("_basis", "_calibration") + SUMS + STREAM + SLOT_SOURCE:
        if name[1:] in arrays:
            target = getattr(model, name)
            value = np.asarray(arrays[name[1:]])
            if value.shape != target.shape:
                raise InputError(f"memory array {name[1:]!r} has shape {value.shape}, expected {target.shape}")
            target[...] = value
    model._refresh()


def taught_statistics(model: Any, features: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """``MemFlow.taught_statistics``: what ``teach(features, labels)`` would add to
    ``statistics()``, without adding it (through the source's map: ``alignment.source_traces``)."""
    model._check_fitted()
    x = as_features(features, model._dim)
    y = as_labels(labels, x.shape[0], model._n_classes)
    delta = np.zeros_like(model._source)
    model._memorise(model._source_traces(x), y, delta)
    return {"source": delta}


def add_statistics(model: Any, delta: dict[str, np.ndarray]) -> None:
    """``MemFlow.add_statistics``: add a delta of ``statistics()`` (a peer's taught examples, or
    minus a forgotten batch) and refresh the Gaussians; checked before anything changes."""
    check_statistics(model, delta)
    model._source += delta["source"]
    model._refresh()


def check_statistics(model: Any, delta: dict[str, np.ndarray]) -> None:
    """``MemFlow.check_statistics``: InputError unless ``delta`` fits; nothing changes."""
    model._check_fitted()
    source = delta.get("source")
    if (
        set(delta) != {"source"}
        or not isinstance(source, np.ndarray)
        or source.dtype != np.float64
        or source.shape != model._source.shape
        or not np.isfinite(source).all()
    ):
        raise InputError(
            f"a statistics delta is {{'source': finite float64 array {model._source.shape}}}, " f"got {sorted(delta)}"
        )
    if np.any(model._source[0] + source[0] < 0):
        raise InputError("a statistics delta would leave a class with a negative count")


def check_params(model: Any) -> None:
    """``MemFlow`` parameters that no network can have: refused before anything is built."""
    if model.readout not in _READOUTS:
        raise InputError(f"readout must be one of {_READOUTS}, got {model.readout!r}")
    if model.variance not in _VARIANCES:
        raise InputError(f"variance must be one of {_VARIANCES}, got {model.variance!r}")
    if model.n_hub < 0 or model.n_bridge < 0 or model.n_hub + model.n_bridge == 0:
        raise InputError(f"need at least one neuron, got n_hub={model.n_hub}, n_bridge={model.n_bridge}")
    if model.rounds < 1:
        raise InputError(f"rounds must be >= 1, got {model.rounds}")
    if not 0.0 <= model.decay < 1.0 or not 0.0 <= model.shift_decay < 1.0:
        raise InputError("decay and shift_decay must be in [0, 1)")
    if model.shift_rank < 0 or model.shift_every < 1 or model.shift_novelty < 0 or model.shift_ring < 0:
        raise InputError(
            f"need shift_rank >= 0, shift_every >= 1, shift_novelty >= 0 and shift_ring >= 0, got "
            f"{model.shift_rank}, {model.shift_every}, {model.shift_novelty} and {model.shift_ring}"
        )
    if model.slot_reference not in _REFERENCES:
        raise InputError(f"slot_reference must be one of {_REFERENCES}, got {model.slot_reference!r}")
    if not model.slot_leak > 0:
        raise InputError(f"slot_leak must be > 0, got {model.slot_leak}")
    if model.temporal_lag < 2 or not 0.0 <= model.temporal_max < 1.0:
        raise InputError(
            f"need temporal_lag >= 2 and temporal_max in [0, 1), got {model.temporal_lag} and " f"{model.temporal_max}"
        )


def allocate_slots(model: Any, dim: int, n_classes: int, n: int, rank: int) -> None:
    """The class-balanced domain statistics' arrays (see ``K.Slots``), zero: a slot per class."""
    model._slot_weight = np.zeros(n_classes)
    model._slot_sums = np.zeros((n_classes, dim))
    model._slot_trace_sums = np.zeros((n_classes, n))
    model._slot_y1 = np.zeros((n_classes, rank))
    model._slot_y2 = np.zeros((n_classes, rank, rank))
    model._slot_source_mean = np.zeros((n_classes, dim))
    model._slot_source_y1 = np.zeros((n_classes, rank))
    model._slot_source_y2 = np.zeros((n_classes, rank, rank))
    model._slot_ring = np.zeros((max(int(model.slot_ring), 1), rank))
    model._slot_count = np.zeros(1, np.int64)
    model._slot_offset = np.zeros(dim)
    model._slot_trace_offset = np.zeros(n)
    model._slot_trace_source = np.zeros((n_classes, n))
    model._slot_pi = np.full(n_classes, 1.0 / n_classes)
    # what each slot's frames are measured from, input and traces (derived: ``refresh_slots``)
    model._slot_reference = np.zeros((n_classes, dim))
    model._slot_trace_reference = np.zeros((n_classes, n))
    model._slot_zraw = np.zeros(dim, np.float32)
    model._slot_mraw = np.zeros(n, np.float32)


def fit_slots(model: Any, x: np.ndarray, proj: np.ndarray | None, y: np.ndarray) -> None:
    """The source's class statistics the slots are read against: each class's mean of the
    normalised features x (n, d) and, given the projections proj (n, r), their first and
    second moments."""
    for c in range(model._n_classes):
        rows = y == c
        if rows.any():
            model._slot_source_mean[c] = x[rows].mean(axis=0)
            if proj is not None:
                p = proj[rows]
                model._slot_source_y1[c] = p.mean(axis=0)
                model._slot_source_y2[c] = p.T @ p / len(p)


def slot_offset(model: Any) -> np.ndarray:
    """The slots' combined input offset as it stands (``K.Slots``), gain included."""
    gain = align.slot_gain(model._slot_weight, float(model.slot_prior), model._slot_pi, float(model.slot_floor))
    return gain * model._slot_offset


def refresh_slots(model: Any) -> None:
    """The slots' fixed weights (the source class frequencies), the source class mean traces,
    what each slot is measured from and both combined offsets, from scratch (after fit, teach,
    merge or load)."""
    counts = model._source[0, :, 0] if model.n_neurons else np.ones(model._n_classes)
    model._slot_pi[:] = counts / counts.sum() if counts.sum() > 0 else 1.0 / model._n_classes
    with np.errstate(divide="ignore", invalid="ignore"):
        model._slot_trace_source[:] = np.where(model._source[0] > 0, model._source[1] / model._source[0], 0.0)
    # "source": a class in view moves the centre by at most slot_leak of its distance from the mean;
    # one alpha for every class, so that the references still average to the source mean
    alpha = max(0.0, 1.0 - float(model.slot_leak) / float(model._slot_pi.max()))
    prior = float(model.slot_prior)
    for sums, means, reference, offset in (
        (model._slot_sums, model._slot_source_mean, model._slot_reference, model._slot_offset),
        (model._slot_trace_sums, model._slot_trace_source, model._slot_trace_reference, model._slot_trace_offset),
    ):
        centre = model._slot_pi @ means
        reference[:] = means if model.slot_reference == "class" else centre + alpha * (means - centre)
        align.balanced_offset(sums, model._slot_weight, reference, prior, model._slot_pi, offset)


def domain_statistics(model: Any) -> dict[str, tuple[np.ndarray, float]]:
    """The domain statistics as they stand, each with its unit (for the bench's drift under
    dwell): the input centre (unit: the source's total standard deviation), the subspace map
    A - I (unit 1), the neuron-level shift (unit: the source traces' total standard deviation)
    and the reinforced memory's class means (same unit)."""
    stage = model.input_stage()
    trace_unit = float(np.sqrt(model._tv.sum())) if model.n_neurons else 1.0
    return {
        "centre": (stage.centre.astype(np.float64), float(np.sqrt(model._input_var.sum()))),
        "subspace": (stage.mix.astype(np.float64), 1.0),
        "trace_shift": (model.trace_shift().astype(np.float64), trace_unit),
        "memory": (model._mu.astype(np.float64), trace_unit),
    }


def c_export(model: Any) -> dict[str, Any]:
    """What the C read-out classifies with: the Gaussians neuron-major (N, K), which classes and
    neurons are live, the input stage and trace shift as they stand, the source head and the
    read-out temperature."""
    model._check_fitted()
    return {
        "mu": model._mu,
        "hiv": model._hiv,
        "lnorm": model._lnorm,
        "present": model._present,
        "alive": model._alive,
        "stage": model.input_stage(),
        "trace_shift": model.trace_shift(),
        "prior_w": model._prior_w,
        "prior_b": model._prior_b,
        "centre_source": model._centre_source,
        "head_scale": float(model._weights[0]),
        "memory_weight": float(model._weights[1]),
        "tau": float(model._tau[0]),
    }
