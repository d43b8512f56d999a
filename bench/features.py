"""Backbone features of the bench domains, computed once and cached on disk.

``load_features("clipart")`` returns the raw pooled features (float32, not normalised) of every
image of the domain, with labels, class names and ids. The cache file is
``<cache>/features/<model sha256[:16]>/<domain>-<key>.npz`` where ``key`` hashes the model card's
preprocessing and the domain's version (its sources, mapping and framing), so a new model, a
changed preprocessing or a changed dataset each miss the cache, and nothing else does. The
default model is ``$EDGERT_MODEL`` or ``<repo>/models/efficientnet-lite0/fp32.onnx``: the accuracy
bench judges adaptation, so it reads features free of quantisation error (which ``parity.json``
measures on its own; on this x86 CPU int8 features drift most on the digit domains, cosine 0.965).
Set ``EDGERT_MODEL`` to an int8 artefact to bench what a device sees end to end.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_runtime.bench.datasets import domain_source
from edge_runtime.bench.datasets.domain import atomic_savez, cache_root, fingerprint, safe_name
from edge_runtime.defaults import bench_model
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.card import load_card, sha256_file

BATCH = 32
FORMAT = 1  # of the features file


class Features(NamedTuple):
    X: np.ndarray  # (n, feature_dim) float32, raw pooled features
    y: np.ndarray  # (n,) int64
    classes: tuple[str, ...]
    ids: tuple[str, ...]


def features_path(domain: str, model_path: str | Path | None = None) -> Path:
    """Where the features of ``domain`` under the model are (or will be) cached."""
    model_path = Path(model_path) if model_path else bench_model()
    if not model_path.is_file():
        raise EdgeRuntimeError(f"model not found: {model_path} (export it first, or set EDGERT_MODEL)")
    card = load_card(model_path, verify=False)
    model_sha = sha256_file(model_path)
    key = fingerprint(
        FORMAT,
        dataclasses.asdict(card.preprocessing),
        card.input.shape,
        card.input.dtype,
        domain_source(domain).version,
    )
    return cache_root() / "features" / model_sha[:16] / f"{safe_name(domain)}-{key[:16]}.npz"


def load_features(domain: str, model_path: str | Path | None = None, *, progress: bool = True) -> Features:
    """Features of every image of ``domain``: from the cache, or computed with the backbone and stored.

    ``progress`` writes a line to stderr every few batches while computing (a cache read is silent).
    """
    path = features_path(domain, model_path)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Features(z["X"], z["y"].astype(np.int64), tuple(z["classes"].tolist()), tuple(z["ids"].tolist()))
    from edge_runtime.model import load_backbone

    data = domain_source(domain).load()
    backbone = load_backbone(model_path or bench_model())
    started = time.monotonic()
    parts = []
    for start in range(0, len(data), BATCH):
        parts.append(backbone.features(data.images[start : start + BATCH]).astype(np.float32, copy=False))
        done = start + len(parts[-1])
        if progress and (done == len(data) or len(parts) % 10 == 0):
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"features {domain}: {done}/{len(data)} images ({rate:.1f}/s)", file=sys.stderr, flush=True)
    features = Features(np.concatenate(parts), data.labels, data.classes, data.ids)
    atomic_savez(
        path,
        X=features.X,
        y=features.y,
        classes=np.array(features.classes),
        ids=np.array(features.ids),
        domain_version=np.array(data.version),
        model_sha256=np.array(sha256_file(backbone.model_path)),
    )
    return features
