"""Packaged bench datasets: real cross-domain images from Debian, npm and scikit-learn packages.

``load_domain(name)`` returns a ``Domain`` (BGR uint8 images, int64 labels, class names, stable
ids). Names: ``photo``, ``clipart``, ``emoji`` (nine object classes), ``mnist``, ``uci-digits``
(ten digits), and ``photo-c/<corruption>`` for each of ``CORRUPTIONS`` (reported by the bench)
and ``DEV_CORRUPTIONS`` (held out for choosing hyperparameters; never reported).
``domain_source(name)`` gives the domain's version without decoding any image (it keys caches).
Sources, the class mapping tables and the choices behind them: ``README.md`` in this folder.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from edge_runtime.bench.datasets.corruptions import CORRUPTIONS, DEV_CORRUPTIONS, corrupted_source
from edge_runtime.bench.datasets.digits import DIGITS, mnist_source, uci_digits_source
from edge_runtime.bench.datasets.domain import Domain, DomainSource
from edge_runtime.bench.datasets.objects import CLASSES, clipart_source, emoji_source, photo_source
from edge_runtime.errors import InputError

SOURCES: dict[str, Callable[[], DomainSource]] = {
    "photo": photo_source,
    "clipart": clipart_source,
    "emoji": emoji_source,
    "mnist": mnist_source,
    "uci-digits": uci_digits_source,
    **{
        f"photo-c/{c}": partial(lambda c: corrupted_source(photo_source(), c), c) for c in CORRUPTIONS + DEV_CORRUPTIONS
    },
}


def domain_source(name: str) -> DomainSource:
    """The named domain's source: its version, cache path and builder, nothing decoded yet."""
    if name not in SOURCES:
        raise InputError(f"unknown domain {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]()


def load_domain(name: str) -> Domain:
    """The domain called ``name`` (one of ``DOMAINS``), from the on-disk cache when it is there."""
    return domain_source(name).load()


def labelled_images(name: str) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """(images, labels, class names) of a packaged domain: what ``edgert memory build --images NAME``
    memorises (``edge_runtime.runtime.source_memory.build(..., domains=labelled_images)``)."""
    domain = load_domain(name)
    return domain.images, np.asarray(domain.labels, np.int64), list(domain.classes)


DOMAINS: dict[str, Callable[[], Domain]] = {name: partial(load_domain, name) for name in SOURCES}

__all__ = [
    "CLASSES",
    "CORRUPTIONS",
    "DEV_CORRUPTIONS",
    "DIGITS",
    "DOMAINS",
    "Domain",
    "DomainSource",
    "domain_source",
    "labelled_images",
    "load_domain",
]
