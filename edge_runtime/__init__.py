"""edge_runtime: on-device, gradient-free adaptation of a frozen int8 image backbone.

The pipeline, one folder a stage: frame -> ``source`` (capture, preprocess) -> ``model``
(backbones, model card) -> features -> ``adapters`` (over the ``memory`` stores and the Numba
``kernels``) -> prediction -> ``sinks``; ``runtime`` runs the loop, ``state`` keeps memories and
checkpoints, ``fleet`` shares them, ``cli`` holds every entry point. The host-side exporter is
``edge_runtime.export`` and the benchmarks ``edge_runtime.bench`` (the repository's ``export/``
and ``bench/`` folders). ``docs/ARCHITECTURE.md`` has the layer table.

The names most users need are importable from here; they load on first use, so
``import edge_runtime`` stays light:

>>> from edge_runtime import make_adapter
>>> make_adapter("ncm")
NCM(temperature=0.05)
"""

from __future__ import annotations

import importlib
from typing import Any

from edge_runtime.errors import EdgeRuntimeError

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    "load_backbone": "edge_runtime.model",
    "make_adapter": "edge_runtime.adapters",
    "read_state": "edge_runtime.state",
    "write_state": "edge_runtime.state",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["EdgeRuntimeError", "__version__", "load_backbone", "make_adapter", "read_state", "write_state"]
