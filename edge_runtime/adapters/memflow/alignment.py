"""MemFlow's input stage: the label-free map that brings a frame back to the source
(``edge_runtime.kernels.align`` keeps its running statistics; ``docs/memflow.md``, "Alignment")."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from edge_runtime.kernels import align
from edge_runtime.kernels import memflow as K


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
    out[: len(top)] = top
    return out


def source_traces(model: Any, x: np.ndarray) -> np.ndarray:
    """Traces of normalised rows x through the source's map alone (its centre and scale, no
    running adjustment), as ``teach`` memorises them. What a device teaches its fleet must not
    depend on its own stream, so every member adds the same numbers for the same labelled frame
    and merges are exact and order-independent. On the dev corruptions, with 1 frame in 5 taught,
    the untaught frames scored the same either way (66.05 here, 66.07 through the running
    adjustment)."""
    stage = InputStage(model._centre_source, model._scale, model._basis, np.zeros_like(model._mix))
    return model._traces(stage.apply(x))


def trace_shift(model: Any) -> np.ndarray:
    """(N,) float32: the neuron-level shift the next frame's traces get (see
    ``K.shift_traces``); zeros with the shift stage off or no weight at all."""
    model._check_fitted()
    delta = np.zeros(model.n_neurons, np.float32)
    if model.shift and model.balanced:
        gain = align.slot_gain(model._slot_weight, float(model.slot_prior), model._slot_pi, float(model.slot_floor))
        delta[:] = -gain * model._slot_trace_offset
    elif model.shift:
        K.shift_traces(
            delta,
            model._trace_mean,
            model._trace_sum,
            float(model._shift_weight[0]),
            model._prior_weight(),
            float(model.shift_decay),
            False,
            0.0,
        )
    return delta
