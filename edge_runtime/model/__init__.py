"""The frozen image backbone: one ``Backbone`` interface, two runtimes (``onnxrt``, ``litert``) chosen by
the model file's suffix, execution ``providers``, and the model ``card`` every export carries."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.base import Backbone, Inference
from edge_runtime.model.providers import Execution, parse_providers, warn_stderr

RUNTIMES = {".onnx": "edge_runtime.model.onnxrt:OnnxBackbone", ".tflite": "edge_runtime.model.litert:LiteRTBackbone"}


def load_backbone(
    model_path: str | Path,
    *,
    threads: int | None = None,
    verify: bool = True,
    providers: list[str] | None = None,
    warn: Callable[[str], None] = warn_stderr,
) -> Backbone:
    """Open ``model.onnx`` or ``model.tflite`` with the runtime its suffix names; its card beside it.

    ``providers``: ONNX Runtime execution providers or LiteRT delegates by name, in order of
    preference; unavailable ones fall back to the CPU with one line through ``warn``."""
    import importlib

    suffix = Path(model_path).suffix
    if suffix not in RUNTIMES:
        raise EdgeRuntimeError(f"{model_path}: unknown model type {suffix!r}; expected one of {', '.join(RUNTIMES)}")
    module, cls = RUNTIMES[suffix].split(":")
    return getattr(importlib.import_module(module), cls)(
        model_path, threads=threads, verify=verify, providers=providers, warn=warn
    )


__all__ = ["Backbone", "Execution", "Inference", "load_backbone", "parse_providers"]
