"""Session fixtures shared by every test area: the real exported backbone, built once and cached.

The export runs in the test session on a fresh machine (a few minutes) and is then reused from
``.cache/models`` by later sessions; its own cache check re-exports when inputs change.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGERT_TEST_CACHE", REPO / ".cache"))


@pytest.fixture(scope="session")
def exported() -> dict[str, Path]:
    """Paths of the default export: fp32.onnx, int8.onnx, int8.tflite and parity.json."""
    from edge_runtime.export import export_backbone

    return export_backbone("efficientnet-lite0", CACHE / "models")


@pytest.fixture(scope="module")
def one_blas_thread():
    """As ``edgert bench accuracy`` does: skinny matrices gain nothing from BLAS threads, and on a
    shared machine the threads' synchronisation makes source fits many times slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
