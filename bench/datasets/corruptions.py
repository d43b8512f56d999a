"""Corrupted photos, ImageNet-C style: ``photo-c/<corruption>`` at severity 5.

Corruptions come from ``imagecorruptions`` (PyPI ``imagecorruptions-imaug``), applied to the
framed 256-pixel photos (RGB order, as the package expects). ``CORRUPTIONS`` are the ones the
bench reports. ``DEV_CORRUPTIONS`` are ImageNet-C's held-out kind (its "validation" four plus
zoom blur and elastic transform): developers may tune hyperparameters on them without touching
any reported target; the bench never reports them. Left out: glass_blur (minutes per image set),
snow and frost (frost overlays packaged photos of frost; both are weather, kept out to leave
fog as the only weather corruption in the reported set).

Determinism: each image is corrupted with the global NumPy generator seeded from
sha256(corruption, image id), and impulse noise with that seed passed explicitly (it draws from
its own generator), so an image's corruption does not depend on load order.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from edge_runtime.bench.datasets.domain import DomainSource, fingerprint

CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "fog",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
)
DEV_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "zoom_blur", "spatter", "saturate", "elastic_transform")
SEVERITY = 5
_SEEDED_BY_ARGUMENT = ("impulse_noise",)


def image_seed(corruption: str, image_id: str) -> int:
    """A 32-bit seed from the corruption's name and the image's stable id."""
    return int.from_bytes(hashlib.sha256(f"{corruption}\0{image_id}".encode()).digest()[:4], "little")


def corrupt_image(image: np.ndarray, corruption: str, image_id: str, severity: int = SEVERITY) -> np.ndarray:
    """Corrupt one BGR uint8 image, deterministically for its id; returns BGR uint8."""
    from imagecorruptions import corrupt

    seed = image_seed(corruption, image_id)
    kwargs = {"seed": seed} if corruption in _SEEDED_BY_ARGUMENT else {}
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    saved = np.random.get_state()  # the package draws from the global generator; leave it as found
    try:
        np.random.seed(seed)
        out = corrupt(rgb, severity=severity, corruption_name=corruption, **kwargs)
    finally:
        np.random.set_state(saved)
    return cv2.cvtColor(np.ascontiguousarray(out, dtype=np.uint8), cv2.COLOR_RGB2BGR)


def corrupted_source(clean: DomainSource, corruption: str, severity: int = SEVERITY) -> DomainSource:
    """``clean`` with every image corrupted, named ``<clean>-c/<corruption>``; cached on disk."""
    if corruption not in CORRUPTIONS + DEV_CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; one of {', '.join(CORRUPTIONS + DEV_CORRUPTIONS)}")
    from importlib.metadata import version as package_version

    name = f"{clean.name}-c/{corruption}"
    version = fingerprint(name, clean.version, severity, package_version("imagecorruptions-imaug"))

    def build():
        domain = clean.load()
        images = [corrupt_image(im, corruption, i, severity) for im, i in zip(domain.images, domain.ids)]
        return images, domain.labels, domain.classes, domain.ids

    return DomainSource(name, version, build)
