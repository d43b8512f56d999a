"""Every bench domain on the real packaged data: classes, counts, determinism, corruptions."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.bench.datasets import (
    CLASSES,
    CORRUPTIONS,
    DEV_CORRUPTIONS,
    DIGITS,
    DOMAINS,
    domain_source,
    load_domain,
)
from edge_runtime.bench.datasets.corruptions import corrupt_image
from edge_runtime.errors import InputError

OBJECT_DOMAINS = ("photo", "clipart", "emoji")


@pytest.fixture(scope="module")
def photo():
    return load_domain("photo")


def test_registry_names():
    expected = {"photo", "clipart", "emoji", "mnist", "uci-digits"} | {
        f"photo-c/{c}" for c in CORRUPTIONS + DEV_CORRUPTIONS
    }
    assert set(DOMAINS) == expected
    assert not set(CORRUPTIONS) & set(DEV_CORRUPTIONS)
    with pytest.raises(InputError, match="unknown domain"):
        load_domain("sketch")


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_domain_has_expected_classes_and_nontrivial_counts(name):
    domain = load_domain(name)
    digits = name in ("mnist", "uci-digits")
    assert domain.classes == (DIGITS if digits else CLASSES)
    assert domain.name == name and len(domain) == len(domain.labels) == len(domain.ids)
    assert domain.labels.dtype == np.int64
    assert len(set(domain.ids)) == len(domain.ids)
    counts = np.bincount(domain.labels, minlength=len(domain.classes))
    assert len(counts) == len(domain.classes)
    # Every class present; the smallest real class is emoji fish (4 images).
    assert counts.min() >= (150 if digits else 4)
    assert len(domain) >= {"mnist": 10000, "uci-digits": 1797}.get(name, 200)
    shapes = {im.shape for im in domain.images}
    assert len(shapes) == 1 and shapes.pop() == ((64, 64, 3) if digits else (256, 256, 3))
    assert all(im.dtype == np.uint8 for im in domain.images)


def test_digits_are_white_on_black_with_the_same_framing():
    mnist, uci = load_domain("mnist"), load_domain("uci-digits")
    for domain in (mnist, uci):
        stack = np.stack(domain.images[:200])[..., 0].astype(float)
        assert stack[:, 0, :].max() == 0 and stack[:, :, 0].max() == 0  # black border
        assert stack.max() == 255  # white strokes
        ink = stack > 0
        rows, cols = ink.any(axis=2), ink.any(axis=1)
        extent = np.maximum(rows.sum(axis=1), cols.sum(axis=1))  # longer side of each digit's box
        # Both sources: longer side 20/28 of 64 = 46 px (faint edge pixels may round to black).
        assert np.median(extent) == 46 and extent.max() <= 47 and extent.min() >= 40


def test_emoji_mapping_applies_culinary_moves_and_exclusions():
    emoji = load_domain("emoji")
    label = dict(zip(emoji.ids, (emoji.classes[i] for i in emoji.labels)))
    assert label["tomato"] == "vegetable" and label["avocado"] == "fruit"
    assert label["shark"] == "fish" and label["bee"] == "insect"
    assert not {"spider", "whale", "dolphin", "traffic_light", "feather"} & set(label)


def test_photo_excludes_drawings_and_mirrors(photo):
    assert all("cartoon" not in i.split("/") and not i.endswith("_mirror.png") for i in photo.ids)


def test_object_domains_load_deterministically():
    source = domain_source("emoji")
    a, b = source.build(), source.build()
    assert a[1] == b[1] and a[3] == b[3]
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    cached = source.load()  # what the cache holds equals a fresh build
    assert cached.ids == tuple(a[3]) and all(np.array_equal(x, y) for x, y in zip(cached.images, a[0]))
    assert domain_source("clipart").version == domain_source("clipart").version


def test_digit_domains_load_deterministically():
    a, b = load_domain("uci-digits"), load_domain("uci-digits")
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))


@pytest.mark.parametrize("corruption", CORRUPTIONS + DEV_CORRUPTIONS)
def test_corruption_is_deterministic_per_image_and_differs_from_clean(photo, corruption):
    corrupted = load_domain(f"photo-c/{corruption}")
    assert corrupted.ids == photo.ids and np.array_equal(corrupted.labels, photo.labels)
    clean = np.stack(photo.images).astype(np.int16)
    dirty = np.stack(corrupted.images).astype(np.int16)
    assert dirty.shape == clean.shape
    per_image = np.abs(dirty - clean).mean(axis=(1, 2, 3))
    assert per_image.min() > 0.5  # every single image is changed
    # The cached images (built in another process, in load order) equal a fresh, out-of-order
    # corruption of the same image: the seed comes from the image's id alone.
    for i in (7, 3):
        again = corrupt_image(photo.images[i], corruption, photo.ids[i])
        assert np.array_equal(again, corrupted.images[i])
