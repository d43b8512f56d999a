"""Backbone features of the bench domains: on-disk cache, and a check that the shift is real."""

from __future__ import annotations

import numpy as np

import edge_runtime.model
from edge_runtime.bench.datasets import load_domain
from edge_runtime.bench.features import features_path, load_features


def test_features_are_cached_and_a_second_call_does_not_run_the_backbone(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    model = exported["int8.onnx"]
    first = load_features("emoji", model, progress=False)
    path = features_path("emoji", model)
    assert path.is_file() and path.is_relative_to(tmp_path)
    stamp = path.stat().st_mtime_ns

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded although the features are cached")

    monkeypatch.setattr(edge_runtime.model, "load_backbone", no_backbone)
    second = load_features("emoji", model, progress=False)
    assert path.stat().st_mtime_ns == stamp
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    domain = load_domain("emoji")
    assert first.X.shape == (len(domain), 1280) and first.X.dtype == np.float32
    assert np.array_equal(first.y, domain.labels) and first.y.dtype == np.int64
    assert first.ids == domain.ids and first.classes == domain.classes
    norms = np.linalg.norm(first.X, axis=1)
    assert np.all(np.isfinite(first.X)) and norms.std() > 0  # raw pooled features, not normalised


def test_cache_key_follows_the_model(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    int8, fp32 = features_path("photo", exported["int8.onnx"]), features_path("photo", exported["fp32.onnx"])
    assert int8.parent != fp32.parent  # keyed by each model file's sha256
    assert features_path("photo", exported["int8.onnx"]) == int8
    assert features_path("clipart", exported["int8.onnx"]).parent == int8.parent


def nearest_class_mean(Xs: np.ndarray, ys: np.ndarray, Xt: np.ndarray, n_classes: int) -> np.ndarray:
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    means = unit(np.stack([unit(Xs)[ys == c].mean(axis=0) for c in range(n_classes)]))
    return (unit(Xt) @ means.T).argmax(axis=1)


def test_the_shift_is_real_photo_to_photo_beats_photo_to_clipart(exported):
    model = exported["int8.onnx"]
    photo, clipart = load_features("photo", model), load_features("clipart", model)
    k = len(photo.classes)
    rng = np.random.default_rng(0)
    half = np.zeros(len(photo.y), bool)
    for c in range(k):  # two stratified halves: each half is the source for the other
        members = rng.permutation(np.flatnonzero(photo.y == c))
        half[members[: len(members) // 2]] = True
    within = np.mean(
        [np.mean(nearest_class_mean(photo.X[s], photo.y[s], photo.X[~s], k) == photo.y[~s]) for s in (half, ~half)]
    )
    across = np.mean(nearest_class_mean(photo.X, photo.y, clipart.X, k) == clipart.y)
    assert across > 2 / k  # well above chance: the classes transfer at all
    assert within > across + 0.15  # ... but photos to drawings is a real shift
