"""``edgert bench soak``: the stream loop over a looped video for >= 100k frames (see ``stream``)."""

from __future__ import annotations

import argparse

from edge_runtime.bench.stream import main_soak


def configure(parser: argparse.ArgumentParser) -> None:
    from edge_runtime.bench.stream import configure as configure_stream

    configure_stream(parser, soak=True)


__all__ = ["configure", "main_soak"]
