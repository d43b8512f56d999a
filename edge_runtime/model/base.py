"""The ``Backbone`` interface: BGR frames in, float32 features (and ImageNet logits) out."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.card import ModelCard, TensorSpec, load_card
from edge_runtime.model.providers import Execution, warn_stderr
from edge_runtime.source.preprocess import Preprocessor


class Inference(NamedTuple):
    features: np.ndarray  # (n, feature_dim) float32, pooled, not yet L2-normalised
    logits: np.ndarray | None  # (n, 1000) float32 where the model has the ImageNet head


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return values.astype(np.float32, copy=False)
    q = spec.quantization
    return (values.astype(np.float32) - q.zero_point) * np.float32(q.scale)


class Backbone(ABC):
    """A frozen image model configured by its card. Batch of one is the fast path.

    ``infer(frames)`` takes one BGR uint8 frame or a list of them; ``features(frames)`` returns
    only the pooled features. ``run(batch)`` takes an already preprocessed input batch.
    ``providers`` names execution providers (ONNX Runtime) or delegates (LiteRT) in order of
    preference (``providers.py``); ``execution`` records what runs.
    """

    runtime: str
    execution: Execution

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int | None = None,
        verify: bool = True,
        providers: list[str] | None = None,
        warn: Callable[[str], None] = warn_stderr,
    ) -> None:
        self.model_path = Path(model_path)
        self.threads = threads or default_threads()
        self.providers = providers
        self.warn = warn
        self.card: ModelCard = load_card(self.model_path, verify=verify)
        if self.card.runtime != self.runtime:
            raise EdgeRuntimeError(f"{self.model_path}: card says runtime {self.card.runtime!r}, not {self.runtime!r}")
        self.preprocessor = Preprocessor.from_card(self.card)
        self._open()

    @abstractmethod
    def _open(self) -> None:
        """Load the model file into the runtime."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> Inference:
        """Run preprocessed input rows (as the card's input spec) through the model."""

    def infer(self, frames: np.ndarray | list[np.ndarray]) -> Inference:
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
            return self.run(self.preprocessor(frames))
        return self.run(self.preprocessor.batch(list(frames)))

    def features(self, frames: np.ndarray | list[np.ndarray]) -> np.ndarray:
        return self.infer(frames).features

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.model_path)!r}, threads={self.threads})"
