"""The ``Domain`` record, image framing shared by the loaders, and the on-disk cache they use.

Framing: every object image (photo, clipart, emoji) is cropped to the bounding box of its opaque
pixels, composited on the plain background, scaled so its longer side is ``OBJECT_FILL`` x
``OBJECT_SIDE`` and centred on a square canvas of ``OBJECT_SIDE`` pixels. With the EfficientNet
cards' centre crop of 0.875 the object then fills the model's input exactly, whatever the source
resolution (a 32-pixel emoji and a 16000-pixel clipart end up framed the same way).

Cache: decoded domains are stored under ``<cache>/datasets/`` as ``.npz`` (no pickle), named by
a version string that hashes the source files' listing (path and size: a new package version
changes it), the mapping table and the framing constants. ``<cache>`` is ``$EDGERT_CACHE`` or
``<repo>/.cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.bench.datasets.images import GREY, composite
from edge_runtime.files import atomic_write

OBJECT_SIDE = 256
OBJECT_FILL = 0.875
# Alpha at or below this (or, without alpha, a colour within this of the paper colour) counts as
# empty when finding an object's bounding box, so faint anti-aliasing halos do not widen it.
EMPTY_LEVEL = 8
FORMAT = 2  # bump when framing or loading changes in a way the constants above do not capture


@dataclass(frozen=True)
class Domain:
    """Labelled images of one domain. ``images[i]`` is BGR uint8, labelled ``classes[labels[i]]``.

    ``ids`` are stable strings (a path relative to the source, an emoji name, an index) used for
    seeding and for tracing a result back to its image.
    """

    name: str
    images: list[np.ndarray]
    labels: np.ndarray  # int64 (n,)
    classes: tuple[str, ...]
    ids: tuple[str, ...]
    version: str  # changes whenever the images could change; keys the feature cache

    def __len__(self) -> int:
        return len(self.images)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def cache_root() -> Path:
    """``$EDGERT_CACHE`` or ``<repo>/.cache`` (the repo holding this ``bench/`` folder)."""
    env = os.environ.get("EDGERT_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache"


def fingerprint(*parts: object) -> str:
    """Stable sha256 hex of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def listing(paths: list[Path], root: Path) -> list[tuple[str, int]]:
    """(relative path, size) of source files: what a version string hashes."""
    return [(p.relative_to(root).as_posix(), p.stat().st_size) for p in paths]


def safe_name(name: str) -> str:
    """A domain name as a file name: ``photo-c/fog`` -> ``photo-c_fog``."""
    return name.replace("/", "_")


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` through ``edge_runtime.files.atomic_write`` (a cache a kill cannot half-write)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def frame_object(
    image: np.ndarray, side: int = OBJECT_SIDE, fill: float = OBJECT_FILL, background: tuple[int, int, int] = GREY
) -> np.ndarray:
    """BGR or BGRA image -> (side, side, 3) BGR with the object centred, longer side ``fill * side``.

    The bounding box comes from alpha when there is one, else from pixels that differ from the
    top-left pixel (the paper colour of a drawing without alpha); an empty image is framed whole.

    >>> dot = np.zeros((10, 40, 4), np.uint8); dot[4:6, 10:30] = (0, 0, 0, 255)
    >>> framed = frame_object(dot, side=16, fill=0.5)
    >>> framed.shape, int((framed[..., 0] < 64).sum(axis=1).max())  # the dark bar on grey
    ((16, 16, 3), 8)
    """
    if image.shape[2] == 4:
        mask = image[..., 3] > EMPTY_LEVEL
    else:
        mask = np.any(np.abs(image.astype(np.int16) - image[0, 0].astype(np.int16)) > EMPTY_LEVEL, axis=2)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        image = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    flat = composite(image, background)
    h, w = flat.shape[:2]
    target = max(1, round(fill * side))
    scale = target / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    flat = cv2.resize(flat, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = background
    y, x = (side - size[1]) // 2, (side - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = flat
    return canvas


Built = tuple[list[np.ndarray], "list[int] | np.ndarray", tuple[str, ...], "list[str] | tuple[str, ...]"]


@dataclass(frozen=True)
class DomainSource:
    """A domain before loading: its name, its version (cheap to compute) and how to build it.

    ``build()`` returns (images, labels, classes, ids), images all of one shape. With ``cache``,
    ``load()`` reads ``<cache>/datasets/<name>-<version[:16]>.npz`` or builds and writes it;
    without, it builds every time (for sources that decode faster than the cache would load).
    """

    name: str
    version: str
    build: Callable[[], Built]
    cache: bool = True

    def cache_path(self) -> Path:
        return cache_root() / "datasets" / f"{safe_name(self.name)}-{self.version[:16]}.npz"

    def load(self) -> Domain:
        path = self.cache_path()
        if self.cache and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return Domain(
                    self.name,
                    list(z["images"]),
                    z["labels"].astype(np.int64),
                    tuple(z["classes"].tolist()),
                    tuple(z["ids"].tolist()),
                    self.version,
                )
        images, labels, classes, ids = self.build()
        domain = Domain(self.name, list(images), np.asarray(labels, np.int64), tuple(classes), tuple(ids), self.version)
        if self.cache:
            atomic_savez(
                path,
                images=np.stack(domain.images),
                labels=domain.labels,
                classes=np.array(domain.classes),
                ids=np.array(domain.ids),
            )
        return domain
