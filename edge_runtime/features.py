"""The contract of a feature batch: C-ordered (n, d) float32, finite, L2-normalised rows; and of labels.

Every adapter and every memory store checks its input here, so the checks and their messages are
the same wherever a batch enters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.errors import InputError


def as_features(features: Any, dim: int | None = None, *, normalize: bool = True) -> np.ndarray:
    """Check a batch of feature vectors and return it as a C-ordered (n, d) float32 array.

    A single vector (d,) is taken as a batch of one. Integer or float64 input is refused rather
    than guessed at; NaN or inf is refused. With ``normalize`` the rows are L2-normalised (into
    a new array: the caller's input is never modified).

    >>> as_features(np.array([3.0, 4.0], dtype=np.float32))
    array([[0.6, 0.8]], dtype=float32)
    """
    x = np.asarray(features)
    if x.dtype != np.float32:
        raise InputError(f"features must be float32, got {x.dtype}: convert with .astype(np.float32)")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"features must have shape (n, d) with n >= 1, got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"features have width {x.shape[1]}, this adapter expects {dim}")
    if not np.abs(x).max() < 1e16:  # one pass finds NaN, inf, and values whose squares overflow float32
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise InputError(f"features row {bad} holds NaN or inf")
        if normalize:  # finite but huge (3e38): scaled per row first, so the norm below cannot overflow
            x = x / np.abs(x).max(axis=1, keepdims=True)
    if not normalize:
        return np.ascontiguousarray(x)
    norms = np.sqrt(np.add.reduce(x * x, axis=1, keepdims=True))  # np.linalg.norm's arithmetic, minus its overhead
    if not norms.all():
        raise InputError(f"features row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zero")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def as_labels(labels: Any, n: int, n_classes: int | None = None) -> np.ndarray:
    """Check class indices: n non-negative integers, each below ``n_classes`` when given.

    >>> as_labels([0, 2, 1], 3, n_classes=3)
    array([0, 2, 1])
    """
    y = np.asarray(labels)
    if y.ndim == 0:
        y = y[None]
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"labels must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be integer class indices, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise InputError(f"labels must be >= 0, got {int(y.min())}")
    if n_classes is not None and n and y.max() >= n_classes:
        raise InputError(f"unknown label {int(y.max())}: this adapter knows {n_classes} classes (0..{n_classes - 1})")
    return y.astype(np.int64, copy=False)


__all__ = ["as_features", "as_labels"]
