"""The adapter interface every gradient-free head implements, and the input checks they share.

An adapter is a classifier over L2-normalised float32 features with these verbs (after river's
``learn_one`` and scikit-learn's ``partial_fit``):

- ``fit(features, labels)`` memorises labelled data (source domain or few-shot) from scratch;
- ``predict_proba(features)`` reads only;
- ``adapt(features)`` predicts, then reinforces itself from the unlabelled batch. It returns the
  probabilities predicted *before* the update: that is the prediction the stream reports;
- ``teach(features, labels)`` adds labelled examples online;
- ``forget(...)`` unlearns, where the method supports it;
- ``state_dict()`` / ``from_state_dict()`` to plain arrays plus JSON (no pickle).

Constructor arguments are stored under their own names and nothing else happens in
``__init__``; learned state carries a leading underscore. That makes ``get_params``, ``clone``
and the generic state round trip below work for every adapter.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from edge_runtime.errors import InputError

STATE_FORMAT = 1


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
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
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


class Adapter(ABC):
    """A gradient-free head over L2-normalised float32 features (see the module docstring)."""

    name: ClassVar[str]
    # Constructor parameters added after a state format was first written, with the values that
    # make an older state (which does not name them) behave as it did; ``from_state_dict`` uses them.
    LEGACY: ClassVar[dict[str, Any]] = {}

    # -- required verbs ------------------------------------------------------------------
    @abstractmethod
    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> "Adapter":
        """Memorise labelled features from scratch; returns self."""

    @abstractmethod
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, n_classes). Reads only."""

    # -- optional verbs, with defaults -----------------------------------------------------
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Most probable class index per row."""
        return self.predict_proba(features).argmax(axis=1)

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Predict, then learn from the unlabelled batch. A static adapter only predicts."""
        return self.predict_proba(features)

    def teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Add labelled examples online."""
        raise NotImplementedError(f"{type(self).__name__} does not learn from labels online")

    def forget(self, *args: Any, **kwargs: Any) -> int:
        """Unlearn; returns how many items were removed."""
        raise NotImplementedError(f"{type(self).__name__} does not support unlearning")

    def prepare(self) -> None:
        """Pay one-off costs (JIT compilation) now, so the first real frame is not slow."""

    # -- shape of the learned state --------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return int(self._n_classes)  # type: ignore[attr-defined]

    @property
    def dim(self) -> int:
        return int(self._dim)  # type: ignore[attr-defined]

    def _check_fitted(self) -> None:
        if not hasattr(self, "_n_classes"):
            raise InputError(f"{type(self).__name__} has not been fitted: call fit(features, labels) first")

    # -- parameters, cloning and state -----------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments by name (each is stored under its own name)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def clone(self) -> "Adapter":
        """A new, unfitted adapter with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """The learned state as named numpy arrays (numeric dtypes only)."""

    @abstractmethod
    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the learned state written by ``_arrays``."""

    def state_dict(self) -> dict[str, Any]:
        """Parameters (JSON-able) and learned state (arrays): everything needed to resume."""
        self._check_fitted()
        return {"adapter": self.name, "format": STATE_FORMAT, "params": self.get_params(),
                "arrays": self._arrays()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Adapter":
        """Rebuild an adapter from ``state_dict()`` output."""
        if state.get("adapter") != cls.name:
            raise InputError(f"state is for adapter {state.get('adapter')!r}, not {cls.name!r}")
        if state.get("format") != STATE_FORMAT:
            raise InputError(f"state format {state.get('format')} is not readable (this runtime reads {STATE_FORMAT})")
        adapter = cls(**{**cls.LEGACY, **state["params"]})
        adapter._load_arrays(dict(state["arrays"]))
        return adapter
