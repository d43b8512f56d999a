"""Small numerics shared by the adapters, the runtime and the bench: one home each.

>>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]], dtype=np.float32))
array([[0.5, 0.5],
       [1. , 0. ]], dtype=float32)
>>> float(entropy(np.array([[0.5, 0.5]]))[0]) == float(np.log(2))
True
>>> percentiles([0.001, 0.002, 0.003], scale=1e3)
{'p50_ms': 2.0, 'p90_ms': 2.8, 'p99_ms': 2.98}
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

QUANTILES = (50, 90, 99)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits; keeps the input dtype."""
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of probabilities."""
    p = np.clip(proba, 1e-12, 1.0)
    return -(proba * np.log(p)).sum(axis=1)


def percentiles(
    values: Iterable[float] | np.ndarray,
    *,
    scale: float = 1.0,
    unit: str = "ms",
    quantiles: tuple[int, ...] = QUANTILES,
) -> dict[str, float]:
    """``{"p50_<unit>": ..., "p90_<unit>": ..., "p99_<unit>": ...}`` of ``values * scale`` (MLPerf's
    single-stream percentiles)."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, np.float64) * scale
    return {f"p{q}_{unit}": float(np.percentile(v, q)) for q in quantiles}


__all__ = ["QUANTILES", "entropy", "percentiles", "softmax"]
