"""Nearest class mean over L2-normalised features: the simplest source-only baseline."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError
from edge_runtime.numerics import softmax


class NCM(Adapter):
    """Cosine nearest class mean; the class means are kept as sums so ``teach`` is exact.

    Parameters
    ----------
    temperature
        Probabilities are ``softmax(cos(f, mean_k) / temperature)``. It scales confidence only;
        the predicted class is the nearest mean whatever its value.

    >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    >>> NCM().fit(x, np.array([0, 0, 1])).predict(np.array([[0.2, 1.0]], dtype=np.float32))
    array([1])
    """

    name = "ncm"
    can_teach = True
    can_merge = True

    def __init__(self, temperature: float = 0.05) -> None:
        self.temperature = temperature

    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> "NCM":
        x = as_features(features)
        y = as_labels(labels, len(x), n_classes)
        n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
        self._n_classes = n_classes
        self._dim = x.shape[1]
        self._sums = np.zeros((n_classes, x.shape[1]), dtype=np.float64)
        self._counts = np.zeros(n_classes, dtype=np.int64)
        self.teach(x, y)
        return self

    def teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        self._check_fitted()
        x = as_features(features, self.dim)
        y = as_labels(labels, len(x), self.n_classes)
        np.add.at(self._sums, y, x)
        np.add.at(self._counts, y, 1)
        self._refresh()

    def _refresh(self) -> None:
        # Cosine to the mean equals a dot product with the normalised mean; a class never seen
        # keeps a zero row and so scores 0, below any class that has data.
        norms = np.linalg.norm(self._sums, axis=1, keepdims=True)
        self._prototypes = np.divide(self._sums, norms, out=np.zeros_like(self._sums), where=norms > 0).astype(
            np.float32
        )

    def c_export(self) -> dict[str, Any]:
        """Unit (or zero) class prototypes (K, d) and 1 / temperature."""
        self._check_fitted()
        return {
            "prototypes": np.asarray(self._prototypes, np.float32),
            "inv_temperature": 1.0 / float(self.temperature),
        }

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        x = as_features(features, self.dim)
        return softmax((x @ self._prototypes.T) / np.float32(self.temperature))

    # -- statistics shared by a fleet (edge_runtime.fleet) ----------------------------------
    def statistics(self) -> dict[str, np.ndarray]:
        """Copies of the class statistics, which merge across devices exactly by addition:
        ``{"source": (2, K, d) float64}``, row 0 the class counts (repeated over d), row 1 the sums."""
        self._check_fitted()
        counts = np.broadcast_to(self._counts.astype(np.float64)[:, None], self._sums.shape)
        return {"source": np.stack([counts, self._sums])}

    def taught_statistics(self, features: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """What ``teach(features, labels)`` would add to ``statistics()``, without adding it."""
        self._check_fitted()
        x = as_features(features, self.dim)
        y = as_labels(labels, len(x), self.n_classes)
        delta = np.zeros((2,) + self._sums.shape)
        np.add.at(delta[0], y, 1.0)
        np.add.at(delta[1], y, x)
        return {"source": delta}

    def add_statistics(self, delta: dict[str, np.ndarray]) -> None:
        """Add a delta of ``statistics()`` (a peer's taught examples, or minus a forgotten batch);
        checked before anything changes."""
        self.check_statistics(delta)
        source = delta["source"]
        self._counts += source[0, :, 0].astype(np.int64)
        self._sums += source[1]
        self._refresh()

    def check_statistics(self, delta: dict[str, np.ndarray]) -> None:
        """InputError unless ``delta`` would fit ``add_statistics``; nothing changes."""
        self._check_fitted()
        source = delta.get("source")
        shape = (2,) + self._sums.shape
        if (
            set(delta) != {"source"}
            or not isinstance(source, np.ndarray)
            or source.dtype != np.float64
            or source.shape != shape
            or not np.isfinite(source).all()
            or not np.all(source[0] == source[0, :, :1])
            or not np.all(source[0] == np.round(source[0]))
        ):
            raise InputError(
                f"a statistics delta is {{'source': finite float64 array {shape}}} with whole counts "
                f"equal along d, got {sorted(delta)}"
            )
        if np.any(self._counts + source[0, :, 0] < 0):
            raise InputError("a statistics delta would leave a class with a negative count")

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self._sums, "counts": self._counts}

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        # copies: the state's arrays may back another adapter, and teach adds in place
        self._sums = np.array(arrays["sums"], dtype=np.float64)
        self._counts = np.array(arrays["counts"], dtype=np.int64)
        self._n_classes, self._dim = self._sums.shape
        self._refresh()
