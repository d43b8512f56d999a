"""OpenCV BGR frames of any size -> the model's input tensor, as the model card prescribes.

Steps: check the frame, crop the centre square (``crop_fraction`` of the shorter side), resize to
``size`` (area interpolation when shrinking, linear when enlarging), BGR -> RGB, normalise
``(x - mean) / std``, lay out NCHW or NHWC, and for an int8 input quantise with the card's scale
and zero point. One frame in, one batch row out; ``preprocess_batch`` stacks several.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.model.card import ModelCard, Preprocessing, TensorSpec


def check_frame(frame: np.ndarray) -> np.ndarray:
    """A uint8 image of shape (H, W, 3) in BGR order; (H, W) or (H, W, 1) greyscale is expanded."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frame must have shape (H, W, 3) BGR, got {frame.shape}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise InputError(f"frame is too small: {frame.shape}")
    return frame


def crop_resize(frame: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """Centre square of ``crop_fraction`` x the shorter side, resized to ``size`` x ``size``."""
    h, w = frame.shape[:2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    y, x = (h - side) // 2, (w - side) // 2
    square = frame[y : y + side, x : x + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


class Preprocessor:
    """Turns BGR frames into input rows for one model card.

    >>> from edge_runtime.model.card import Preprocessing, TensorSpec
    >>> p = Preprocessor(Preprocessing(4, 1.0, [127.0] * 3, [128.0] * 3, "NCHW"),
    ...                  TensorSpec("x", [1, 3, 4, 4], "float32"))
    >>> p(np.full((8, 6, 3), 255, np.uint8))[0, :, 0, 0]
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, preprocessing: Preprocessing, input: TensorSpec) -> None:  # noqa: A002
        self.preprocessing = preprocessing
        self.input = input
        prep, spec = preprocessing, input
        self.size = prep.size
        self.crop_fraction = prep.crop_fraction
        self.layout = prep.layout
        self._scale = (1.0 / np.asarray(prep.std, np.float32)).reshape(1, 1, 3)
        self._offset = (-np.asarray(prep.mean, np.float32) / np.asarray(prep.std, np.float32)).reshape(1, 1, 3)
        self._dtype = np.dtype(spec.dtype)
        self._quant = spec.quantization
        if self._quant is not None:
            # Fold normalisation and quantisation into one affine map on the 0..255 pixels.
            self._scale = self._scale / self._quant.scale
            self._offset = self._offset / self._quant.scale + self._quant.zero_point

    @classmethod
    def from_card(cls, card: ModelCard) -> "Preprocessor":
        return cls(card.preprocessing, card.input)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One frame -> a batch of one, shaped and typed as the model's input."""
        rgb = cv2.cvtColor(crop_resize(check_frame(frame), self.size, self.crop_fraction), cv2.COLOR_BGR2RGB)
        x = rgb.astype(np.float32) * self._scale + self._offset
        if self._quant is not None:
            info = np.iinfo(self._dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        x = x.astype(self._dtype, copy=False)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x)[None]

    def batch(self, frames: list[np.ndarray]) -> np.ndarray:
        if len(frames) == 0:
            raise InputError("empty batch of frames")
        return np.concatenate([self(f) for f in frames], axis=0)


def read_image(path: str) -> np.ndarray:
    """Read an image file as BGR uint8, with an error naming the file if it is not an image."""
    if not os.path.isfile(path):
        raise InputError(f"image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"not a readable image: {path}")
    return image
