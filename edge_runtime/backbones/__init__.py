"""Frozen image backbones: one interface, two runtimes, chosen by the model file's suffix."""
from __future__ import annotations

from pathlib import Path

from edge_runtime.backbones.base import Backbone, Inference
from edge_runtime.errors import EdgeRuntimeError

RUNTIMES = {".onnx": "edge_runtime.backbones.onnxrt:OnnxBackbone",
            ".tflite": "edge_runtime.backbones.litert:LiteRTBackbone"}


def load_backbone(model_path: str | Path, *, threads: int | None = None, verify: bool = True) -> Backbone:
    """Open ``model.onnx`` or ``model.tflite`` with the runtime its suffix names; its card beside it."""
    import importlib

    suffix = Path(model_path).suffix
    if suffix not in RUNTIMES:
        raise EdgeRuntimeError(f"{model_path}: unknown model type {suffix!r}; expected one of {', '.join(RUNTIMES)}")
    module, cls = RUNTIMES[suffix].split(":")
    return getattr(importlib.import_module(module), cls)(model_path, threads=threads, verify=verify)


__all__ = ["Backbone", "Inference", "load_backbone"]
