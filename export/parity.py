"""How faithful each exported artefact is to the fp32 torch model, on real held-out photos."""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Feature cosine (mean, min) and ImageNet top-1 agreement of candidate vs reference.

    Both are (features, logits) over the same images in the same order.
    """
    cosine = np.sum(_unit(reference[0]) * _unit(candidate[0]), axis=1)
    agree = reference[1].argmax(axis=1) == candidate[1].argmax(axis=1)
    return {
        "feature_cosine_mean": float(cosine.mean()),
        "feature_cosine_min": float(cosine.min()),
        "top1_agreement": float(agree.mean()),
    }
