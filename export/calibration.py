"""Real images for int8 calibration and for parity, from Debian packages, kept disjoint.

Calibration never sees an image the accuracy bench evaluates on: it uses the tuxpaint photo
stamps of categories outside the bench's nine classes (clothes, household, tools, seasonal,
space, town, sports, trees, ...; cartoons and letter symbols excluded: they are not photos) plus
opencv-doc's sample photographs. Parity uses the tuxpaint photos of the nine bench classes, which
calibration never touches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.bench.datasets.images import composite, read_png
from edge_runtime.errors import EdgeRuntimeError

TUXPAINT = Path("/usr/share/tuxpaint/stamps")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# Sub-trees holding the bench's nine classes.
BENCH_TREES = (
    "animals",
    "food/fruit",
    "food/vegetables",
    "plants/flowers",
    "hobbies/music",
    "vehicles",
    "military/vehicles",
)
DRAWINGS = ("cartoon", "symbols")  # folder names holding drawings, not photos


def _tuxpaint_photos() -> list[Path]:
    if not TUXPAINT.is_dir():
        raise EdgeRuntimeError(f"{TUXPAINT} not found: apt-get install tuxpaint-stamps-default (make setup does)")
    return sorted(p for p in TUXPAINT.rglob("*.png") if not set(DRAWINGS) & set(p.relative_to(TUXPAINT).parts))


def _in_bench_tree(path: Path) -> bool:
    rel = path.relative_to(TUXPAINT).as_posix()
    return any(rel.startswith(tree + "/") for tree in BENCH_TREES)


def calibration_images() -> list[tuple[str, np.ndarray]]:
    """(id, BGR image) pairs: non-bench tuxpaint photos, then opencv-doc's .jpg photographs."""
    import cv2

    images = [
        (f"tuxpaint/{p.relative_to(TUXPAINT)}", composite(read_png(p)))
        for p in _tuxpaint_photos()
        if not _in_bench_tree(p)
    ]
    for path in sorted(OPENCV_DATA.glob("*.jpg")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            images.append((f"opencv-doc/{path.name}", image))
    return images


def parity_images() -> list[tuple[str, np.ndarray]]:
    """(id, BGR image) pairs: the tuxpaint photos of the bench classes (never calibrated on)."""
    return [
        (f"tuxpaint/{p.relative_to(TUXPAINT)}", composite(read_png(p))) for p in _tuxpaint_photos() if _in_bench_tree(p)
    ]
