"""``edgert bench stream`` and ``edgert bench soak``: the whole loop, end to end, on a real video.

``stream``: decode -> preprocess -> backbone -> adapter (adapting on every frame), the video read
in full (no drops), no sinks. Reports fps over the stream and the p50 ms of each stage, and the
adapter's cost as a ratio of the backbone's, both from the same run.

``soak``: the same loop over the video played in a loop for ``--frames`` frames (>= 100k for the
target), checkpointing as it goes, sampling resident memory and open file descriptors. Reports
RSS growth after warm-up and file descriptors leaked (open after the run minus before it).

With no arguments both use opencv-doc's ``vtest.avi`` and the default export; the adapter starts
from a source memory of the packaged photo domain (built on first use and cached under
``.cache/memories``), or from ``--memory FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.defaults import DEFAULT_MODEL

VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
PREFERRED_ADAPTERS = ("memflow", "dmn", "knn", "ncm")


def configure(parser: argparse.ArgumentParser, *, soak: bool = False) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"backbone (default: {DEFAULT_MODEL})")
    parser.add_argument("--video", type=Path, default=VIDEO, help=f"video file (default: {VIDEO})")
    parser.add_argument("--adapter", help=f"adapter (default: the first registered of {', '.join(PREFERRED_ADAPTERS)})")
    parser.add_argument("--memory", type=Path, help="source memory file (default: fit on the photo domain)")
    parser.add_argument("--threads", type=int, help="backbone threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    if soak:
        parser.add_argument("--frames", type=int, default=100_000, help="frames to stream (default: 100000)")
        parser.add_argument("--warmup", type=int, default=2_000, help="frames before the RSS baseline (default: 2000)")
        parser.add_argument(
            "--checkpoint-every",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="seconds between checkpoints during the soak (default: 10)",
        )
        parser.set_defaults(main=main_soak)
    else:
        parser.add_argument("--frames", type=int, help="stop after this many frames (default: the whole video)")
        parser.add_argument(
            "--video-out",
            type=Path,
            metavar="FILE",
            help="also write the annotated video (.mp4 or .avi), as `edgert run --video-out` does",
        )
        parser.add_argument(
            "--before",
            action="store_true",
            help="alternate with the frame path before the pipeline (one loop, per-pixel "
            "preprocessing, sinks inline) and report both from this run",
        )
        parser.add_argument("--rounds", type=int, default=3, help="passes of each path with --before (default: 3)")
        parser.set_defaults(main=main_stream)


def default_adapter() -> str:
    from edge_runtime.adapters import ADAPTERS

    for name in PREFERRED_ADAPTERS:
        if name in ADAPTERS:
            return name
    raise RuntimeError("no adapter is registered")


def source_state(args: argparse.Namespace, backbone: Any) -> tuple[Any, list[str]]:
    """(adapter, classes): from --memory, or the photo domain's memory (built once, then cached)."""
    from edge_runtime.adapters import make_adapter
    from edge_runtime.bench.datasets import load_domain
    from edge_runtime.bench.datasets.domain import cache_root, fingerprint
    from edge_runtime.runtime.source_memory import image_features
    from edge_runtime.state import StateError, read_state, write_state

    name = args.adapter or default_adapter()
    sha = backbone.card.sha256
    if args.memory is not None:
        state = read_state(args.memory, model_sha256=sha, adapter=name)
        return state.adapter, state.classes
    domain = load_domain("photo")
    path = cache_root() / "memories" / f"photo-{fingerprint(domain.version)[:12]}-{name}-{sha[:12]}.npz"
    try:
        state = read_state(path, model_sha256=sha, adapter=name)
        return state.adapter, state.classes
    except StateError:
        pass
    print(f"building the photo source memory for {name} (cached in {path})")
    adapter = make_adapter(name).fit(
        image_features(backbone, domain.images), domain.labels, n_classes=len(domain.classes)
    )
    write_state(
        path,
        adapter,
        kind="memory",
        model_sha256=sha,
        classes=list(domain.classes),
        name=name,
        meta={"images": "photo", "examples": len(domain)},
    )
    return adapter, list(domain.classes)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Sampler:
    """A stream sink that records resident memory every ``every`` frames into a fixed array, and
    prints RSS and open descriptors every ``report_every`` frames (a long soak shows its trend)."""

    def __init__(self, frames: int, warmup: int, every: int = 500, report_every: int = 10_000) -> None:
        self.every = every
        self.warmup = warmup
        self.report_every = report_every
        self.rss = np.zeros(frames // every + 2, np.int64)
        self.at = np.zeros_like(self.rss)
        self.n = 0
        self.count = 0
        self.baseline = 0

    def write(self, prediction: Any, image: np.ndarray) -> None:
        self.count += 1
        if self.count % self.every == 0 and self.n < self.rss.shape[0]:
            self.rss[self.n], self.at[self.n] = rss_bytes(), self.count
            if not self.baseline and self.count >= self.warmup:
                self.baseline = int(self.rss[self.n])
            self.n += 1
        if self.count % self.report_every == 0:
            rss = rss_bytes()
            print(
                f"soak: {self.count} frames, RSS {rss / 2**20:.2f} MB "
                f"({(rss - self.baseline) / 2**20:+.3f} MB since warm-up), {open_fds()} open fds",
                flush=True,
            )

    def close(self) -> None:
        pass


def setup(args: argparse.Namespace) -> tuple[Any, Any, list[str], str]:
    from edge_runtime.errors import InputError
    from edge_runtime.model import load_backbone

    if not args.video.is_file():
        raise InputError(f"video not found: {args.video} (install Debian's opencv-doc or pass --video)")
    backbone = load_backbone(args.model, threads=args.threads)
    adapter, classes = source_state(args, backbone)
    adapter.prepare()
    # Warm the backbone so the first timed frame is not paying for graph optimisation.
    dummy = np.zeros((576, 768, 3), np.uint8)
    for _ in range(5):
        backbone.infer(dummy)
    return backbone, adapter, classes, args.adapter or default_adapter()


def stream_once(
    args: argparse.Namespace, backbone: Any, adapter: Any, classes: list[str], *, before: bool = False
) -> Any:
    """One pass over the video on a copy of the adapter (every pass starts from the same state)."""
    import copy

    from edge_runtime.runtime.stream import Stream
    from edge_runtime.sinks import VideoSink
    from edge_runtime.source.capture import Capture

    sinks = []
    if args.video_out is not None:
        capture_fps = Capture(str(args.video)).open()
        fps = capture_fps.fps
        capture_fps.stop()
        sinks.append(VideoSink(args.video_out, fps))
    stream = Stream(backbone, copy.deepcopy(adapter), classes, sinks, max_frames=args.frames, reference=before)
    cpu = time.process_time()
    summary = stream.run(Capture(str(args.video)).start())
    # CPU time of every thread of this process per frame: on a shared machine, the work itself
    summary.cpu_ms_per_frame = 1000 * (time.process_time() - cpu) / max(summary.frames, 1)
    return summary


def main_stream(args: argparse.Namespace) -> int:
    backbone, adapter, classes, name = setup(args)
    load = os.getloadavg()[0]
    paths = ("before", "after") if args.before else ("after",)
    runs: dict[str, list[Any]] = {p: [] for p in paths}
    for _ in range(args.rounds if args.before else 1):
        for path in paths:
            runs[path].append(stream_once(args, backbone, adapter, classes, before=path == "before"))
    result: dict[str, Any] = {}
    for path, summaries in runs.items():
        summary = summaries[-1]
        # p50 per stage over every pass of this path; fps: the median pass
        p50 = {
            s: float(np.median(np.concatenate([x.stage_ms[s].values() for x in summaries]))) for s in summary.stage_ms
        }
        writer = np.concatenate([x.writer_ms.values() for x in summaries])
        fps = float(np.median([x.fps for x in summaries]))
        result[path] = {
            "fps": round(fps, 2),
            "fps_passes": [round(x.fps, 2) for x in summaries],
            "frames": summary.frames,
            "dropped": summary.dropped,
            "undecodable": summary.undecodable,
            "seconds": round(summary.seconds, 2),
            "p50_ms": {k: round(v, 3) for k, v in p50.items()},
            "cpu_ms_per_frame": round(float(np.median([x.cpu_ms_per_frame for x in summaries])), 3),
            "writer_thread_p50_ms": round(float(np.median(writer)), 3) if writer.size else None,
            "adapter_over_backbone": round(p50["adapt"] / p50["backbone"], 4) if p50["backbone"] else None,
            "preprocess_and_sinks_over_backbone": round((p50["preprocess"] + p50["sinks"]) / p50["backbone"], 4)
            if p50["backbone"]
            else None,
        }
    what = f"{args.model} + {name} (adapting every frame)" + (
        f", annotated video to {args.video_out}" if args.video_out else ""
    )
    for path, row in result.items():
        label = (
            {"before": "before (one loop, per-pixel preprocessing)", "after": "pipelined"}[path]
            if args.before
            else "bench stream"
        )
        print(
            f"{label}: {row['frames']} frames of {args.video.name} through {what}: {row['fps']:.1f} fps end to end "
            f"(passes {row['fps_passes']}), dropped {row['dropped']}; CPU {row['cpu_ms_per_frame']:.2f} ms per frame"
        )
        print(
            "  p50 ms: "
            + "  ".join(f"{k} {v:.2f}" for k, v in row["p50_ms"].items())
            + (
                f"  (writer thread {row['writer_thread_p50_ms']:.2f}, off the frame path)"
                if row["writer_thread_p50_ms"]
                else ""
            )
            + f"; adapter / backbone = {row['adapter_over_backbone']}; (preprocess + sinks) / backbone = "
            f"{row['preprocess_and_sinks_over_backbone']}"
        )
    out = dict(result["after"])
    if args.before:
        out["before"] = result["before"]
        out["fps_after_over_before"] = round(result["after"]["fps"] / result["before"]["fps"], 3)
        print(f"  fps pipelined / before = {out['fps_after_over_before']} (same run, passes alternated)")
    out.update(
        {
            "model": str(args.model),
            "video": str(args.video),
            "adapter": name,
            "video_out": str(args.video_out) if args.video_out else None,
            "threads": backbone.threads,
            "cpus": len(os.sched_getaffinity(0)),
            "loadavg_1min_before": load,
            "loadavg_1min_after": os.getloadavg()[0],
        }
    )
    print(
        f"  {out['cpus']} CPUs, backbone threads {out['threads']}, load average before the run {load:.2f}, "
        f"after {out['loadavg_1min_after']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def main_soak(args: argparse.Namespace) -> int:
    from edge_runtime.runtime.shutdown import Shutdown
    from edge_runtime.runtime.stream import Stream
    from edge_runtime.runtime.summary import Progress
    from edge_runtime.source.capture import Capture
    from edge_runtime.state import Checkpoints

    backbone, adapter, classes, name = setup(args)
    fds_before = open_fds()
    sampler = Sampler(args.frames, args.warmup)
    with tempfile.TemporaryDirectory(prefix="edgert-soak-") as folder:
        checkpoints = Checkpoints(Path(folder), backbone.card.sha256, name)
        stream = Stream(
            backbone,
            adapter,
            classes,
            [sampler],
            checkpoints=checkpoints,
            checkpoint_every=args.checkpoint_every,
            max_frames=args.frames,
            progress=Progress(),
        )
        start = time.perf_counter()
        capture = Capture(str(args.video), loop=True)
        # Ctrl-C / SIGTERM end a long soak early with its figures so far, as `edgert run` does.
        with Shutdown() as shutdown:
            shutdown.on_request(stream.stop.set)
            shutdown.on_request(capture.request_stop)
            summary = stream.run(capture.start())
        checkpoints.close()
        seconds = time.perf_counter() - start
        fds_after = open_fds()
    rss = sampler.rss[: sampler.n]
    at = sampler.at[: sampler.n]
    after = rss[at >= args.warmup]
    baseline = int(after[0]) if after.size else 0
    growth = int(after.max() - baseline) if after.size else 0
    final = int(after[-1] - baseline) if after.size else 0
    result = {
        "frames": summary.frames,
        "seconds": round(seconds, 1),
        "fps": round(summary.fps, 2),
        "video_loops": capture.loops,
        "dropped": summary.dropped,
        "checkpoints": summary.checkpoints,
        "warmup_frames": args.warmup,
        "rss_mb_at_warmup": round(baseline / 2**20, 2),
        "rss_mb_final": round(int(rss[-1]) / 2**20, 2) if rss.size else 0,
        "rss_growth_mb_max": round(growth / 2**20, 3),
        "rss_growth_mb_final": round(final / 2**20, 3),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "fds_leaked": fds_after - fds_before,
        "rss_samples": {"frame": at.tolist(), "mb": [round(v / 2**20, 2) for v in rss.tolist()]},
        "adapter": name,
        "model": str(args.model),
        "video": str(args.video),
    }
    print(
        f"bench soak: {summary.frames} frames ({summary.fps:.1f} fps, {summary.checkpoints} checkpoints, "
        f"ended: {summary.ended}) through {args.model} + {name}"
    )
    print(
        f"  RSS after {args.warmup} warm-up frames {result['rss_mb_at_warmup']} MB; growth since then: "
        f"max {result['rss_growth_mb_max']} MB, at the end {result['rss_growth_mb_final']} MB (target < 5 MB)"
    )
    print(f"  open file descriptors: {fds_before} before, {fds_after} after: {fds_after - fds_before} leaked")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
