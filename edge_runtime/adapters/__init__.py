"""Gradient-free adapters behind one interface, looked up by name.

Each entry of ``ADAPTERS`` maps a bench/CLI name to a factory taking keyword parameters.
"""
from __future__ import annotations

from typing import Any, Callable

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import InputError

ADAPTERS: dict[str, Callable[..., Adapter]] = {}


def make_adapter(name: str, **params: Any) -> Adapter:
    """A new adapter by registry name, e.g. ``make_adapter("ncm")``."""
    try:
        factory = ADAPTERS[name]
    except KeyError:
        raise InputError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
    return factory(**params)


__all__ = ["ADAPTERS", "Adapter", "as_features", "as_labels", "make_adapter"]
