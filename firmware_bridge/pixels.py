"""FRAME bodies -> BGR uint8 images, refusing what cannot be an image with a message that says why.

Checked before any decoder runs: an empty JPEG, a raw frame of zero width or height, a JPEG
whose header announces more than ``MAX_PIXELS`` (a few hundred bytes can claim gigapixels, and
decoding them would exhaust a small board's memory). What still fails to decode is reported with
its size, never with a decoder's raw text.

>>> decode_frame(Frame(PixelFormat.GRAY8, 0, 0, b""))
Traceback (most recent call last):
...
edge_runtime.errors.InputError: GRAY8 FRAME of 0x0 pixels: an image needs at least 2x2
>>> jpeg_size(bytes.fromhex("ffd8 ffc0 0011 08 01e0 0280 03 012200 021101 031101"))
(640, 480)
"""

from __future__ import annotations

import struct
from typing import Optional

import cv2
import numpy as np

from edge_runtime.errors import InputError
from firmware_bridge.codes import CHANNELS, PixelFormat
from firmware_bridge.samples import Frame

MIN_SIDE = 2  # the preprocessor's smallest frame
MAX_PIXELS = 40_000_000  # 40 MP: above any camera sensor a device here would read
# Start-of-frame markers carry the image size: SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a JPEG's start-of-frame header, or None if none is found."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any SOF: not a usable JPEG
            return None
        pos += 2 + length
    return None


def decode_frame(frame: Frame) -> np.ndarray:
    """The frame as a BGR uint8 (H, W, 3) array; ``InputError`` naming the problem otherwise."""
    if frame.format == PixelFormat.JPEG:
        return _decode_jpeg(frame.data)
    if frame.width < MIN_SIDE or frame.height < MIN_SIDE:
        raise InputError(
            f"{frame.format.name} FRAME of {frame.width}x{frame.height} pixels: "
            f"an image needs at least {MIN_SIDE}x{MIN_SIDE}"
        )
    pixels = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, CHANNELS[frame.format])
    if frame.format == PixelFormat.GRAY8:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if frame.format == PixelFormat.RGB888:
        return np.ascontiguousarray(pixels[:, :, ::-1])
    return pixels


def _decode_jpeg(data: bytes) -> np.ndarray:
    if not data:
        raise InputError("FRAME holds an empty JPEG (0 bytes)")
    size = jpeg_size(data)
    if size is None:
        raise InputError(f"FRAME holds {len(data)} bytes that are not a JPEG (no JPEG start and frame header)")
    width, height = size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(f"JPEG FRAME of {width}x{height} pixels: an image needs at least {MIN_SIDE}x{MIN_SIDE}")
    if width * height > MAX_PIXELS:
        raise InputError(f"JPEG FRAME of {width}x{height} pixels is above the {MAX_PIXELS // 1_000_000} MP limit")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.ndim != 3 or image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise InputError(
            f"FRAME holds a {width}x{height} JPEG of {len(data)} bytes that does not decode " f"(truncated or damaged)"
        )
    return image


__all__ = ["MAX_PIXELS", "decode_frame", "jpeg_size"]
