"""Back-to-source feature shifting (FOA, Niu et al., ICML 2024) as a stage any adapter sits behind.

A shifted domain moves the mean of the features. FOA's activation shifting moves each test
feature back by the gap between the source mean and a running (EMA) target mean:

    f' = f + (mu_source - mu_target),   mu_target <- m mu_target + (1 - m) f   after each frame.

The running mean starts at the source mean (no shift before any target frame arrives), so an
unshifted stream is left nearly untouched. ``FeatureShift`` is the stage; ``Shifted`` puts it in
front of any registered adapter (``shift`` = in front of the source linear head).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError

# EMA momentum per frame (batch of 1): a time constant of ~20 frames. Chosen on the dev corruption
# tasks of the accuracy bench (held out from the reported tasks); see edge_runtime.bench.accuracy.
MOMENTUM = 0.95
# Class-balanced target mean (issue 23), the same rule as MemFlow's slots
# (``edge_runtime.kernels.align``): per pseudo-class slot, source pseudo-frames per slot, the slot's
# EMA factor, the evidence novelty scale and how many recent frames it is measured against.
SLOT_PRIOR = 1.0
SLOT_DECAY = 0.98
SLOT_NOVELTY = 0.25
SLOT_RING = 32
SLOT_GATE = 0.9  # least confidence of a frame to count as evidence (as MemFlow)


class FeatureShift:
    """The shift stage: source mean fitted once, target mean tracked online by EMA.

    >>> stage = FeatureShift(momentum=0.5).fit(np.array([[1.0, 0.0]], dtype=np.float32))
    >>> stage.update(np.array([[0.0, 1.0]], dtype=np.float32))
    >>> stage.transform(np.array([[0.0, 1.0]], dtype=np.float32))
    array([[0.5, 0.5]], dtype=float32)
    """

    def __init__(
        self,
        momentum: float = MOMENTUM,
        balanced: bool = False,
        slot_prior: float = SLOT_PRIOR,
        slot_decay: float = SLOT_DECAY,
        slot_novelty: float = SLOT_NOVELTY,
        slot_gate: float = SLOT_GATE,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= slot_decay < 1.0 or slot_prior < 0 or slot_novelty < 0:
            raise InputError("need slot_decay in [0, 1), slot_prior >= 0, slot_novelty >= 0")
        self.momentum = momentum
        self.balanced = balanced
        self.slot_prior = slot_prior
        self.slot_decay = slot_decay
        self.slot_novelty = slot_novelty
        self.slot_gate = slot_gate

    def fit(
        self, features: np.ndarray, labels: np.ndarray | None = None, n_classes: int | None = None
    ) -> "FeatureShift":
        """Take the source mean of (already normalised) source features; reset the target mean.
        With ``balanced`` (and ``labels``) the target mean is class-balanced: the source mean plus
        delta = sum_k pi_k (S1_k - W_k mu_k) / (P + W_k) over slots of the frames pseudo-labelled k
        (``update(features, proba)``), pi_k the source class frequencies, so that a class in view
        for minutes moves it by at most pi_k times its own slot's move."""
        self._source_mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        self._target_mean = self._source_mean.copy()
        self.unit = float(np.sqrt(features.var(axis=0, dtype=np.float64).sum()))
        if self.balanced:
            if labels is None:
                raise InputError("a balanced shift stage needs the source labels at fit")
            k = int(n_classes if n_classes is not None else labels.max() + 1)
            x64 = features.astype(np.float64)
            counts = np.bincount(labels, minlength=k).astype(np.float64)
            means = np.zeros((k, features.shape[1]))
            np.add.at(means, labels, x64)
            self._class_mean = means / np.maximum(counts, 1.0)[:, None]
            self._pi = counts / counts.sum()
            self._slot_w = np.zeros(k)
            self._slot_s = np.zeros((k, features.shape[1]))
            self._ring = np.zeros((SLOT_RING, features.shape[1]), np.float32)
            self._ring_n = np.zeros(1, np.int64)
            self._variance = np.array([self.unit**2])
        return self

    def statistics(self) -> dict[str, tuple[np.ndarray, float]]:
        """The domain statistic (the target mean) and its unit (the source's total std)."""
        return {"centre": (self._target_mean.astype(np.float64), getattr(self, "unit", 1.0))}

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Shift rows back towards the source (into a new array)."""
        return features + (self._source_mean - self._target_mean)

    def update(self, features: np.ndarray, proba: np.ndarray | None = None) -> None:
        """Fold rows into the target mean, in order: one EMA step each, or (balanced) each into
        the slot of its pseudo-class (argmax of ``proba``, the posteriors the rows were classified
        with), weighted by its confidence times its novelty against the last frames."""
        if not self.balanced:
            m = np.float32(self.momentum)
            for row in features:
                self._target_mean *= m
                self._target_mean += (1 - m) * row
            return
        if proba is None:
            raise InputError("a balanced shift stage learns from classified frames: update(features, proba)")
        proba = np.asarray(proba)
        for row, p in zip(features, proba):
            n = int(self._ring_n[0])
            w = 1.0
            if n and self.slot_novelty > 0:
                gap = float(((self._ring[: min(n, len(self._ring))] - row) ** 2).sum(axis=1).min())
                w = min(1.0, gap / (self.slot_novelty * float(self._variance[0])))
            self._ring[n % len(self._ring)] = row
            self._ring_n[0] = n + 1
            k = int(np.argmax(p))
            e = w * float(p[k])
            if e <= 0 or p[k] < self.slot_gate:
                continue
            g = self.slot_decay**e
            self._slot_s[k] = g * self._slot_s[k] + e * row
            self._slot_w[k] = g * self._slot_w[k] + e
        self._refresh_target()

    def _refresh_target(self) -> None:
        a = self._pi / (self.slot_prior + self._slot_w)
        delta = (a[:, None] * (self._slot_s - self._slot_w[:, None] * self._class_mean)).sum(axis=0)
        self._target_mean = (self._source_mean + delta).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"source_mean": self._source_mean, "target_mean": self._target_mean}
        if self.balanced:
            out.update(
                {
                    "class_mean": self._class_mean,
                    "pi": self._pi,
                    "slot_w": self._slot_w,
                    "slot_s": self._slot_s,
                    "ring": self._ring,
                    "ring_n": self._ring_n,
                    "variance": self._variance,
                }
            )
        return out

    def reset(self) -> None:
        """The target mean back at the source mean (every slot emptied)."""
        self._target_mean = self._source_mean.copy()
        if self.balanced:
            self._slot_w[:] = 0.0
            self._slot_s[:] = 0.0
            self._ring_n[0] = 0

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        # Copies: the target mean is updated in place, and must not alias the caller's state.
        self._source_mean = np.array(arrays["source_mean"], dtype=np.float32, order="C")
        self._target_mean = np.array(arrays["target_mean"], dtype=np.float32, order="C")
        if self.balanced:
            for name in ("class_mean", "pi", "slot_w", "slot_s", "ring", "ring_n", "variance"):
                if name not in arrays:
                    raise InputError(f"balanced shift state lacks {name!r} (written without balancing?)")
                setattr(self, f"_{name}", np.array(arrays[name], order="C"))
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

    # states written before the balanced stage existed keep the EMA
    LEGACY: ClassVar[dict[str, Any]] = {"balanced": False}

    def __init__(
        self,
        inner: str = "linear",
        inner_params: dict[str, Any] | None = None,
        momentum: float = MOMENTUM,
        balanced: bool = False,
        slot_prior: float = SLOT_PRIOR,
        slot_gate: float = SLOT_GATE,
    ) -> None:
        self.inner = inner
        self.inner_params = inner_params
        self.momentum = momentum
        self.balanced = balanced
        self.slot_prior = slot_prior
        self.slot_gate = slot_gate

    def _make_stage(self) -> FeatureShift:
        return FeatureShift(self.momentum, balanced=self.balanced, slot_prior=self.slot_prior, slot_gate=self.slot_gate)

    # What it can do is what the adapter behind the stage can (known from its name, before fitting).
    @property
    def can_teach(self) -> bool:  # type: ignore[override]
        return self._inner_class().can_teach

    @property
    def can_forget(self) -> bool:  # type: ignore[override]
        return self._inner_class().can_forget

    @property
    def can_forget_items(self) -> bool:  # type: ignore[override]
        return self._inner_class().can_forget_items

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
        self._stage = self._make_stage().fit(x, y, n_classes)
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
        self._stage.update(x, proba)
        return proba

    def domain_statistics(self) -> dict[str, tuple[np.ndarray, float]]:
        self._check_fitted()
        return self._stage.statistics()

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
        self._stage = self._make_stage()
        self._stage.load_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("shift.")})
        self._inner = self._make_inner()
        self._inner._load_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("inner.")})
        self._n_classes, self._dim = self._inner.n_classes, self._inner.dim
        if self._stage.arrays()["source_mean"].shape != (self._dim,):
            raise InputError(
                f"shift state has means of width {self._stage.arrays()['source_mean'].shape}, "
                f"the inner adapter expects {self._dim}"
            )
