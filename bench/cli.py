"""``edgert bench <what>``: each benchmark is a module with ``configure(parser)`` and ``main(args)``.

Modules import their heavy dependencies inside ``main`` so that listing the benchmarks stays cheap.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "knn": (
        "edge_runtime.bench.knn",
        "visual-memory search exact vs ANN (10k/100k x 1280), durable remove, DMN adapt cost",
    ),
    "latency": ("edge_runtime.bench.latency", "single-stream latency of the exported backbones, interleaved"),
    "accuracy": ("edge_runtime.bench.accuracy", "online accuracy of the adapters on real domain-shift tasks"),
    "cost": ("edge_runtime.bench.cost", "per-instance adaptation cost: Tent (backprop) vs the gradient-free adapters"),
    "all": (
        "edge_runtime.bench.report",
        "every benchmark into bench/results/<host>-<date>/: JSON, Markdown report, plots",
    ),
    "memflow": (
        "edge_runtime.bench.memflow",
        "MemFlow batch-1 adapt latency vs its torch reference, compile time, state size",
    ),
    "stream": ("edge_runtime.bench.stream", "end-to-end fps of the stream loop on a real video, adapting every frame"),
    "soak": ("edge_runtime.bench.soak", "100k-frame looped-video soak: resident memory growth and leaked file handles"),
    "bridge": ("edge_runtime.bench.bridge", "FEATURES round trip over a pty pair at 115200 baud; C export sizes"),
    "faults": (
        "edge_runtime.bench.faults",
        "bridge under kill -9/SIGTERM, 64 peers, 100k fuzzed frames; HMAC and journal cost",
    ),
    "fleet": (
        "edge_runtime.bench.fleet",
        "N devices sharing memory over a real Mosquitto: isolated vs fleet, bytes, merges, faults",
    ),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        bench = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(bench)
