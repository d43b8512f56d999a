"""The cost bench's data: source and target splits of the packaged domains, the torch model's
features, the source head and the gradient-free adapters fitted on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.bench.tent import torch_preprocessor
from edge_runtime.errors import InputError

if TYPE_CHECKING:  # torch is imported inside functions only: listing benchmarks stays cheap
    import torch


@dataclass
class Split:
    """Images and labels of one side of a task, preprocessed to model input rows."""

    rows: np.ndarray  # (n, 3, H, W) float32
    labels: np.ndarray  # (n,) int64
    classes: tuple[str, ...]


def domain_split(
    domain: str, limit: int | None, seed: int, backbone: str = "efficientnet-lite0", per_class: int | None = None
) -> Split:
    """Up to ``limit`` images of ``domain`` (and ``per_class`` of each class; a seeded,
    class-stratified draw), as model input rows."""
    from edge_runtime.bench.datasets import load_domain

    data = load_domain(domain)
    pool = stratified_subset(np.asarray(data.labels), limit, seed, per_class=per_class)
    prep = torch_preprocessor(backbone)
    rows = np.concatenate([prep(data.images[i]) for i in pool]) if len(pool) else np.empty((0, 3, 1, 1), np.float32)
    return Split(rows, data.labels[pool].astype(np.int64), tuple(data.classes))


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int, *, per_class: int | None = None) -> np.ndarray:
    """Indices of at most ``limit`` rows (and ``per_class`` of each class), dealt round-robin over
    the classes from seeded shuffles, returned in a seeded order.

    >>> labels = np.array([0, 0, 0, 0, 1, 1, 2])
    >>> np.bincount(labels[stratified_subset(labels, 5, seed=0)]).tolist()
    [2, 2, 1]
    >>> np.bincount(labels[stratified_subset(labels, None, seed=0, per_class=1)]).tolist()
    [1, 1, 1]
    """
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(labels == c)).tolist()[:per_class] for c in np.unique(labels)]
    limit = sum(len(q) for q in queues) if limit is None else min(limit, sum(len(q) for q in queues))
    order: list[int] = []
    while len(order) < limit:
        for queue in queues:
            if queue and len(order) < limit:
                order.append(queue.pop(0))
    return rng.permutation(np.array(order, dtype=np.int64))


def forward_features(model: "torch.nn.Module", rows: np.ndarray, batch: int = 32) -> np.ndarray:
    """Pooled features of input rows through the backbone in eval mode, no autograd."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            features, _ = model(torch.from_numpy(rows[start : start + batch]))
            out.append(features.numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def source_head(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The ``linear`` baseline fitted on source features: (W, b, chosen l2).

    The L2 strength is cross-validated on the source with 5 folds, or with as many as the rarest
    class allows (a photo half holds 3 insects).
    """
    from edge_runtime.adapters.linear import Linear

    rarest = int(np.bincount(labels, minlength=n_classes).min())
    if rarest < 2:
        raise InputError(f"the source has {rarest} example(s) of some class: a linear head needs at least 2 per class")
    with one_blas_thread():
        head = Linear(cv_folds=min(5, rarest)).fit(features, labels, n_classes)
    arrays = head.state_dict()["arrays"]
    return np.array(arrays["weight"]), np.array(arrays["bias"]), head.chosen_l2


def fit_adapter(name: str, features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[Any, str | None]:
    """A registered adapter fitted on unit source features, or (None, why it could not be)."""
    from edge_runtime.adapters import ADAPTERS, make_adapter

    if name not in ADAPTERS:
        return None, "not registered in edge_runtime.adapters.ADAPTERS"
    try:
        with one_blas_thread():
            adapter = make_adapter(name).fit(unit_rows(features), labels, n_classes)
            adapter.prepare()
    except InputError as err:
        return None, f"could not be fitted on this source ({err})"
    return adapter, None


def one_blas_thread() -> Any:
    """numpy's BLAS on one thread, as on a device and as the accuracy bench runs the adapters
    (skinny n x 1280 products lose far more to thread synchronisation than they gain)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
