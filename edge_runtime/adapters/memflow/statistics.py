"""What of a MemFlow memory adds up across devices, and its state arrays: merge, load, statistics deltas."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.errors import InputError
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
)
STREAM = ("_mix", "_recent", "_belief", "_history", "_moments", "_temporal_frames")


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
    for name in ("_basis", "_calibration") + SUMS + STREAM:
        if name[1:] in arrays:
            target = getattr(model, name)
            value = np.asarray(arrays[name[1:]])
            if value.shape != target.shape:
                raise InputError(f"memory array {name[1:]!r} has shape {value.shape}, expected {target.shape}")
            target[...] = value
    model._refresh()


def add_statistics(model: Any, delta: dict[str, np.ndarray]) -> None:
    """``MemFlow.add_statistics``: a delta of ``statistics()``, checked before anything changes."""
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
    model._source += source
    model._refresh()
