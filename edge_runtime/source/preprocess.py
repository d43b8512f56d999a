"""OpenCV BGR frames of any size -> the model's input tensor, as the model card prescribes.

Steps: check the frame, crop the centre square (``crop_fraction`` of the shorter side), resize to
``size`` (area interpolation when shrinking, linear when enlarging), BGR -> RGB, normalise
``(x - mean) / std``, lay out NCHW or NHWC, and for an int8 input quantise with the card's scale
and zero point. One frame in, one batch row out; ``preprocess_batch`` stacks several.

The frame path does this in a few calls that release the GIL and write into preallocated arrays
(``Preprocessor.into``): resize the centre square into a scratch image (a shrink by a non-integer
factor through ``kernels.resize.AreaResize``, byte-identical to OpenCV's ``INTER_AREA`` at about
half its CPU time), swap BGR -> RGB (NHWC) or extract each plane (NCHW), and map the 0..255 pixels
through a 256-entry look-up table per channel straight into the input tensor. The table holds,
for every pixel value, exactly what the per-pixel arithmetic (``Preprocessor.reference``)
computes for it in float32 (normalise, then for int8 round and clip), so the tensor is
bit-identical to the reference path.
"""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.kernels.resize import AreaResize
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
        self._lut = self._table()
        self._lut3 = self._lut.reshape(1, 256, 3)  # cv2.LUT: one table per channel of an RGB image
        self._planes = [np.ascontiguousarray(self._lut[:, c]) for c in range(3)]
        # mean 127 / std 128 quantised at scale 1/128, zero point -1 (the int8 exports) is exactly
        # pixel - 128: flipping the top bit of each byte is the same table at a tenth of the cost.
        self._flip = self._dtype == np.int8 and bool(
            (self._lut.view(np.uint8) == (np.arange(256, dtype=np.uint8) ^ 0x80)[:, None]).all()
        )
        self._row_shape = (3, self.size, self.size) if self.layout == "NCHW" else (self.size, self.size, 3)
        self._scratch = threading.local()  # per-thread resize/swap buffers (a backbone may be shared)

    def _table(self) -> np.ndarray:
        """(256, 3) input values of pixel values 0..255 per RGB channel, by the reference arithmetic."""
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1).reshape(256, 1, 3)
        return np.ascontiguousarray(self._normalise(levels).reshape(256, 3))

    def _normalise(self, rgb: np.ndarray) -> np.ndarray:
        x = rgb.astype(np.float32) * self._scale + self._offset
        if self._quant is not None:
            info = np.iinfo(self._dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        return x.astype(self._dtype, copy=False)

    @classmethod
    def from_card(cls, card: ModelCard) -> "Preprocessor":
        return cls(card.preprocessing, card.input)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One frame -> a new batch of one, shaped and typed as the model's input."""
        return self.into(frame)

    def input_buffer(self, n: int = 1) -> np.ndarray:
        """An uninitialised batch of ``n`` in the model's input shape and dtype (for ``into``)."""
        return np.empty((n,) + self._row_shape, self._dtype)

    def into(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One frame -> ``out`` (a batch of one from ``input_buffer``; allocated when None), returned.

        Resize into a per-thread scratch image, then the look-up table writes each channel into
        ``out``: no float temporaries, no transposes; every step is an OpenCV call or a Numba
        kernel that releases the GIL.
        """
        if out is None:
            out = self.input_buffer()
        elif out.dtype != self._dtype or out.shape != (1,) + self._row_shape or not out.flags.c_contiguous:
            raise InputError(
                f"input buffer must be a C-contiguous {self._dtype} batch of one shaped "
                f"{(1,) + self._row_shape}, got {out.dtype} {out.shape}"
            )
        frame = check_frame(frame)
        scratch = self._scratch
        if getattr(scratch, "resized", None) is None:
            scratch.resized = np.empty((self.size, self.size, 3), np.uint8)
            scratch.rgb = np.empty((self.size, self.size, 3), np.uint8)
            scratch.plane = np.empty((self.size, self.size), np.uint8)
            scratch.area = None
            scratch.top_bit = np.full((self.size, self.size, 3), 0x80, np.uint8)
        h, w = frame.shape[:2]
        side = max(1, int(round(min(h, w) * self.crop_fraction)))
        y, x = (h - side) // 2, (w - side) // 2
        if side > self.size:  # INTER_AREA, as crop_resize, through the vectorised equivalent
            area = scratch.area
            if area is None or area.src_size != side:
                area = scratch.area = AreaResize(side, self.size)
            resized = area(frame[y : y + side, x : x + side], scratch.resized)
        else:
            resized = cv2.resize(
                frame[y : y + side, x : x + side],
                (self.size, self.size),
                dst=scratch.resized,
                interpolation=cv2.INTER_LINEAR,
            )
        row = out[0]
        if self.layout == "NCHW":
            for c in range(3):  # RGB plane c is BGR channel 2 - c
                cv2.extractChannel(resized, 2 - c, dst=scratch.plane)
                cv2.LUT(scratch.plane, self._planes[c], dst=row[c])
        else:
            rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=scratch.rgb)
            if self._flip:
                cv2.bitwise_xor(rgb, scratch.top_bit, dst=row.view(np.uint8))
            else:
                cv2.LUT(rgb, self._lut3, dst=row)
        return out

    def reference(self, frame: np.ndarray) -> np.ndarray:
        """The per-pixel arithmetic path (float temporaries), kept as the definition ``into`` matches."""
        rgb = cv2.cvtColor(crop_resize(check_frame(frame), self.size, self.crop_fraction), cv2.COLOR_BGR2RGB)
        x = self._normalise(rgb)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x)[None]

    def batch(self, frames: list[np.ndarray]) -> np.ndarray:
        if len(frames) == 0:
            raise InputError("empty batch of frames")
        out = self.input_buffer(len(frames))
        for i, f in enumerate(frames):
            self.into(f, out[i : i + 1])
        return out


def read_image(path: str) -> np.ndarray:
    """Read an image file as BGR uint8, with an error naming the file if it is not an image."""
    if not os.path.isfile(path):
        raise InputError(f"image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"not a readable image: {path}")
    return image
