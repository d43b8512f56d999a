"""``edgert run``: classify a video file, camera or stream, adapting on the unlabelled frames.

Start-up: the adapter state comes from the newest good checkpoint in ``--state`` (files skipped
as corrupt or made for another model are named on stderr), else from the source memory
``--memory`` (``edgert memory build``). Checkpoints are written every ``--checkpoint-every``
seconds and at exit. SIGINT/SIGTERM end the run cleanly at any moment after it starts (while
the model loads or a camera is retried too): final checkpoint, summary, exit 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_runtime.defaults import DEFAULT_MODEL
from edge_runtime.errors import EdgeRuntimeError, InputError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help="a video file, an image sequence (frames/%%05d.png), a camera index (0), or a capture URL/pipeline "
        "OpenCV accepts",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help=f"exported backbone, .onnx or .tflite with its card beside it (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--adapter",
        default="memflow",
        help="adapter name (memflow, dmn, knn, ncm, ...), or none for the ImageNet head only",
    )
    parser.add_argument("--memory", type=Path, help="source memory file to start from (edgert memory build)")
    parser.add_argument("--state", type=Path, help="folder for checkpoints: resumed at start, written as it runs")
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between checkpoints (default: 30; a final one is always written)",
    )
    parser.add_argument(
        "--labels", type=Path, help='JSONL of {"frame": n or "t": seconds, "label": name} to teach the adapter'
    )
    parser.add_argument("--out", type=Path, help="predictions as JSONL, one line per processed frame")
    parser.add_argument("--video-out", type=Path, help="annotated video, .mp4 (mp4v) or .avi (MJPG)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="process one frame in N (default: 1)")
    parser.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="pace a file at its frame rate like a camera (frames are dropped if inference lags)",
    )
    parser.add_argument("--no-adapt", action="store_true", help="predict only: do not adapt on the frames")
    parser.add_argument(
        "--compare", action="store_true", help="also record the source-only prediction of --memory for every frame"
    )
    parser.add_argument(
        "--reconnects", type=int, default=5, help="reopen attempts (with backoff) when a live source fails (default: 5)"
    )
    parser.add_argument("--threads", type=int, help="backbone threads (default: all cores)")
    parser.add_argument(
        "--providers",
        metavar="NAMES",
        help="where the backbone runs, in order of preference: ONNX Runtime providers "
        "(tensorrt,cuda,cpu) or LiteRT delegates (gpu, edgetpu, a delegate .so); "
        "unavailable ones fall back to the CPU with a warning (default: cpu)",
    )
    parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics over HTTP while running (host defaults to 127.0.0.1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--json", type=Path, help="write the run summary as JSON to this file")
    from edge_runtime.cli.fleet import add_run_options

    add_run_options(parser)
    parser.set_defaults(main=main)


def load_adapter(args: argparse.Namespace, backbone: Any) -> tuple[Any, list[str], Any, dict[str, Any]]:
    """(adapter, class names, checkpoints, meta) for the run, from --state or --memory."""
    from edge_runtime.state import Checkpoints, read_state

    sha = backbone.card.sha256
    checkpoints = Checkpoints(args.state, sha, args.adapter) if args.state else None
    state = checkpoints.load() if checkpoints else None
    if checkpoints:
        for problem in checkpoints.problems:
            print(f"edgert run: skipped state file: {problem}", file=sys.stderr)
    if state is not None:
        print(
            f"edgert run: resuming from {state.path} ({state.meta.get('frames', 0)} frames seen before)",
            file=sys.stderr,
        )
    elif args.memory is not None:
        state = read_state(args.memory, model_sha256=sha, adapter=args.adapter)
        print(f"edgert run: starting from source memory {args.memory}", file=sys.stderr)
    else:
        if checkpoints:
            checkpoints.close()
        where = f"no usable checkpoint in {args.state} and " if args.state else ""
        raise InputError(f"{where}no --memory FILE: build one with `edgert memory build --adapter {args.adapter}`")
    # journal_seq and request_ids: a bridge journal in the same folder replays from where this checkpoint stands
    meta = {k: v for k, v in state.meta.items() if k in ("frames", "journal_seq", "request_ids")}
    if "fleet" in state.meta:  # popped by _run: (the ledger's meta, its arrays)
        meta["fleet"] = (state.meta["fleet"], state.extra)
    return state.adapter, state.classes, checkpoints, meta


def start_metrics(address: str, backbone: Any) -> Any:
    """The Prometheus endpoint, serving before the first frame (``edge_runtime.runtime.metrics``)."""
    from edge_runtime.runtime.metrics import Metrics, parse_address

    host, port = parse_address(address)
    metrics = Metrics(host, port, model=str(backbone.model_path.name), execution=backbone.execution)
    print(f"edgert run: metrics on http://{metrics.address}/metrics", file=sys.stderr, flush=True)
    return metrics


def main(args: argparse.Namespace) -> int:
    from edge_runtime.runtime.shutdown import Shutdown

    with Shutdown() as shutdown:
        return _run(args, shutdown)


def _run(args: argparse.Namespace, shutdown: Any) -> int:
    from edge_runtime.model import load_backbone, parse_providers
    from edge_runtime.runtime.labels import LabelSchedule
    from edge_runtime.runtime.stream import Stream
    from edge_runtime.runtime.summary import Progress
    from edge_runtime.sinks import JsonlSink, VideoSink
    from edge_runtime.source.capture import Capture
    from edge_runtime.state import read_state

    if args.every < 1:
        raise InputError(f"--every must be >= 1, got {args.every}")
    if not args.quiet:
        print(f"edgert run: loading {args.model}", file=sys.stderr, flush=True)
    backbone = load_backbone(args.model, threads=args.threads, providers=parse_providers(args.providers))
    metrics = start_metrics(args.metrics, backbone) if args.metrics else None
    checkpoints = None
    baseline = None
    if args.adapter == "none":
        adapter, classes, meta = None, [name.split(",")[0] for name in backbone.card.labels], {}  # type: ignore[var-annotated]
        if args.labels or args.state or args.compare:
            raise InputError("--labels, --state and --compare need an adapter: pass --adapter and --memory")
    else:
        adapter, classes, checkpoints, meta = load_adapter(args, backbone)
        if args.compare:
            if args.memory is None:
                raise InputError("--compare needs --memory FILE: the source-only memory to compare with")
            baseline = read_state(args.memory, model_sha256=backbone.card.sha256).adapter
    if args.fleet and adapter is None:
        raise InputError("--fleet shares what an adapter learns: pass --adapter memflow and --memory")
    resume, fleet = meta.pop("fleet", None), None
    try:
        labels = LabelSchedule.load(args.labels, classes) if args.labels else None
        if labels is not None and (adapter is None or not adapter.can_teach):
            raise InputError(f"adapter {args.adapter!r} does not learn from labels: drop --labels")
        capture = Capture(args.source, realtime=args.realtime, every=args.every, reconnects=args.reconnects)
        shutdown.on_request(capture.request_stop)  # also ends a wait for a camera that is not there yet
        capture.open()
        sinks: list[Any] = []
        if args.out:
            sinks.append(JsonlSink(args.out))
        if args.video_out:
            sinks.append(VideoSink(args.video_out, capture.fps / args.every if capture.fps else 0.0))
        if adapter is not None and not shutdown.requested.is_set():
            adapter.prepare()
        if args.fleet:
            from edge_runtime.cli.fleet import attach

            fleet = attach(args, adapter, backbone.card.sha256, resume)
        stream = Stream(
            backbone,
            adapter,
            classes,
            sinks,
            adapt=not args.no_adapt,
            baseline=baseline,
            labels=labels,
            checkpoints=checkpoints,
            checkpoint_every=args.checkpoint_every,
            meta=meta,
            max_frames=args.max_frames,
            progress=None if args.quiet else Progress(),
            fleet=fleet,
            metrics=metrics,
        )
        shutdown.on_request(stream.stop.set)  # a signal before this point: the run ends at once, cleanly
        summary = stream.run(capture.start())
        if fleet is not None:
            fleet.close()
    finally:
        if checkpoints is not None:
            checkpoints.close()
        if metrics is not None:
            metrics.close()
    report = summary.to_dict()
    report.update(
        source=str(args.source), model=str(args.model), adapter=args.adapter, execution=backbone.execution.to_dict()
    )
    if fleet is not None:
        report["fleet"] = status = fleet.status()
        print(
            f"  fleet {status['fleet']} as {status['device']}: published up to update {status['seq']} "
            f"({status['bytes_sent']:,} bytes), applied {status['updates'].get('applied', 0)} update(s) and "
            f"{status['updates'].get('resynced', 0)} snapshot(s) from {len(status['peers'])} peer(s), "
            f"rejected {sum(status['rejected'].values())}"
        )
    p50 = "  ".join(f"{k} {v:.2f}" for k, v in summary.p50().items())
    print(
        f"edgert run: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps), adapter "
        f"{args.adapter}; read {summary.read}, dropped {summary.dropped}, undecodable {summary.undecodable}, "
        f"reconnected {summary.reconnected}, taught {summary.taught}; ended: {summary.ended}"
        + (f" ({summary.detail})" if summary.detail else "")
    )
    print(
        f"  p50 ms per frame: {p50}"
        + (
            f"  (writer thread {summary.writer_ms.median():.2f}: source-only read-out "
            f"and outputs, off the frame path)"
            if summary.writer_ms.count
            else ""
        )
    )
    print(f"  backbone on {', '.join(backbone.execution.active)} ({backbone.execution.runtime})")
    if checkpoints is not None:
        print(f"  state: {summary.checkpoints} checkpoint(s) written to {args.state}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if summary.ended == "lost":
        raise EdgeRuntimeError(f"video source {args.source!r} lost: {summary.detail}")
    if summary.ended == "truncated":
        print(
            f"edgert run: warning: video file {args.source} is truncated: {summary.detail} "
            f"({summary.read} frames read)",
            file=sys.stderr,
        )
    if summary.ended == "stopped" and shutdown.signal_name:
        print(f"edgert run: stopped by {shutdown.signal_name}", file=sys.stderr)
    return 0
