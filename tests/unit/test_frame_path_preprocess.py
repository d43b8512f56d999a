"""The fused preprocessing (``Preprocessor.into``) against the per-pixel reference path, on real images.

The fused path (resize into a scratch image, look-up table into the input tensor) must give the
same tensor as ``Preprocessor.reference`` (crop, OpenCV resize, float normalisation, int8 rounding):
the tests demand equality, byte for byte, which is stricter than "within int8 rounding". Synthetic
cards here; the exported models' cards in ``tests/integration/test_frame_path_preprocess_cards.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.errors import InputError
from edge_runtime.kernels.resize import AreaResize, area_tables
from edge_runtime.model.card import Preprocessing, Quantization, TensorSpec
from edge_runtime.source.preprocess import Preprocessor

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VIDEO = OPENCV_DATA / "vtest.avi"

SYNTHETIC = [
    (
        Preprocessing(96, 0.8, [120.0, 110.0, 100.0], [50.0, 60.0, 70.0], "NCHW"),
        TensorSpec("x", [1, 3, 96, 96], "int8", Quantization(0.05, 3)),
    ),
    (
        Preprocessing(33, 1.0, [120.0, 110.0, 100.0], [50.0, 60.0, 70.0], "NHWC"),
        TensorSpec("x", [1, 33, 33, 3], "float32"),
    ),
    (
        Preprocessing(64, 0.9, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "NHWC"),
        TensorSpec("x", [1, 64, 64, 3], "uint8", Quantization(1.0, 0)),
    ),
    (
        Preprocessing(224, 0.875, [127.0] * 3, [128.0] * 3, "NHWC"),
        TensorSpec("x", [1, 224, 224, 3], "int8", Quantization(2 / 255, 5)),
    ),
]


def real_images() -> list[np.ndarray]:
    """Frames and photos of many sizes: the packaged photo and clipart domains, the demo video's
    frames (768x576: a non-integer shrink), opencv-doc's photos, and greyscale/tiny edge cases."""
    from edge_runtime.bench.datasets import load_domain

    images: list[np.ndarray] = []
    for name in ("photo", "clipart"):
        images += load_domain(name).images[::25]
    if VIDEO.is_file():
        capture = cv2.VideoCapture(str(VIDEO))
        for _ in range(6):
            ok, frame = capture.read()
            if ok:
                images.append(frame)
            for _ in range(40):
                capture.grab()
        capture.release()
    for path in sorted(OPENCV_DATA.glob("*.jpg"))[:12]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            images.append(image)
    rng = np.random.default_rng(0)
    images += [
        rng.integers(0, 256, (100, 37), dtype=np.uint8),
        rng.integers(0, 256, (5, 300, 1), dtype=np.uint8),
        rng.integers(0, 256, (2, 2, 3), dtype=np.uint8),
        rng.integers(0, 256, (449, 450, 3), dtype=np.uint8),
    ]
    return images


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return real_images()


def preprocessors() -> list[tuple[str, Preprocessor]]:
    return [(f"synthetic-{i}", Preprocessor(prep, spec)) for i, (prep, spec) in enumerate(SYNTHETIC)]


@pytest.mark.parametrize("name,prep", preprocessors(), ids=[n for n, _ in preprocessors()])
def test_fused_equals_reference_on_real_images(name: str, prep: Preprocessor, images: list[np.ndarray]) -> None:
    buffer = prep.input_buffer()
    for image in images:
        expected = prep.reference(image)
        got = prep(image)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert np.array_equal(got, expected), f"{name}: frame {image.shape} differs from the reference path"
        assert prep.into(image, buffer) is buffer and np.array_equal(buffer, expected)
    batch = prep.batch(images[:3])
    assert np.array_equal(batch, np.concatenate([prep.reference(i) for i in images[:3]]))


@pytest.mark.parametrize("src", [225, 250, 256, 300, 333, 448, 504, 505, 640, 672, 700, 1000, 1079])
def test_area_resize_matches_opencv_inter_area(src: int) -> None:
    rng = np.random.default_rng(src)
    image = rng.integers(0, 256, (src + 7, src + 11, 3), dtype=np.uint8)[3 : 3 + src, 5 : 5 + src]  # a strided view
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (src, src, 3), dtype=np.uint8), (0, 0), 3)  # near-.5 averages
    out = np.empty((224, 224, 3), np.uint8)
    area = AreaResize(src, 224)
    for x in (image, smooth, np.full((src, src, 3), 255, np.uint8)):
        assert np.array_equal(area(x, out), cv2.resize(x, (224, 224), interpolation=cv2.INTER_AREA))
    assert (area_tables(src, 224) is None) == (src % 224 == 0)


def test_into_refuses_a_wrong_buffer() -> None:
    prep = Preprocessor(*SYNTHETIC[0])
    frame = np.zeros((120, 120, 3), np.uint8)
    for bad in (
        np.empty((1, 96, 96, 3), np.int8),
        np.empty((1, 3, 96, 96), np.float32),
        np.empty((2, 3, 96, 96), np.int8),
        np.empty((1, 3, 96, 192), np.int8)[..., ::2],
    ):
        with pytest.raises(InputError, match="input buffer"):
            prep.into(frame, bad)


def test_threads_share_a_preprocessor(images: list[np.ndarray]) -> None:
    """Scratch buffers are per thread: two threads on one preprocessor never mix their frames."""
    prep = preprocessors()[-1][1]
    expected = [prep.reference(i) for i in images]
    errors: list[str] = []

    def work(order: list[int]) -> None:
        buffer = prep.input_buffer()
        for _ in range(3):
            for i in order:
                if not np.array_equal(prep.into(images[i], buffer), expected[i]):
                    errors.append(f"image {i}")

    order = list(range(len(images)))
    threads = [threading.Thread(target=work, args=(o,)) for o in (order, order[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
