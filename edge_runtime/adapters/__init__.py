"""Gradient-free adapters behind one interface, looked up by name.

Each entry of ``ADAPTERS`` maps a bench/CLI name to a factory taking keyword parameters.
"""
from __future__ import annotations

from typing import Any, Callable

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError

ADAPTERS: dict[str, Callable[..., Adapter]] = {}

def _dmn(**params: Any) -> Adapter:
    from edge_runtime.adapters.dmn import DMN
    return DMN(**params)


def _knn(**params: Any) -> Adapter:
    from edge_runtime.adapters.knn import KNN
    return KNN(**params)


def _knn_self_train(**params: Any) -> Adapter:
    from edge_runtime.adapters.knn import KNN
    return KNN(**{"self_train": True, **params})


ADAPTERS["dmn"] = _dmn
ADAPTERS["knn"] = _knn
ADAPTERS["knn-self-train"] = _knn_self_train


def _baseline(module: str, cls: str, **fixed: Any) -> Callable[..., Adapter]:
    """Lazy factory for the bench baselines (ncm, linear, t3a, tda, shift)."""
    def factory(**params: Any) -> Adapter:
        import importlib
        return getattr(importlib.import_module(f"edge_runtime.adapters.{module}"), cls)(**{**fixed, **params})
    return factory


ADAPTERS["ncm"] = _baseline("ncm", "NCM")
ADAPTERS["linear"] = _baseline("linear", "Linear")
ADAPTERS["t3a"] = _baseline("t3a", "T3A")
ADAPTERS["tda"] = _baseline("tda", "TDA")
ADAPTERS["shift"] = _baseline("shift", "Shifted")
ADAPTERS["shift+t3a"] = _baseline("shift", "Shifted", inner="t3a")


def _memflow(**fixed: Any) -> Callable[..., Adapter]:
    """Lazy factory for MemFlow and its ablations (fixed switches, overridable)."""
    def factory(**params: Any) -> Adapter:
        from edge_runtime.adapters.memflow import MemFlow
        return MemFlow(**{**fixed, **params})
    return factory


ADAPTERS["memflow"] = _memflow()
ADAPTERS["memflow-no-blur"] = _memflow(blur=0.0)
ADAPTERS["memflow-no-cu"] = _memflow(confidence_update=False)
ADAPTERS["memflow-no-spike"] = _memflow(spiking=False)
ADAPTERS["memflow-static"] = _memflow(reinforce=False)
ADAPTERS["memflow-no-temporal"] = _memflow(temporal=False)
ADAPTERS["memflow-no-subspace"] = _memflow(shift_rank=0)
ADAPTERS["memflow-no-novelty"] = _memflow(shift_novelty=0.0)


def make_adapter(name: str, **params: Any) -> Adapter:
    """A new adapter by registry name, e.g. ``make_adapter("ncm")``."""
    try:
        factory = ADAPTERS[name]
    except KeyError:
        raise InputError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
    return factory(**params)


__all__ = ["ADAPTERS", "Adapter", "as_features", "as_labels", "make_adapter"]
