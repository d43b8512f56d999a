"""``edgert demo``: the main job, end to end, on real data that ships with the machine's packages.

1. Export the default backbone when ``models/<name>/`` does not hold it yet (host side: the
   exporter imports torch; the device path never does).
2. Show what the device sees: real photos from Debian's opencv-doc, top-1 ImageNet label and
   confidence from the int8 ONNX and the int8 TFLite backbone.
3. Build a source memory from the packaged photo domain (``edgert memory build``).
4. Write a real shifted video with OpenCV: the clipart domain's images, then the emoji domain's
   (drawings instead of photos: the world changed), with the true labels beside it.
5. Stream it through ``edgert run`` with the adapter adapting on every frame and the frozen
   source memory predicting beside it, then print source-only vs adapted accuracy, fps and the
   adapter's cost, and write the annotated video and a PNG plot of running accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.defaults import BACKBONE, MODELS_DIR
from edge_runtime.numerics import softmax

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# Real photos of ImageNet-like subjects from opencv-doc (Debian package opencv-doc).
PHOTOS = (
    "orange.jpg",
    "apple.jpg",
    "butterfly.jpg",
    "squirrel_cls.jpg",
    "baboon.jpg",
    "fruits.jpg",
    "chicky_512.png",
    "messi5.jpg",
    "licenseplate_motion.jpg",
    "board.jpg",
    "home.jpg",
    "leuvenA.jpg",
)
INT8_MODELS = (("onnx-int8", "int8.onnx"), ("tflite-int8", "int8.tflite"))
EXPORTED_FILES = ("fp32.onnx", "int8.onnx", "int8.tflite")
SOURCE_DOMAIN = "photo"
SHIFTED_DOMAINS = ("clipart", "emoji")
VIDEO_FPS = 25.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        type=Path,
        default=MODELS_DIR,
        help="models directory (default: models; the export goes to models/<name>/)",
    )
    parser.add_argument("--name", default=BACKBONE, help="backbone to export and run")
    parser.add_argument("--adapter", default="memflow", help="adapter to stream with (default: memflow)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="folder for the memory, videos, predictions and plot (default: demo-output)",
    )
    parser.add_argument(
        "--photos", type=Path, default=OPENCV_DATA, help=f"folder holding the step-2 photos (default: {OPENCV_DATA})"
    )
    parser.add_argument("--seed", type=int, default=0, help="order of the images in the shifted video")
    parser.set_defaults(main=main)


def ensure_exported(name: str, models: Path) -> dict[str, Path]:
    """Paths of the exported models, exporting first when any model or its card is missing."""
    from edge_runtime.model.card import card_path

    folder = models / name
    paths = {f: folder / f for f in EXPORTED_FILES}
    if all(p.is_file() and card_path(p).is_file() for p in paths.values()):
        print(f"[1] backbone: {folder}/ already exported ({', '.join(EXPORTED_FILES)})")
        return paths
    print(f"[1] backbone: exporting {name} to {folder}/ (host side, torch; a few minutes the first time)")
    from edge_runtime.export import export_backbone

    exported = export_backbone(name, models)
    return {f: Path(exported[f]) for f in EXPORTED_FILES}


def classify_photos(paths: dict[str, Path], photo_dir: Path) -> None:
    """Top-1 ImageNet label and confidence of each photo from both int8 backbones."""
    from edge_runtime.errors import InputError
    from edge_runtime.model import load_backbone
    from edge_runtime.source.preprocess import read_image

    photos = [photo_dir / p for p in PHOTOS if (photo_dir / p).is_file()]
    if not photos:
        raise InputError(f"no demo photos found in {photo_dir} (install Debian's opencv-doc)")
    images = [read_image(str(p)) for p in photos]
    backbones = [(label, load_backbone(paths[file])) for label, file in INT8_MODELS]
    print(f"[2] what the device sees: {len(photos)} real photos from {photo_dir}")
    top1: dict[str, list[int]] = {label: [] for label, _ in backbones}
    seconds: dict[str, float] = {label: 0.0 for label, _ in backbones}
    print(f"    {'photo':<24}" + "".join(f"{label:<34}" for label, _ in backbones).rstrip())
    for photo, image in zip(photos, images):
        row = f"    {photo.name:<24}"
        for label, backbone in backbones:
            start = time.perf_counter()
            logits = backbone.infer(image).logits
            seconds[label] += time.perf_counter() - start
            p = softmax(logits[0].astype(np.float64))
            k = int(p.argmax())
            top1[label].append(k)
            name = backbone.card.labels[k].split(",")[0]
            row += f"{name[:26]:<26}{p[k]:>5.0%}   "
        print(row.rstrip())
    first, second = (label for label, _ in backbones)
    agree = sum(a == b for a, b in zip(top1[first], top1[second]))
    timing = ", ".join(f"{label} {1000 * seconds[label] / len(photos):.1f} ms" for label, _ in backbones)
    print(
        f"    summary: {len(photos)} photos; {first} and {second} agree on top-1 for {agree}/{len(photos)}; "
        f"mean time per photo (preprocess + inference): {timing}"
    )


def source_memory(model: Path, adapter: str, out: Path) -> Path:
    """The photo-domain source memory for ``adapter``, built unless a valid one with this runtime's
    default parameters is already there (an older runtime's memory still loads, but would not show
    what this one does)."""
    from edge_runtime.adapters import make_adapter
    from edge_runtime.bench.datasets import labelled_images
    from edge_runtime.model.card import load_card
    from edge_runtime.runtime.source_memory import build
    from edge_runtime.state import StateError, read_state

    path = out / f"source-{SOURCE_DOMAIN}-{adapter}.npz"
    try:
        state = read_state(path, model_sha256=load_card(model).sha256, adapter=adapter)
        if state.adapter.get_params() == make_adapter(adapter).get_params():
            print(f"[3] source memory: {path} already built ({state.meta.get('examples')} {SOURCE_DOMAIN} images)")
            return path
        print(f"[3] source memory: {path} was built with other parameters than this runtime's defaults")
    except StateError:
        pass
    print(
        f"[3] source memory: edgert memory build --model {model} --images {SOURCE_DOMAIN} --adapter {adapter} "
        f"--out {path}"
    )
    report = build(model, SOURCE_DOMAIN, adapter, path, domains=labelled_images)
    print(
        f"    {report['examples']} labelled {SOURCE_DOMAIN} images of {len(report['classes'])} classes "
        f"({', '.join(report['classes'])}) memorised in {report['seconds']:.1f} s"
    )
    return path


def shifted_video(out: Path, seed: int) -> tuple[Path, list[dict[str, Any]]]:
    """Write the shifted video (clipart, then emoji; each block in a seeded random order)."""
    import cv2

    from edge_runtime.bench.datasets import load_domain

    path = out / "shifted.avi"
    rng = np.random.default_rng(seed)
    truth: list[dict[str, Any]] = []
    writer = None
    for domain_name in SHIFTED_DOMAINS:
        domain = load_domain(domain_name)
        for i in rng.permutation(len(domain)):
            image = domain.images[i]
            if writer is None:
                size = (image.shape[1], image.shape[0])
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, size)
            writer.write(cv2.resize(image, size) if (image.shape[1], image.shape[0]) != size else image)
            truth.append(
                {
                    "frame": len(truth),
                    "label": domain.classes[domain.labels[i]],
                    "domain": domain_name,
                    "id": domain.ids[i],
                }
            )
    assert writer is not None
    writer.release()
    with open(out / "shifted-truth.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in truth)
    counts = {d: sum(r["domain"] == d for r in truth) for d in SHIFTED_DOMAINS}
    print(
        f"[4] shifted video: {path} ({len(truth)} frames at {VIDEO_FPS:.0f} fps: "
        + ", then ".join(f"{n} {d} images" for d, n in counts.items())
        + "; labels in shifted-truth.jsonl)"
    )
    return path, truth


def plot_running_accuracy(
    path: Path, adapted: np.ndarray, source: np.ndarray, truth: list[dict[str, Any]], adapter: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Running accuracy restarts where the domain changes, so each domain's curve stands on its own.
    domains = [r["domain"] for r in truth[: len(adapted)]]
    starts = [0] + [i for i in range(1, len(domains)) if domains[i] != domains[i - 1]] + [len(domains)]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for j, (lo, hi) in enumerate(zip(starts[:-1], starts[1:])):
        n = np.arange(1, hi - lo + 1)
        frames = np.arange(lo, hi)
        ax.plot(
            frames,
            np.cumsum(adapted[lo:hi]) / n,
            color="tab:blue",
            label=f"adapted ({adapter}, from unlabelled frames)" if j == 0 else None,
        )
        ax.plot(
            frames,
            np.cumsum(source[lo:hi]) / n,
            color="tab:gray",
            label="source-only (frozen photo memory)" if j == 0 else None,
        )
        ax.text(lo, 0.95, f"  {domains[lo]}", fontsize=9, va="top")
        if lo:
            ax.axvline(lo, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("frame")
    ax.set_ylabel("running accuracy within the domain")
    ax.set_ylim(0, 1)
    ax.set_title("Photo-trained memory streaming clipart then emoji")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def stream_and_report(
    model: Path, memory: Path, video: Path, truth: list[dict[str, Any]], adapter: str, out: Path
) -> int:
    from edge_runtime.cli import main as edgert

    state = out / "state"
    shutil.rmtree(state, ignore_errors=True)  # each demo starts from the source memory
    predictions, annotated, summary_file = out / "predictions.jsonl", out / "annotated.mp4", out / "run.json"
    args = [
        "run",
        "--source",
        str(video),
        "--model",
        str(model),
        "--adapter",
        adapter,
        "--memory",
        str(memory),
        "--state",
        str(state),
        "--out",
        str(predictions),
        "--video-out",
        str(annotated),
        "--compare",
        "--json",
        str(summary_file),
    ]
    print("[5] stream: edgert " + " ".join(args))
    code = edgert(args)
    if code:
        return code
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    labels = {r["frame"]: r for r in truth}
    adapted = np.array([r["label"] == labels[r["frame"]]["label"] for r in rows])
    source = np.array([r["source_label"] == labels[r["frame"]]["label"] for r in rows])
    domains = np.array([labels[r["frame"]]["domain"] for r in rows])
    summary = json.loads(summary_file.read_text())
    p50 = summary["p50_ms"]
    print(f"[6] result over {len(rows)} frames (chance {1 / len(set(r['label'] for r in truth)):.0%}):")
    print(f"    {'':<10}{'source-only':>12}{'adapted':>10}{'gain':>8}")
    for name, mask in [(d, domains == d) for d in SHIFTED_DOMAINS] + [("all", np.ones(len(rows), bool))]:
        if mask.any():
            a, s = adapted[mask].mean(), source[mask].mean()
            print(f"    {name:<10}{s:>12.1%}{a:>10.1%}{100 * (a - s):>+7.1f}pt")
    print(
        f"    speed: {summary['fps']:.1f} fps end to end (decode, preprocess, backbone, adapter, source-only "
        f"read-out, annotated video and JSONL writing)"
    )
    print(
        f"    adapt cost: p50 {p50['adapt']:.3f} ms per frame = {p50['adapt'] / p50['backbone']:.1%} of the "
        f"backbone's {p50['backbone']:.1f} ms"
    )
    plot = out / "running-accuracy.png"
    plot_running_accuracy(plot, adapted, source, truth, adapter)
    print(
        f"    wrote {annotated} (annotated video), {predictions}, {plot} (running accuracy), "
        f"and checkpoints in {state}/"
    )
    return 0


def main(args: argparse.Namespace) -> int:
    from edge_runtime.adapters import ADAPTERS
    from edge_runtime.errors import InputError

    if args.adapter not in ADAPTERS:
        raise InputError(f"unknown adapter {args.adapter!r}; known: {', '.join(sorted(ADAPTERS))}")
    paths = ensure_exported(args.name, args.models)
    classify_photos(paths, args.photos)
    args.out.mkdir(parents=True, exist_ok=True)
    memory = source_memory(paths["int8.tflite"], args.adapter, args.out)
    video, truth = shifted_video(args.out, args.seed)
    return stream_and_report(paths["int8.tflite"], memory, video, truth, args.adapter, args.out)
