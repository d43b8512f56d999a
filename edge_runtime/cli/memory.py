"""``edgert memory``: build a source memory from labelled images, or show what a state file holds.

``edgert memory build --model M --images SRC --adapter A --out FILE`` runs the backbone over
labelled source images and fits the adapter on their features. SRC is a folder with one
sub-folder per class (the sub-folder names are the class names), or the name of a packaged bench
domain (``photo``, ``clipart``, ``emoji``, ...), which ``edgert`` composes in on the host side
(``edge_runtime.bench.memory_command``): this module never imports the bench. The file is a
state file (``edge_runtime.state``) tied to the model's sha256; ``edgert run --memory FILE`` starts from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from edge_runtime.defaults import DEFAULT_MODEL
from edge_runtime.errors import InputError
from edge_runtime.runtime.source_memory import Domains


def configure(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int] | None = None) -> None:
    """The ``build`` and ``show`` actions; ``command`` replaces this module's ``main`` (the host's
    ``edgert`` hands in one that knows the packaged domains)."""
    command = command or main
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="memorise labelled source images into a memory file",
        description="memorise labelled source images into a memory file",
    )
    build.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help=f"exported backbone (default: {DEFAULT_MODEL})"
    )
    build.add_argument(
        "--images",
        required=True,
        help="a folder with one sub-folder of images per class, or a packaged bench domain name",
    )
    build.add_argument("--adapter", default="memflow", help="adapter name (default: memflow)")
    build.add_argument("--params", default="{}", help="adapter parameters as a JSON object, e.g. '{\"k\": 10}'")
    build.add_argument("--out", type=Path, required=True, help="memory file to write (.npz)")
    build.add_argument("--threads", type=int, help="backbone threads (default: all cores)")
    build.set_defaults(main=command)
    show = sub.add_parser(
        "show",
        help="print the header of a memory or checkpoint file",
        description="print the header of a memory or checkpoint file",
    )
    show.add_argument("file", type=Path)
    show.set_defaults(main=command)


def main(args: argparse.Namespace, domains: Domains | None = None) -> int:
    """The command; ``domains`` resolves an image-set name that is not a folder (the host's
    ``edgert`` passes the bench's packaged domains: ``edge_runtime.bench.memory_command``)."""
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
    from edge_runtime.runtime.source_memory import build

    report = build(args.model, args.images, args.adapter, args.out, params, args.threads, domains=domains)
    print(
        f"edgert memory build: {report['examples']} examples of {len(report['classes'])} classes "
        f"({', '.join(report['classes'])}) -> {report['out']} (adapter {report['adapter']}, "
        f"{report['seconds']:.1f} s)",
        file=sys.stdout,
    )
    return 0
