"""The fused preprocessing on the exported models' own cards: byte for byte the reference path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.model.card import load_card
from edge_runtime.source.preprocess import Preprocessor

MODELS = ("int8.tflite", "int8.onnx", "fp32.onnx")


def card(exported: dict[str, Path], model: str) -> Preprocessor:
    return Preprocessor.from_card(load_card(exported[model], verify=False))


@pytest.mark.parametrize("model", MODELS)
def test_fused_equals_reference_on_real_images(exported: dict[str, Path], model: str) -> None:
    from edge_runtime.bench.datasets import load_domain

    prep = card(exported, model)
    images = load_domain("photo").images[::25] + load_domain("clipart").images[::25]
    rng = np.random.default_rng(0)
    images += [rng.integers(0, 256, (576, 768, 3), dtype=np.uint8), rng.integers(0, 256, (100, 37), dtype=np.uint8)]
    buffer = prep.input_buffer()
    for image in images:
        expected = prep.reference(image)
        assert np.array_equal(prep(image), expected), f"{model}: frame {image.shape} differs from the reference path"
        assert prep.into(image, buffer) is buffer and np.array_equal(buffer, expected)


def test_card_inputs_are_what_the_models_take(exported: dict[str, Path]) -> None:
    """The int8 TFLite input is int8 NHWC (pixel - 128 exactly), the ONNX ones float32 NCHW."""
    tflite = card(exported, "int8.tflite")
    assert tflite.input_buffer().dtype == np.int8 and tflite.input_buffer().shape == (1, 224, 224, 3)
    assert tflite._flip  # the bit-flip shortcut of the table applies to this card
    assert (tflite(np.full((300, 300, 3), 200, np.uint8)) == 200 - 128).all()
    onnx = card(exported, "int8.onnx")
    assert onnx.input_buffer().dtype == np.float32 and onnx.input_buffer().shape == (1, 3, 224, 224)
