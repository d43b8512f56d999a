"""``edgert bench latency``: single-stream latency of the exported backbones, MLPerf style.

Each query is one preprocessed real photo through one backbone at batch 1. All backbones run in
the same loop, one query each per round in rotating order, so thermal or frequency drift and
noisy neighbours hit them alike. Warm-up queries are discarded; then at least ``--queries`` per
backbone (or until ``--seconds`` is spent), reported as p50/p90/p99/mean in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.defaults import model_dir
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.numerics import percentiles

VARIANTS = {"onnx-fp32": "fp32.onnx", "onnx-int8": "int8.onnx", "tflite-int8": "int8.tflite"}
SAMPLE_PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir",
        nargs="?",
        default=str(model_dir()),
        help="folder holding fp32.onnx, int8.onnx, int8.tflite (default: the default export)",
    )
    parser.add_argument("--queries", type=int, default=1024, help="timed queries per backbone (default 1024)")
    parser.add_argument("--seconds", type=float, default=None, help="stop early once this many seconds are spent")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries per backbone first")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.set_defaults(main=main)


def sample_inputs(backbone, count: int = 8) -> list[np.ndarray]:  # noqa: ANN001 - any Backbone
    """Preprocessed real photos (opencv-doc's sample images) for this backbone's input."""
    import cv2

    photos = [cv2.imread(str(p)) for p in sorted(SAMPLE_PHOTOS.glob("*.jpg"))[:count]]
    photos = [p for p in photos if p is not None]
    if not photos:
        raise EdgeRuntimeError(f"no sample photos in {SAMPLE_PHOTOS}: apt-get install opencv-doc")
    return [backbone.preprocessor(p) for p in photos]


def measure(
    model_dir: str | Path,
    *,
    queries: int = 1024,
    seconds: float | None = None,
    warmup: int = 20,
    threads: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Interleaved single-stream latency of every variant present in ``model_dir``."""
    from edge_runtime.model import load_backbone

    model_dir = Path(model_dir)
    paths = {name: model_dir / filename for name, filename in VARIANTS.items() if (model_dir / filename).is_file()}
    if not paths:
        raise EdgeRuntimeError(f"no exported models in {model_dir}: run `edgert export` first")
    backbones = {name: load_backbone(path, threads=threads) for name, path in paths.items()}
    inputs = {name: sample_inputs(b) for name, b in backbones.items()}
    for name, backbone in backbones.items():
        for i in range(warmup):
            backbone.run(inputs[name][i % len(inputs[name])])
    names = list(backbones)
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for i in range(queries):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            x = inputs[name][i % len(inputs[name])]
            t0 = time.perf_counter()
            backbones[name].run(x)
            times[name].append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - started
        if progress and (i + 1) % 128 == 0:
            print(f"\rlatency: {i + 1}/{queries} rounds, {elapsed:.0f} s", end="", file=sys.stderr, flush=True)
        if seconds is not None and elapsed > seconds:
            break
    if progress:
        print(file=sys.stderr)
    return [
        {
            "name": name,
            "model": str(paths[name]),
            "queries": len(times[name]),
            "threads": backbones[name].threads,
            "execution": backbones[name].execution.to_dict(),
            **percentiles(times[name]),
            "mean_ms": float(np.mean(times[name])),
            "samples_ms": times[name],
        }
        for name in names
    ]


def main(args: argparse.Namespace) -> int:
    results = measure(
        args.model_dir, queries=args.queries, seconds=args.seconds, warmup=args.warmup, threads=args.threads
    )
    print(f"{'backbone':<13}{'queries':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for r in results:
        print(
            f"{r['name']:<13}{r['queries']:>8}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['mean_ms']:>9.2f}"
        )
    by = {r["name"]: r for r in results}
    ratios = {}
    if "onnx-fp32" in by and "onnx-int8" in by:
        ratios["int8_speedup_vs_fp32"] = by["onnx-fp32"]["p50_ms"] / by["onnx-int8"]["p50_ms"]
        print(f"onnx-int8 is {ratios['int8_speedup_vs_fp32']:.2f}x faster than onnx-fp32 (p50)")
    if "tflite-int8" in by and "onnx-int8" in by:
        ratios["tflite_vs_onnx_int8"] = by["tflite-int8"]["p50_ms"] / by["onnx-int8"]["p50_ms"]
        print(f"tflite-int8 takes {ratios['tflite_vs_onnx_int8']:.2f}x the time of onnx-int8 (p50)")
    print(f"threads: {results[0]['threads']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratios": ratios}))
    return 0
