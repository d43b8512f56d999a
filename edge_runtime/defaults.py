"""Default locations, resolved the same way for a source checkout and an installed package.

Models are looked for under ``models/`` in the working directory, where ``edgert export`` writes
them by default (``--models-dir``); nothing is resolved against the package's own files, so a
``pip install .`` on a device behaves like the checkout. ``$EDGERT_MODEL`` names the backbone the
bench extracts features with.

>>> str(model_path())
'models/efficientnet-lite0/int8.tflite'
"""

from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR = Path("models")
BACKBONE = "efficientnet-lite0"
DEVICE_ARTEFACT = "int8.tflite"  # what a device runs
BENCH_ARTEFACT = "fp32.onnx"  # what the accuracy bench extracts features with, unless $EDGERT_MODEL
MODEL_ENV = "EDGERT_MODEL"


def model_dir(name: str = BACKBONE) -> Path:
    """``models/<name>``: one backbone's exported artefacts and their cards."""
    return MODELS_DIR / name


def model_path(artefact: str = DEVICE_ARTEFACT, name: str = BACKBONE) -> Path:
    """One exported artefact, by default the int8 TFLite model a device runs."""
    return model_dir(name) / artefact


DEFAULT_MODEL = model_path()


def bench_model() -> Path:
    """``$EDGERT_MODEL``, or the default fp32 ONNX export: the backbone the accuracy bench reads."""
    return Path(os.environ.get(MODEL_ENV) or model_path(BENCH_ARTEFACT))


__all__ = [
    "BACKBONE",
    "BENCH_ARTEFACT",
    "DEFAULT_MODEL",
    "DEVICE_ARTEFACT",
    "MODELS_DIR",
    "MODEL_ENV",
    "bench_model",
    "model_dir",
    "model_path",
]
