"""``VideoSink``: an annotated copy of the processed frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.sinks.base import Prediction

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def annotate(image: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The frame with its label and confidence drawn on a dark band along the top."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.4, w / 900)
    band = int(34 * scale) + 6
    cv2.rectangle(out, (0, 0), (w, band), (0, 0, 0), thickness=-1)
    text = f"{prediction.label} {prediction.confidence:.0%}"
    if prediction.source_label is not None:
        text += f"   (source-only: {prediction.source_label})"
    cv2.putText(out, text, (6, band - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1 + int(scale), cv2.LINE_AA)
    return out


class VideoSink:
    """An annotated copy of the processed frames: ``.mp4`` (mp4v) or ``.avi`` (MJPG)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC:
            raise InputError(f"--video-out {self.path}: use a .mp4 (mp4v) or .avi (MJPG) file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps if fps > 0 else 25.0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, prediction: Prediction, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])  # type: ignore[attr-defined]
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, size)
            if not self._writer.isOpened():
                raise InputError(f"cannot write video {self.path} with codec {FOURCC[self.path.suffix.lower()]}")
            self._size = size
        if size != self._size:  # a camera that changed resolution after a reconnect
            image = cv2.resize(image, self._size)
        self._writer.write(annotate(image, prediction))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
