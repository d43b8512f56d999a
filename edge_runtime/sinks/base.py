"""What a sink receives: one ``Prediction`` per processed frame, and the ``Sink`` protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class Prediction:
    frame: int
    t: float
    label: str
    confidence: float
    ms: dict[str, float]  # per stage; "sinks" is the previous frame's, known only after writing
    source_label: str | None = None
    source_confidence: float | None = None
    taught: str | None = None

    def to_json(self) -> str:
        row: dict[str, Any] = {
            "frame": self.frame,
            "t": round(self.t, 4),
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "ms": {k: round(v, 3) for k, v in self.ms.items()},
        }
        if self.source_label is not None:
            row["source_label"] = self.source_label
            row["source_confidence"] = round(float(self.source_confidence or 0.0), 4)
        if self.taught is not None:
            row["taught"] = self.taught
        return json.dumps(row)


class Sink(Protocol):
    def write(self, prediction: Prediction, image: np.ndarray) -> None: ...

    def close(self) -> None: ...
