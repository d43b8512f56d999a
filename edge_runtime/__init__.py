"""edge_runtime: on-device, gradient-free adaptation of a frozen int8 image backbone.

Data flow, one module each: frame -> ``preprocess`` -> ``backbones`` -> features ->
``adapters`` -> prediction. The device path imports numpy, numba, onnxruntime / ai_edge_litert
and OpenCV only; the host-side exporter lives in ``edge_runtime.export`` and the benchmarks in
``edge_runtime.bench`` (the repository's ``export/`` and ``bench/`` folders).
"""
from edge_runtime.errors import EdgeRuntimeError

__version__ = "0.1.0"
__all__ = ["EdgeRuntimeError", "__version__"]
