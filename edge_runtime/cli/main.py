"""``edgert``: one console script, one subcommand per stage.

Each subcommand lives in a module with ``configure(parser)`` and ``main(args) -> int``; those
modules import heavy dependencies (torch on the host side) only inside ``main``, so ``edgert
--help`` and the device-side commands never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edge_runtime.errors import EdgeRuntimeError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("edge_runtime.export.cli", "host: export a pretrained backbone to ONNX fp32/int8 and TFLite int8"),
    "bench": ("edge_runtime.bench.cli", "measure latency, accuracy under domain shift, and cost"),
    "run": ("edge_runtime.cli.run", "classify a video, camera or stream, adapting on the unlabelled frames"),
    "memory": ("edge_runtime.bench.memory_command", "build a source memory from labelled images, or show a state file"),
    "demo": (
        "edge_runtime.bench.demo",
        "the main job: export, memorise photos, stream a shifted video: adapted vs source-only",
    ),
    "bridge": ("firmware_bridge.cli", "serve or talk over a serial/TCP link to cameras and MCUs; export memories to C"),
    "fleet": ("edge_runtime.cli.fleet", "devices sharing memory over an MQTT broker: who is online, last update"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgert",
        description="edge_runtime: a frozen int8 backbone that adapts "
        "online to domain shift, with forward passes only",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.main(args) or 0)
    except EdgeRuntimeError as err:
        print(f"edgert {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgert {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
