"""The adapter interface every gradient-free head implements (input checks: ``edge_runtime.features``).

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
from edge_runtime.features import as_features, as_labels

STATE_FORMAT = 1


class Adapter(ABC):
    """A gradient-free head over L2-normalised float32 features (see the module docstring)."""

    name: ClassVar[str]
    # Constructor parameters added after a state format was first written, with the values that
    # make an older state (which does not name them) behave as it did; ``from_state_dict`` uses them.
    LEGACY: ClassVar[dict[str, Any]] = {}

    # -- what this adapter can do: callers ask these, never private attributes ---------------
    # ``teach`` learns labels online; ``forget`` unlearns; ``statistics()`` / ``add_statistics()`` /
    # ``taught_statistics()`` merge memories across devices exactly (the fleet).
    can_teach: ClassVar[bool] = False
    can_forget: ClassVar[bool] = False
    can_merge: ClassVar[bool] = False
    # With ``can_forget``, how unlearning is asked for: a memory of stored items takes
    # ``forget(ids=[...])`` (those items) or ``forget(origin="pseudo")`` (what adaptation added);
    # any other adapter takes ``forget()``, which drops everything adaptation learned.
    can_forget_items: ClassVar[bool] = False

    def memory_usage(self) -> tuple[int, int | None] | None:
        """(entries held, capacity or None) of a memory that grows as it adapts; None for a
        fixed-size state."""
        return None

    def c_export(self) -> dict[str, Any]:
        """The arrays and constants a C99 read-out of this adapter classifies with, by name
        (``firmware_bridge.export_c``)."""
        raise NotImplementedError(f"{type(self).__name__} has no C read-out")

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

    @property
    def fitted(self) -> bool:
        return hasattr(self, "_n_classes")

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
        return {"adapter": self.name, "format": STATE_FORMAT, "params": self.get_params(), "arrays": self._arrays()}

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


__all__ = ["STATE_FORMAT", "Adapter", "as_features", "as_labels"]
