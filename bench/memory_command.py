"""``edgert memory``, composed on the host side: the device command (``edge_runtime.cli.memory``)
with the bench's packaged domains (``photo``, ``clipart``, ...) as named image sets, so that
``--images photo`` works without the device package importing the bench."""

from __future__ import annotations

import argparse

import numpy as np

from edge_runtime.cli import memory as device
from edge_runtime.errors import InputError


def packaged_domain(name: str) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """A packaged domain's labelled images; the datasets are imported only when one is asked for."""
    try:
        from edge_runtime.bench.datasets import labelled_images
    except ImportError as err:
        raise InputError(f"packaged domains need the bench extra ({err}): pip install -e '.[bench]'") from None
    return labelled_images(name)


def main(args: argparse.Namespace) -> int:
    return device.main(args, domains=packaged_domain)


def configure(parser: argparse.ArgumentParser) -> None:
    device.configure(parser, command=main)
