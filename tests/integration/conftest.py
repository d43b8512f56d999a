"""The real exported backbone, built once per session when ``models/`` lacks it (or it is stale).

The export runs in the test session on a fresh machine (a few minutes on 2 cores) into
``models/``, the same folder ``make demo`` and the CLI defaults use, so either command reuses
the other's export; its own cache check re-exports when any input or the recipe changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("EDGERT_TEST_MODELS", REPO / "models"))


@pytest.fixture(scope="session")
def exported() -> dict[str, Path]:
    """Paths of the default export: fp32.onnx, int8.onnx, int8.tflite and parity.json."""
    from edge_runtime.export import export_backbone

    return export_backbone("efficientnet-lite0", MODELS)


@pytest.fixture(scope="session", autouse=True)
def default_export(exported: dict[str, Path]) -> None:
    """Bench features, the CLI and the bridge read the default export path (models/...): make it
    exist before any integration test, whichever runs first on a fresh machine."""
