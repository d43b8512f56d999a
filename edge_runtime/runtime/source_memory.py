"""A source memory from labelled images: the backbone's features, an adapter fitted on them, a state file.

``edgert memory build`` and the demo call ``build``; the bench's stream benchmark reuses
``image_features``. The file is a state file (``edge_runtime.state``) tied to the model's sha256;
``edgert run --memory FILE`` starts from it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# name -> (images, labels, class names): where a set of labelled images that is not a folder comes from
Domains = Callable[[str], tuple[list[np.ndarray], np.ndarray, list[str]]]


def folder_images(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Images under ``root/<class>/`` (recursively), their class indices and the class names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += found
        labels += [k] * len(found)
    if len(classes) < 2 or not paths:
        raise InputError(
            f"{root}: expected one sub-folder of images per class (at least 2 classes), "
            f"found {len(classes)} class folder(s) and {len(paths)} image(s)"
        )
    empty = [name for k, name in enumerate(classes) if k not in labels]
    if empty:
        raise InputError(f"{root}: class folder(s) without images: {', '.join(empty)}")
    return paths, np.asarray(labels, np.int64), classes


def image_features(backbone: Any, images: list[np.ndarray]) -> np.ndarray:
    features = np.empty((len(images), backbone.card.feature_dim), np.float32)
    for i, image in enumerate(images):
        features[i] = backbone.features(image)[0]
    return features


def folder_features(backbone: Any, root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from edge_runtime.source.preprocess import read_image

    paths, labels, classes = folder_images(root)
    return image_features(backbone, [read_image(str(p)) for p in paths]), labels, classes


def domain_features(backbone: Any, name: str, domains: Domains | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of a named image set, as ``domains(name)`` gives it (the CLI passes the bench's
    packaged domains: this library does not import the bench)."""
    if domains is None:
        raise InputError(f"{name}: not a folder of class sub-folders")
    images, labels, classes = domains(name)
    return image_features(backbone, images), np.asarray(labels, np.int64), list(classes)


def build(
    model: Path,
    images: str,
    adapter_name: str,
    out: Path,
    params: dict[str, Any] | None = None,
    threads: int | None = None,
    *,
    domains: Domains | None = None,
) -> dict[str, Any]:
    """Fit ``adapter_name`` on the source images' features and write the memory file.

    ``images`` is a folder with one sub-folder per class, or a name ``domains`` resolves."""
    from edge_runtime.adapters import make_adapter
    from edge_runtime.model import load_backbone
    from edge_runtime.state import write_state

    backbone = load_backbone(model, threads=threads)
    adapter = make_adapter(adapter_name, **(params or {}))
    start = time.perf_counter()
    if Path(images).is_dir():
        features, labels, classes = folder_features(backbone, Path(images))
    else:
        features, labels, classes = domain_features(backbone, images, domains)
    adapter.fit(features, labels, n_classes=len(classes))
    counts = np.bincount(labels, minlength=len(classes))
    meta = {
        "images": str(images),
        "examples": int(len(labels)),
        "per_class": {c: int(n) for c, n in zip(classes, counts)},
    }
    write_state(
        out, adapter, kind="memory", model_sha256=backbone.card.sha256, classes=classes, name=adapter_name, meta=meta
    )
    return {
        "out": str(out),
        "adapter": adapter_name,
        "classes": classes,
        "examples": int(len(labels)),
        "seconds": round(time.perf_counter() - start, 2),
    }
