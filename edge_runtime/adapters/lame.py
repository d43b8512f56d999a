"""LAME (Boudiaf et al., CVPR 2022): Laplacian-adjusted maximum likelihood, a forward-only baseline.

LAME updates no parameter. For a batch of features f_i with the frozen model's posteriors p_i it
finds soft assignments z_i minimising

    sum_i KL(z_i || p_i) - lambda sum_ij w_ij z_i . z_j,

w the symmetrised kNN affinity of the (L2-normalised) features: frames that look alike are pushed
to agree. The bound optimisation is the fixed point z_i ~ p_i exp(lambda sum_j w_ij z_j), started
at z = p (the official ``laplacian_optimization``). A camera delivers one frame at a time, so the
batch is a sliding window of the last ``window`` frames (this one included), and the frame's
output is its row of the window's solution. The frozen model is the source linear head
(``edge_runtime.adapters.linear.Linear``, L2 by cross-validation on the source); nothing it
learned changes, so LAME cannot drift: on correlated streams the window holds many frames of
the class in view and the affinity lets them vote; on shuffled streams it loses little.

Defaults are the paper's (kNN affinity with k = 5, lambda = 1, at most 100 steps; window 64, the
paper's batch size). Stopping: the largest change of any z below 1e-6 (the paper: relative change
of the energy below 1e-8).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numba import njit

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError


@njit(cache=True, error_model="numpy")
def solve(
    gram: np.ndarray, logp: np.ndarray, n: int, knn: int, lam: float, steps: int, newest: int, out: np.ndarray
) -> int:
    """LAME on the first ``n`` rows of the window: ``gram`` (W, W) cosine similarities, ``logp``
    (W, K) the frozen model's log posteriors; writes the solution's row ``newest`` into ``out`` (K,)
    and returns the steps taken."""
    n_classes = logp.shape[1]
    w = np.zeros((n, n))
    k = min(knn, n - 1)
    taken = np.zeros(n, np.bool_)
    for i in range(n):  # the k most similar other rows (largest cosine = smallest distance)
        taken[:] = False
        taken[i] = True
        for _ in range(k):
            best, best_s = -1, -np.inf
            for j in range(n):
                if not taken[j] and gram[i, j] > best_s:
                    best, best_s = j, gram[i, j]
            taken[best] = True
            w[i, best] += 0.5
            w[best, i] += 0.5
    z = np.empty((n, n_classes))
    for i in range(n):
        hi = -np.inf
        for c in range(n_classes):
            hi = max(hi, logp[i, c])
        total = 0.0
        for c in range(n_classes):
            z[i, c] = np.exp(logp[i, c] - hi)
            total += z[i, c]
        for c in range(n_classes):
            z[i, c] /= total
    # the affinity's non-zero entries as lists per row (k out-links plus any in-links)
    nbr = np.zeros((n, n), np.int64)
    nw = np.zeros((n, n))
    cnt = np.zeros(n, np.int64)
    for i in range(n):
        for j in range(n):
            if w[i, j] != 0.0:
                nbr[i, cnt[i]] = j
                nw[i, cnt[i]] = w[i, j]
                cnt[i] += 1
    new = np.empty((n, n_classes))
    step = 0
    for step in range(1, steps + 1):
        change = 0.0
        for i in range(n):
            hi = -np.inf
            for c in range(n_classes):
                acc = 0.0
                for q in range(cnt[i]):
                    acc += nw[i, q] * z[nbr[i, q], c]
                new[i, c] = logp[i, c] + lam * acc
                hi = max(hi, new[i, c])
            total = 0.0
            for c in range(n_classes):
                new[i, c] = np.exp(new[i, c] - hi)
                total += new[i, c]
            for c in range(n_classes):
                new[i, c] /= total
                change = max(change, abs(new[i, c] - z[i, c]))
        z[:, :] = new
        if change < 1e-6:
            break
    for c in range(n_classes):
        out[c] = z[newest, c]
    return step


class LAME(Adapter):
    """Forward-only Laplacian-adjusted output over a sliding window (see the module docstring).

    >>> rng = np.random.default_rng(0)
    >>> means = rng.normal(size=(3, 16)).astype(np.float32)
    >>> y = np.arange(60) % 3
    >>> x = (means[y] + 0.3 * rng.normal(size=(60, 16))).astype(np.float32)
    >>> model = LAME(window=8).fit(x, y)
    >>> model.adapt(x[:1]).shape
    (1, 3)
    """

    name: ClassVar[str] = "lame"

    def __init__(
        self, window: int = 64, knn: int = 5, bound_lambda: float = 1.0, max_steps: int = 100, l2: float | None = None
    ) -> None:
        self.window = window
        self.knn = knn
        self.bound_lambda = bound_lambda
        self.max_steps = max_steps
        self.l2 = l2

    def _check(self) -> None:
        if self.window < 1 or self.knn < 1 or self.max_steps < 1 or self.bound_lambda < 0:
            raise InputError(
                f"LAME needs window >= 1, knn >= 1, max_steps >= 1 and bound_lambda >= 0, got "
                f"{self.window}, {self.knn}, {self.max_steps}, {self.bound_lambda}"
            )

    def _build(self, dim: int, n_classes: int) -> None:
        self._check()
        self._dim, self._n_classes = dim, n_classes
        self._feats = np.zeros((self.window, dim), np.float32)
        self._logp = np.zeros((self.window, n_classes))
        self._gram = np.zeros((self.window, self.window))
        self._seen = np.zeros(1, np.int64)

    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> "LAME":
        from edge_runtime.adapters.linear import Linear

        x = as_features(features)
        y = as_labels(labels, len(x), n_classes)
        head = Linear(l2=self.l2).fit(x, y, n_classes)
        self._w = np.array(head.weight, np.float32)
        self._b = np.array(head.bias, np.float32)
        self._build(x.shape[1], self._w.shape[0])
        return self

    def _head_logp(self, x: np.ndarray) -> np.ndarray:
        z = x @ self._w.T + self._b
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The frozen head's posteriors (reads only; the window is the stream's)."""
        self._check_fitted()
        return np.exp(self._head_logp(as_features(features, self._dim))).astype(np.float32)

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Each row joins the window, then gets its row of the window's LAME solution."""
        self._check_fitted()
        x = as_features(features, self._dim)
        logp = self._head_logp(x)
        out = np.empty((len(x), self._n_classes), np.float32)
        row = np.empty(self._n_classes)
        for r in range(len(x)):
            seen = int(self._seen[0])
            slot = seen % self.window
            self._feats[slot] = x[r]
            self._logp[slot] = logp[r]
            sims = self._feats @ x[r]
            self._gram[slot, :] = sims
            self._gram[:, slot] = sims
            n = min(seen + 1, self.window)
            solve(self._gram, self._logp, n, int(self.knn), float(self.bound_lambda), int(self.max_steps), slot, row)
            out[r] = row
            self._seen[0] = seen + 1
        return out

    def prepare(self) -> None:
        self._check_fitted()
        probe = LAME.from_state_dict(self.state_dict())
        probe.adapt(np.ones((2, self._dim), np.float32))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "w": self._w,
            "b": self._b,
            "feats": self._feats,
            "logp": self._logp,
            "gram": self._gram,
            "seen": self._seen,
        }

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        w = np.asarray(arrays["w"], np.float32)
        self._w, self._b = w.copy(), np.asarray(arrays["b"], np.float32).copy()
        self._build(w.shape[1], w.shape[0])
        for name in ("feats", "logp", "gram", "seen"):
            target = getattr(self, f"_{name}")
            value = np.asarray(arrays[name])
            if value.shape != target.shape:
                raise InputError(f"LAME state array {name!r} has shape {value.shape}, expected {target.shape}")
            target[...] = value
