"""``JsonlSink``: the predictions as JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from edge_runtime.sinks.base import Prediction


class JsonlSink:
    """One JSON object per processed frame, line-buffered so a crash loses at most one line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = open(self.path, "w", buffering=1)

    def write(self, prediction: Prediction, image: np.ndarray) -> None:
        assert self._file is not None
        self._file.write(prediction.to_json() + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
