"""Back-to-source feature shifting (FOA, Niu et al., ICML 2024) as a stage any adapter sits behind.

A shifted domain moves the mean of the features. FOA's activation shifting moves each test
feature back by the gap between the source mean and a running (EMA) target mean:

    f' = f + (mu_source - mu_target),   mu_target <- m mu_target + (1 - m) f   after each frame.

The running mean starts at the source mean (no shift before any target frame arrives), so an
unshifted stream is left nearly untouched. ``FeatureShift`` is the stage; ``Shifted`` puts it in
front of any registered adapter (``shift`` = in front of the source linear head).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError

# EMA momentum per frame (batch of 1): a time constant of ~20 frames. Chosen on the dev corruption
# tasks of the accuracy bench (held out from the reported tasks); see edge_runtime.bench.accuracy.
MOMENTUM = 0.95


class FeatureShift:
    """The shift stage: source mean fitted once, target mean tracked online by EMA.

    >>> stage = FeatureShift(momentum=0.5).fit(np.array([[1.0, 0.0]], dtype=np.float32))
    >>> stage.update(np.array([[0.0, 1.0]], dtype=np.float32))
    >>> stage.transform(np.array([[0.0, 1.0]], dtype=np.float32))
    array([[0.5, 0.5]], dtype=float32)
    """

    def __init__(self, momentum: float = MOMENTUM) -> None:
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def fit(self, features: np.ndarray) -> "FeatureShift":
        """Take the source mean of (already normalised) source features; reset the target mean."""
        self._source_mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        self._target_mean = self._source_mean.copy()
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Shift rows back towards the source (into a new array)."""
        return features + (self._source_mean - self._target_mean)

    def update(self, features: np.ndarray) -> None:
        """Fold rows into the target mean, in order, one EMA step each."""
        m = np.float32(self.momentum)
        for row in features:
            self._target_mean *= m
            self._target_mean += (1 - m) * row

    def arrays(self) -> dict[str, np.ndarray]:
        return {"source_mean": self._source_mean, "target_mean": self._target_mean}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        # Copies: the target mean is updated in place, and must not alias the caller's state.
        self._source_mean = np.array(arrays["source_mean"], dtype=np.float32, order="C")
        self._target_mean = np.array(arrays["target_mean"], dtype=np.float32, order="C")
        if self._source_mean.shape != self._target_mean.shape or self._source_mean.ndim != 1:
            raise InputError(
                f"shift state holds means of shapes {self._source_mean.shape} and "
                f"{self._target_mean.shape}; expected two equal (d,) vectors"
            )


class Shifted(Adapter):
    """Any registered adapter behind a ``FeatureShift`` stage.

    Parameters
    ----------
    inner
        Registry name of the adapter that sees the shifted features (``"linear"``, ``"t3a"``...).
    inner_params
        Keyword parameters for it (JSON-able, so the whole thing round-trips through state).
    momentum
        EMA momentum of the target mean per frame.

    >>> x = np.array([[1, 0.1], [0.9, 0.2], [0.1, 1], [0.2, 0.9]], dtype=np.float32)
    >>> shifted = Shifted("linear", {"l2": 1e-2}).fit(x, np.array([0, 0, 1, 1]))
    >>> shifted.adapt(np.array([[0.3, 1.0]], dtype=np.float32)).argmax(axis=1)
    array([1])
    """

    name = "shift"

    def __init__(
        self, inner: str = "linear", inner_params: dict[str, Any] | None = None, momentum: float = MOMENTUM
    ) -> None:
        self.inner = inner
        self.inner_params = inner_params
        self.momentum = momentum

    # What it can do is what the adapter behind the stage can (known from its name, before fitting).
    @property
    def can_teach(self) -> bool:  # type: ignore[override]
        return self._inner_class().can_teach

    @property
    def can_forget(self) -> bool:  # type: ignore[override]
        return self._inner_class().can_forget

    def memory_usage(self) -> tuple[int, int | None] | None:
        return self._inner.memory_usage() if self.fitted else None

    def _inner_class(self) -> type[Adapter]:
        return type(self._inner) if self.fitted else type(self._make_inner())

    def _make_inner(self) -> Adapter:
        from edge_runtime.adapters import make_adapter  # the registry imports this module

        return make_adapter(self.inner, **(self.inner_params or {}))

    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> "Shifted":
        x = as_features(features)
        y = as_labels(labels, len(x), n_classes)
        self._stage = FeatureShift(self.momentum).fit(x)
        self._inner = self._make_inner().fit(x, y, n_classes)
        self._n_classes, self._dim = self._inner.n_classes, x.shape[1]
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._inner.predict_proba(self._stage.transform(as_features(features, self.dim)))

    def adapt(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        x = as_features(features, self.dim)
        proba = self._inner.adapt(self._stage.transform(x))
        self._stage.update(x)
        return proba

    def teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        self._check_fitted()
        self._inner.teach(self._stage.transform(as_features(features, self.dim)), labels)

    def forget(self, *args: Any, **kwargs: Any) -> int:
        self._check_fitted()
        return self._inner.forget(*args, **kwargs)

    def prepare(self) -> None:
        self._check_fitted()
        self._inner.prepare()

    def _arrays(self) -> dict[str, np.ndarray]:
        inner = {f"inner.{k}": v for k, v in self._inner._arrays().items()}
        return {**inner, **{f"shift.{k}": v for k, v in self._stage.arrays().items()}}

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._stage = FeatureShift(self.momentum)
        self._stage.load_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("shift.")})
        self._inner = self._make_inner()
        self._inner._load_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("inner.")})
        self._n_classes, self._dim = self._inner.n_classes, self._inner.dim
        if self._stage.arrays()["source_mean"].shape != (self._dim,):
            raise InputError(
                f"shift state has means of width {self._stage.arrays()['source_mean'].shape}, "
                f"the inner adapter expects {self._dim}"
            )
