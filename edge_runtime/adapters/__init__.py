"""Gradient-free adapters behind one interface, looked up by name.

Each entry of ``ADAPTERS`` maps a bench/CLI name to a factory taking keyword parameters.
"""

from __future__ import annotations

from typing import Any, Callable

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError

ADAPTERS: dict[str, Callable[..., Adapter]] = {}


def _lazy(module: str, cls: str, **fixed: Any) -> Callable[..., Adapter]:
    """A factory that imports ``edge_runtime.adapters.<module>`` on first use (the registry names its
    adapters by string, so importing it loads none of them, and an adapter that wraps another by
    name, like ``shift``, can look it up here without an import cycle); ``fixed`` parameters are
    overridable."""

    def factory(**params: Any) -> Adapter:
        import importlib

        return getattr(importlib.import_module(f"edge_runtime.adapters.{module}"), cls)(**{**fixed, **params})

    return factory


ADAPTERS["dmn"] = _lazy("dmn", "DMN")
ADAPTERS["knn"] = _lazy("knn", "KNN")
ADAPTERS["knn-self-train"] = _lazy("knn", "KNN", self_train=True)
# the bench baselines
ADAPTERS["ncm"] = _lazy("ncm", "NCM")
ADAPTERS["linear"] = _lazy("linear", "Linear")
ADAPTERS["t3a"] = _lazy("t3a", "T3A")
ADAPTERS["tda"] = _lazy("tda", "TDA")
ADAPTERS["shift"] = _lazy("shift", "Shifted")
ADAPTERS["shift+t3a"] = _lazy("shift", "Shifted", inner="t3a")
ADAPTERS["lame"] = _lazy("lame", "LAME")
# MemFlow and its ablations (the switches fixed, overridable)
ADAPTERS["memflow"] = _lazy("memflow", "MemFlow")
ADAPTERS["memflow-no-blur"] = _lazy("memflow", "MemFlow", blur=0.0)
ADAPTERS["memflow-no-cu"] = _lazy("memflow", "MemFlow", confidence_update=False)
ADAPTERS["memflow-no-spike"] = _lazy("memflow", "MemFlow", spiking=False)
ADAPTERS["memflow-static"] = _lazy("memflow", "MemFlow", reinforce=False)
ADAPTERS["memflow-no-temporal"] = _lazy("memflow", "MemFlow", temporal=False)
ADAPTERS["memflow-no-subspace"] = _lazy("memflow", "MemFlow", shift_rank=0)
ADAPTERS["memflow-no-novelty"] = _lazy("memflow", "MemFlow", shift_novelty=0.0, slot_novelty=0.0)
# the domain statistics (issue #23) as they were: one global window (the default before the
# class-balanced slots), and slots measured from their own class's mean, confident frames only
ADAPTERS["memflow-global"] = _lazy("memflow", "MemFlow", balanced=False)
ADAPTERS["memflow-class-mean"] = _lazy("memflow", "MemFlow", slot_reference="class", slot_gate=0.9)
# a stay's effect on the centre capped at 0.1 of its class's distance from the mean, for any number of classes
ADAPTERS["memflow-capped"] = _lazy("memflow", "MemFlow", slot_leak=0.1)


def make_adapter(name: str, **params: Any) -> Adapter:
    """A new adapter by registry name, e.g. ``make_adapter("ncm")``."""
    try:
        factory = ADAPTERS[name]
    except KeyError:
        raise InputError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
    return factory(**params)


__all__ = ["ADAPTERS", "Adapter", "as_features", "as_labels", "make_adapter"]
