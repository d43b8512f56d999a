"""The state tuples ``kernels.memflow.run_batch`` takes, gathered from a MemFlow adapter."""

from __future__ import annotations

from typing import Any, Callable

import numba

from edge_runtime.kernels import memflow as K

_TEMPORAL_TRUST = 10.0  # lagged pairs before the measured stay probability counts half (kernels.temporal)


def kernel_args(model: Any) -> tuple:
    """The state tuples of ``K.run_batch`` (``K.run_batch_balanced`` with ``balanced``, which also
    takes ``Slots``), between the learn flag and ``out``: gathered once per
    state and parameter set (reading them per frame cost 3-5 µs of a ~100 µs adapt)."""
    stage = K.Stage(
        bool(model.shift),
        bool(model.shift_spread),
        float(model.shift_prior),
        bool(model.shift_fade),
        float(model.shift_decay),
        float(model.shift_novelty),
        int(model.shift_every),
        model._centre_source,
        model._scale,
        model._input_var,
        model._basis,
        model._basis_var,
        model._shift_sum,
        model._shift_sq,
        model._shift_weight,
        model._proj_sum,
        model._proj_sq,
        model._mix,
        model._recent,
        model._ring,
        model._ring_count,
        model._frames,
        model._trace_mean,
        model._trace_sum,
    )
    memory = K.Memory(
        model._source,
        model._target,
        float(model.source_weight),
        model.variance == "class",
        model._tv,
        model._floor_v,
        model._blur_v,
        model._alive,
        model._mu,
        model._hiv,
        model._lnorm,
        model._present,
        model.readout == "product",
        bool(model.confidence),
        float(model._tau[0]),
        bool(model.reinforce),
        float(model.gate),
        float(model.decay),
        bool(model.confidence_update),
    )
    head = K.Head(
        bool(model.prior),
        model._prior_w,
        model._prior_b,
        float(model._weights[0]),
        float(model._weights[1]),
        bool(model.prior_unit),
    )
    temporal = K.Temporal(
        bool(model.temporal),
        model._class_prior,
        model._belief,
        model._history,
        model._moments,
        model._temporal_frames,
        float(model.shift_decay),
        _TEMPORAL_TRUST,
        float(model.temporal_max),
    )
    if not model.balanced:  # K.run_batch: no slots to pass
        return stage, model._net(), memory, head, temporal, model._work
    slots = K.Slots(
        bool(model.balanced),
        bool(model.slot_soft),
        float(model.slot_prior),
        float(model.slot_decay),
        float(model.slot_gate),
        float(model.slot_cov_prior),
        float(model.slot_floor),
        float(model.slot_novelty),
        model._slot_pi,
        model._slot_reference,
        model._slot_weight,
        model._slot_sums,
        model._slot_offset,
        model._slot_trace_reference,
        model._slot_trace_sums,
        model._slot_trace_offset,
        model._slot_y1,
        model._slot_y2,
        model._slot_source_y1,
        model._slot_source_y2,
        model._slot_ring,
        model._slot_count,
        model._slot_zraw,
        model._slot_mraw,
    )
    return stage, model._net(), memory, head, temporal, model._work, slots


def compiled_entry(kernel: Any, args: tuple) -> Callable[..., int] | None:
    """The compiled function numba's dispatcher runs for ``args``, to be called directly: the
    dispatcher resolves the types of every argument on every call, and the state tuples hold
    ~100 arrays (19 of ~105 us of a one-frame adapt at 9 classes). None if no overload was
    compiled for exactly these types."""
    result = kernel.overloads.get(tuple(numba.typeof(a) for a in args))
    return None if result is None else result.entry_point
