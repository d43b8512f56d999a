"""MemFlow's calibration: the source linear head and how much the memory weighs against it.

The memory's posterior is multiplied with the source head's; the two share their evidence, so
the plain product is overconfident. The head's scale and the memory's weight in the product are
chosen on a grid by held-out NLL on the source, and taught frames weigh in again
(``docs/memflow.md``, "Source-head prior").
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from edge_runtime.kernels import memflow as K

_HEADS: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}


def source_head(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float | None) -> tuple[np.ndarray, np.ndarray, float]:
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


SCALES = np.geomspace(1 / 8, 8, 25)  # the head's scale in the product
MEMORY_WEIGHTS = np.linspace(0.0, 2.0, 21)  # the memory's weight in it
SOURCE_FRAMES = 20.0  # what the source's held-out calibration counts for against taught frames


def nll_grid(head: np.ndarray, memory: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(len(SCALES), len(MEMORY_WEIGHTS)) summed NLL of softmax(scale head + weight memory) over
    labelled rows (logits (n, K) each): the product of two posteriors that share their evidence is
    overconfident, and the temporal filter needs a calibrated one."""
    z = SCALES[:, None, None, None] * head + MEMORY_WEIGHTS[None, :, None, None] * memory
    z -= z.max(axis=-1, keepdims=True)
    return (np.log(np.exp(z).sum(axis=-1)) - z[..., np.arange(len(truth)), truth]).sum(axis=-1)


def best_calibration(grid: np.ndarray) -> tuple[float, float]:
    i, j = np.unravel_index(int(np.argmin(grid)), grid.shape)
    return float(SCALES[i]), float(MEMORY_WEIGHTS[j])


def memory_logp(model: Any, m: np.ndarray) -> np.ndarray:
    """The memory's log posteriors (n, K) at temperature 1 for traces m (n, N); reads only."""
    p = np.zeros((len(m), model._n_classes), np.float32)
    w = model._work
    for r in range(len(m)):
        K.retrieve(
            m[r],
            model._mu,
            model._hiv,
            model._lnorm,
            model.variance == "class",
            model._present,
            model._alive,
            model.readout == "product",
            model.confidence,
            1.0,
            w.row,
            w.part,
            w.vote,
            p[r],
        )
    return np.log(np.maximum(p, 1e-30))


def calibrate(model: Any, m: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Temperature of the read-out minimising the two-fold held-out NLL on the source (folds:
    alternate samples within each class, no randomness); also returns the held-out rows' log
    posteriors at temperature 1 (n, K), their labels, and each row's fold."""
    fold = np.zeros(len(y), np.int64)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        fold[idx[1::2]] = 1
    logp, truth = [], []
    for f in (0, 1):
        model._source[:] = 0.0
        model._memorise(m[fold == f], y[fold == f], model._source)
        model._refresh()
        held = m[fold != f]
        if not len(held):
            continue
        logp.append(memory_logp(model, held))
        truth.append(y[fold != f])
    model._source[:] = 0.0
    if not logp:
        return 1.0, np.zeros((0, model._n_classes)), np.zeros(0, np.int64), fold
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


def recalibrate(model: Any, stage: Any, z: np.ndarray, m: np.ndarray, y: np.ndarray) -> None:
    """Weigh head and memory again with the taught frames, each scored before it is learnt
    (prequential), the source's held-out calibration counting as ``SOURCE_FRAMES`` of them:
    taught target frames say how far the memory can be trusted on this domain, where the
    source alone may have given it no weight at all."""
    head, out = np.empty((len(z), model._n_classes)), np.zeros(model._n_classes, np.float32)
    w = model._work
    for r in range(len(z)):  # the read-out's own head, which leaves its logits in w.logits
        K.combine_prior(
            z[r],
            model._centre_source,
            stage.factor,
            model._prior_w,
            model._prior_b,
            1.0,
            0.0,
            bool(model.prior_unit),
            w.centre,
            w.logits,
            out,
        )
        head[r] = w.logits
    model._calibration[1] += nll_grid(head, memory_logp(model, m) / model._tau[0], y)
    model._weights[:] = best_calibration(SOURCE_FRAMES * model._calibration[0] + model._calibration[1])
