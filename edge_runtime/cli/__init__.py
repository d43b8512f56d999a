"""Every entry point: ``edgert`` (``main``) and one module per subcommand (``run``, ``memory``, ``fleet``).

Each subcommand module has ``configure(parser)`` and ``main(args) -> int`` and imports its heavy
dependencies inside ``main``; the host subcommands (``export``, ``bench``, ``demo``) live with the
host code in ``edge_runtime.export`` and ``edge_runtime.bench``.
"""

from edge_runtime.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
