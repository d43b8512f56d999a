"""TDA (Karmanov et al., CVPR 2024): training-free dynamic adapter with positive and negative caches.

The prior is a source linear head (TDA's prior is CLIP's zero-shot head; none ships here). For
each test feature the prior predicts a class and an entropy. The *positive* cache keeps, per
predicted class, the ``pos_shots`` lowest-entropy features; the *negative* cache keeps, per
class, ``neg_shots`` features whose normalised entropy lies in ``neg_entropy`` together with a
mask of the classes the prior gave probability inside ``neg_mask``. Logits are

    prior + pos_alpha * sum_pos exp(-pos_beta (1 - f.k)) onehot(k)
          - neg_alpha * sum_neg exp(-neg_beta (1 - f.k)) mask(k)

Defaults are the paper's ImageNet configuration (official code, configs/imagenet.yaml). As in
the official code, ``adapt`` first writes the sample into the caches, then scores it (T3A's
order too; see ``t3a.py``). One deliberate departure: entropy is normalised by log(C) in nats,
as "normalised entropy" says (the official code divides nats by log2(C)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.adapters.linear import L2_GRID, Linear
from edge_runtime.errors import InputError
from edge_runtime.numerics import entropy, softmax


class TDA(Adapter):
    """Positive/negative feature caches over a source linear head (fixed memory: C x shots).

    >>> x = np.array([[1, 0.1], [0.9, 0.2], [0.1, 1], [0.2, 0.9]], dtype=np.float32)
    >>> tda = TDA(l2=1e-2).fit(x, np.array([0, 0, 1, 1]))
    >>> tda.adapt(np.array([[0.3, 1.0]], dtype=np.float32)).argmax(axis=1)
    array([1])
    """

    name = "tda"

    def __init__(
        self,
        pos_shots: int = 3,
        pos_alpha: float = 2.0,
        pos_beta: float = 5.0,
        neg_shots: int = 2,
        neg_alpha: float = 0.117,
        neg_beta: float = 1.0,
        neg_entropy: Sequence[float] = (0.2, 0.5),
        neg_mask: Sequence[float] = (0.03, 1.0),
        l2: float | None = None,
        l2_grid: Sequence[float] = L2_GRID,
        cv_folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.pos_shots = pos_shots
        self.pos_alpha = pos_alpha
        self.pos_beta = pos_beta
        self.neg_shots = neg_shots
        self.neg_alpha = neg_alpha
        self.neg_beta = neg_beta
        self.neg_entropy = neg_entropy
        self.neg_mask = neg_mask
        self.l2 = l2
        self.l2_grid = l2_grid
        self.cv_folds = cv_folds
        self.seed = seed

    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> "TDA":
        if int(self.pos_shots) < 1 or int(self.neg_shots) < 1:
            raise InputError(f"pos_shots and neg_shots must be >= 1, got {self.pos_shots} and {self.neg_shots}")
        x = as_features(features)
        y = as_labels(labels, len(x), n_classes)
        self._head = Linear(self.l2, self.l2_grid, self.cv_folds, self.seed).fit(x, y, n_classes)
        c, d = self._head.n_classes, self._head.dim
        self._n_classes, self._dim = c, d
        self._pos_keys = np.zeros((c, self.pos_shots, d), dtype=np.float32)
        self._pos_entropy = np.full((c, self.pos_shots), np.inf, dtype=np.float32)
        self._neg_keys = np.zeros((c, self.neg_shots, d), dtype=np.float32)
        self._neg_entropy = np.full((c, self.neg_shots), np.inf, dtype=np.float32)
        self._neg_masks = np.zeros((c, self.neg_shots, c), dtype=np.float32)
        self._derive()
        return self

    def _derive(self) -> None:
        # Positive slot (k, s) votes for class k: a fixed one-hot table, derived, not state.
        self._pos_values = np.repeat(np.eye(self.n_classes, dtype=np.float32), self.pos_shots, axis=0)

    def _cache_logits(
        self, x: np.ndarray, keys: np.ndarray, filled: np.ndarray, beta: float, values: np.ndarray
    ) -> np.ndarray:
        # Affinity-weighted votes of the filled slots only (an empty slot holds a zero key, which
        # would otherwise vote with weight exp(-beta)).
        affinity = x @ keys.reshape(-1, keys.shape[-1]).T
        weights = np.exp(-beta * (1.0 - affinity)) * filled.ravel()
        return weights @ values

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        x = as_features(features, self.dim)
        return softmax(self._logits(x, self._head.logits_of_normalised(x)))

    def _logits(self, x: np.ndarray, prior: np.ndarray) -> np.ndarray:
        c = self.n_classes
        logits = prior + self.pos_alpha * self._cache_logits(
            x, self._pos_keys, np.isfinite(self._pos_entropy), self.pos_beta, self._pos_values
        )
        logits -= self.neg_alpha * self._cache_logits(
            x, self._neg_keys, np.isfinite(self._neg_entropy), self.neg_beta, self._neg_masks.reshape(-1, c)
        )
        return logits.astype(np.float32, copy=False)

    def adapt(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        x = as_features(features, self.dim)
        prior = self._head.logits_of_normalised(x)
        prior_proba = softmax(prior)
        ent = entropy(prior_proba)
        normalised = ent / np.log(self.n_classes)
        low, high = self.neg_entropy
        mask_low, mask_high = self.neg_mask
        for row, p, e, ne in zip(x, prior_proba, ent, normalised):
            label = int(p.argmax())
            self._offer(self._pos_keys, self._pos_entropy, label, row, e)
            if low < ne < high:
                slot = self._offer(self._neg_keys, self._neg_entropy, label, row, e)
                if slot >= 0:
                    self._neg_masks[label, slot] = (p > mask_low) & (p < mask_high)
        return softmax(self._logits(x, prior))

    @staticmethod
    def _offer(keys: np.ndarray, ent: np.ndarray, label: int, row: np.ndarray, e: float) -> int:
        """Put ``row`` in a free slot of class ``label`` or over its highest-entropy entry if
        ``e`` is lower; returns the slot written, or -1."""
        slot = int(np.argmax(ent[label]))  # a free slot holds inf, so it is taken first
        if e < ent[label, slot]:
            keys[label, slot] = row
            ent[label, slot] = e
            return slot
        return -1

    def _arrays(self) -> dict[str, np.ndarray]:
        head = {f"head.{k}": v for k, v in self._head._arrays().items()}
        return {
            **head,
            "pos_keys": self._pos_keys,
            "pos_entropy": self._pos_entropy,
            "neg_keys": self._neg_keys,
            "neg_entropy": self._neg_entropy,
            "neg_masks": self._neg_masks,
        }

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._head = Linear(self.l2, self.l2_grid, self.cv_folds, self.seed)
        self._head._load_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("head.")})
        c, d = self._head.n_classes, self._head.dim
        expected = {
            "pos_keys": (c, self.pos_shots, d),
            "pos_entropy": (c, self.pos_shots),
            "neg_keys": (c, self.neg_shots, d),
            "neg_entropy": (c, self.neg_shots),
            "neg_masks": (c, self.neg_shots, c),
        }
        for key, shape in expected.items():
            value = np.ascontiguousarray(arrays[key], dtype=np.float32)
            if value.shape != shape:
                raise InputError(f"TDA state array {key!r} has shape {value.shape}, expected {shape}")
            setattr(self, f"_{key}", value)
        self._n_classes, self._dim = c, d
        self._derive()
