"""``edgert bench cost``: what adaptation costs per instance, backprop (Tent) vs. gradient-free heads.

One process, one EfficientNet-Lite0 (the torch module the exporter builds), one stream of real
target images, every method timed in interleaved rounds so that machine load hits all alike:

- ``forward``: the shared inference forward pass (eval mode, no autograd), batch 1 and 16;
- ``tent-b1`` / ``tent-b16``: Tent (Wang et al., ICLR 2021): BatchNorm affine parameters only,
  BatchNorm on the batch's statistics, entropy loss, one SGD step per batch;
- ``retrain-last-layer``: SGD on the head's own pseudo-labels (cross-entropy to its argmax),
  one step per instance, on the features of the shared forward pass;
- the gradient-free adapters of the ``ADAPTERS`` registry (``memflow``, ``dmn``, ``t3a``; any not
  registered is skipped and the output says so): ``adapt()`` on the shared forward's features.

Per-instance **adaptation cost** is the work beyond the shared forward pass: Tent's forward with
autograd + backward + step, minus the plain forward at the same batch size; the whole head
step for retrain-last-layer; the whole ``adapt()`` call for an adapter. **Total** adds the
shared forward back. Both are medians over all instances and rounds (robust to a busy
machine's spikes); ``ratio_to_tent`` divides adaptation costs by Tent's at batch 1.

The task head for Tent and retrain-last-layer is the source ``linear`` head (logistic
regression over L2-normalised features, L2 strength cross-validated on the source), the same
head the gradient-free adapters start from, so all methods adapt the same source model.

Tent's hyperparameters are the paper's ImageNet ones (SGD, momentum 0.9, lr 0.00025 at batch
64) scaled linearly with the batch size; nothing is chosen on target data. In Tent every
BatchNorm normalises by the current batch's statistics; the rest of the network stays in eval
mode (EfficientNet's drop-connect would otherwise drop residual branches at random).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edge_runtime.bench.cost_data import (
    domain_split,
    fit_adapter,
    forward_features,
    one_blas_thread,
    source_head,
    stratified_subset,
    unit_rows,
)
from edge_runtime.bench.tent import (
    RETRAIN_LR,
    TENT_LR_AT_64,
    TENT_MOMENTUM,
    RetrainLastLayer,
    Tent,
    build_classifier,
    torch_preprocessor,
    torch_step_bytes,
)
from edge_runtime.errors import InputError

if TYPE_CHECKING:  # torch is imported inside functions only: listing benchmarks stays cheap
    import torch

GRADIENT_FREE = ("memflow", "dmn", "t3a")
# --quick: samples (two Tent batches of 16), interleaved rounds (so each method goes first once),
# target images per accuracy fold
QUICK = (32, 2, 16)
SOURCE_DOMAIN = "photo"
TARGET_DOMAIN = "clipart"


# -- timing --------------------------------------------------------------------------------------
class Timings:
    """Per-instance milliseconds by method, gathered over interleaved rounds."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}

    def add(self, method: str, seconds: float, instances: int = 1) -> None:
        self.ms.setdefault(method, []).append(seconds * 1e3 / instances)

    def median(self, method: str) -> float:
        return statistics.median(self.ms[method])

    def summary(self, method: str) -> dict[str, float]:
        values = sorted(self.ms[method])
        return {
            "median_ms": statistics.median(values),
            "mean_ms": statistics.fmean(values),
            "p90_ms": values[min(len(values) - 1, int(0.9 * len(values)))],
            "measurements": len(values),
        }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_cost(
    *,
    samples: int = 64,
    source_per_class: int = 20,
    rounds: int = 3,
    seed: int = 0,
    threads: int | None = None,
    methods: tuple[str, ...] = GRADIENT_FREE,
    backbone: str = "efficientnet-lite0",
    source: str = SOURCE_DOMAIN,
    target: str = TARGET_DOMAIN,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Time every method on the same target stream; see the module docstring for the protocol."""
    import torch

    from edge_runtime.export.models import build_torch_model

    if samples < 16:
        raise InputError(f"--samples must be at least 16 (one batch of Tent at batch 16), got {samples}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    log(f"cost: building {backbone} in torch and reading {source} -> {target} images")
    model = build_torch_model(backbone)
    src_data = domain_split(source, None, seed, backbone, per_class=source_per_class)
    n_classes = len(src_data.classes)
    tgt = domain_split(target, samples - samples % 16, seed + 1, backbone)
    if tuple(tgt.classes) != tuple(src_data.classes):
        raise InputError(f"{source} and {target} do not share classes: {src_data.classes} vs {tgt.classes}")
    src_features = forward_features(model, src_data.rows)
    weight, bias, l2 = source_head(src_features, src_data.labels, n_classes)
    tgt_features = forward_features(model, tgt.rows)

    adapters: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in methods:
        adapter, why = fit_adapter(name, src_features, src_data.labels, n_classes)
        if adapter is None:
            skipped[name] = why
        else:
            adapters[name] = adapter
    log(
        f"cost: {len(tgt.rows)} target images, {len(src_data.rows)} source; adapters: "
        f"{', '.join(adapters) or 'none'}{'; skipped ' + ', '.join(skipped) if skipped else ''}"
    )

    tent1 = Tent(build_classifier(build_torch_model(backbone), weight, bias), batch_size=1)
    tent16 = Tent(build_classifier(build_torch_model(backbone), weight, bias), batch_size=16)
    retrain = RetrainLastLayer(weight, bias)
    x1 = [torch.from_numpy(tgt.rows[i : i + 1]) for i in range(len(tgt.rows))]
    x16 = [torch.from_numpy(tgt.rows[i : i + 16]) for i in range(0, len(tgt.rows), 16)]
    f1 = [torch.from_numpy(tgt_features[i : i + 1]) for i in range(len(tgt_features))]
    f1_unit = [unit_rows(tgt_features[i : i + 1]) for i in range(len(tgt_features))]

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model(x)

    # Warm-up: one call of each, so allocator growth and JIT compilation are not timed.
    forward(x1[0])
    forward(x16[0])
    tent1.step(x1[0])
    tent16.step(x16[0])
    retrain.step(f1[0])
    with one_blas_thread():
        for adapter in adapters.values():
            adapter.adapt(f1_unit[0])

    timings = Timings()
    jobs: dict[str, Callable[[], None]] = {
        "forward-b1": lambda: [timings.add("forward-b1", _timed(lambda x=x: forward(x))) for x in x1],
        "forward-b16": lambda: [timings.add("forward-b16", _timed(lambda x=x: forward(x)), 16) for x in x16],
        "tent-b1": lambda: [timings.add("tent-b1", _timed(lambda x=x: tent1.step(x))) for x in x1],
        "tent-b16": lambda: [timings.add("tent-b16", _timed(lambda x=x: tent16.step(x)), 16) for x in x16],
        "retrain-last-layer": lambda: [
            timings.add("retrain-last-layer", _timed(lambda f=f: retrain.step(f))) for f in f1
        ],
    }

    def adapter_job(name: str, adapter: Any) -> None:
        with one_blas_thread():
            for f in f1_unit:
                timings.add(name, _timed(lambda f=f: adapter.adapt(f)))

    for name, adapter in adapters.items():
        jobs[name] = lambda name=name, adapter=adapter: adapter_job(name, adapter)
    order = list(jobs)
    for r in range(rounds):
        log(f"cost: round {r + 1}/{rounds}")
        for name in order[r % len(order) :] + order[: r % len(order)]:  # rotate who goes first
            jobs[name]()

    memory = measure_memory(model, tent1, tent16, retrain, adapters, x1, x16, f1, f1_unit)
    return summarise(
        timings,
        memory,
        adapters,
        skipped,
        l2=l2,
        samples=len(tgt.rows),
        source_samples=len(src_data.rows),
        rounds=rounds,
        source=source,
        target=target,
        threads=torch.get_num_threads(),
        backbone=backbone,
    )


def measure_memory(
    model,
    tent1: Tent,
    tent16: Tent,
    retrain: RetrainLastLayer,
    adapters: dict[str, Any],
    x1: list,
    x16: list,
    f1: list,
    f1_unit: list,
) -> dict[str, dict[str, Any]]:
    """Peak memory of each method over a few instances, each figure stating how it was taken."""
    import torch

    from edge_runtime.bench.memory import rss_peak, traced_peak

    # The peak of a step is reached within one step: two backbone passes suffice; the cheap
    # heads run over 16 instances so their growing state is seen too.
    few, many = 2, min(len(x1), 16)
    memory: dict[str, dict[str, Any]] = {}

    def forward_few() -> None:
        with torch.inference_mode():
            for x in x1[:few]:
                model(x)

    memory["forward-b1"] = {"rss": rss_peak(forward_few)}
    for name, tent, xs in (("tent-b1", tent1, x1[:few]), ("tent-b16", tent16, x16[:1])):
        memory[name] = {
            "rss": rss_peak(lambda t=tent, xs=xs: [t.step(x) for x in xs]),
            "torch": torch_step_bytes(lambda t=tent, x=xs[0]: t.step(x), tent.params, tent.optimizer),
        }
    memory["retrain-last-layer"] = {
        "rss": rss_peak(lambda: [retrain.step(f) for f in f1[:many]]),
        "torch": torch_step_bytes(lambda: retrain.step(f1[0]), retrain.params, retrain.optimizer),
    }
    for name, adapter in adapters.items():
        state = sum(a.nbytes for a in adapter.state_dict()["arrays"].values())
        memory[name] = {
            "rss": rss_peak(lambda a=adapter: [a.adapt(f) for f in f1_unit[:many]]),
            "traced": traced_peak(lambda a=adapter: [a.adapt(f) for f in f1_unit[:many]]),
            "state_bytes": state,
        }
    return memory


def summarise(
    timings: Timings, memory: dict[str, Any], adapters: dict[str, Any], skipped: dict[str, str], **setup: Any
) -> dict[str, Any]:
    """Adaptation cost, total time and ratios to Tent from the raw timings."""
    fwd1, fwd16 = timings.median("forward-b1"), timings.median("forward-b16")
    adaptation = {
        "tent-b1": timings.median("tent-b1") - fwd1,
        "tent-b16": timings.median("tent-b16") - fwd16,
        "retrain-last-layer": timings.median("retrain-last-layer"),
    }
    total = {
        "tent-b1": timings.median("tent-b1"),
        "tent-b16": timings.median("tent-b16"),
        "retrain-last-layer": fwd1 + adaptation["retrain-last-layer"],
    }
    for name in adapters:
        adaptation[name] = timings.median(name)
        total[name] = fwd1 + adaptation[name]
    tent = adaptation["tent-b1"]
    return {
        "setup": setup,
        "shared_forward_ms": {"b1": fwd1, "b16": fwd16},
        "per_instance_ms": adaptation,
        "total_per_instance_ms": total,
        "ratio_to_tent": {m: v / tent for m, v in adaptation.items()},
        "total_ratio_to_tent": {m: v / total["tent-b1"] for m, v in total.items()},
        "timings": {m: timings.summary(m) for m in timings.ms},
        "peak_memory": memory,
        "skipped": skipped,
        "protocol": (
            "per-instance medians over all instances and rounds, methods interleaved round by round; "
            "adaptation = work beyond the shared eval forward at the same batch size; torch runs on "
            f"{setup.get('threads')} thread(s), the gradient-free adapters on one BLAS thread (as on a "
            "device), which can only favour Tent"
        ),
    }


def cost_markdown(result: dict[str, Any]) -> str:
    """The cost table: adaptation and total per instance, ratio to Tent, peak memory."""
    lines = [
        "| method | adaptation ms/instance | total ms/instance | adaptation / Tent b1 | peak memory |",
        "|---|---:|---:|---:|---|",
    ]
    for method, ms in result["per_instance_ms"].items():
        lines.append(
            f"| {method} | {ms:.4f} | {result['total_per_instance_ms'][method]:.2f} | "
            f"{result['ratio_to_tent'][method]:.2e} | {memory_text(result['peak_memory'].get(method, {}))} |"
        )
    fwd = result["shared_forward_ms"]
    lines.append("")
    lines.append(
        f"Shared forward pass (torch fp32, eval): {fwd['b1']:.2f} ms at batch 1, "
        f"{fwd['b16']:.2f} ms/instance at batch 16."
    )
    for name, why in result["skipped"].items():
        lines.append(f"- {name}: not measured ({why})")
    return "\n".join(lines)


def memory_text(entry: dict[str, Any]) -> str:
    parts = []
    if "torch" in entry:
        t = entry["torch"]
        parts.append(f"{_size(t['bytes'])} torch (activations {_size(t['saved_activations'])})")
    if "traced" in entry:
        parts.append(f"{_size(entry['traced']['bytes'])} traced")
    if "state_bytes" in entry:
        parts.append(f"state {_size(entry['state_bytes'])}")
    if "rss" in entry:
        parts.append(f"RSS +{_size(entry['rss']['bytes'])}")
    return "; ".join(parts)


def _size(n: float) -> str:
    """Bytes in the unit that reads best.

    >>> _size(512), _size(3 * 2**20)
    ('512 B', '3.0 MiB')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# -- Tent's accuracy on the accuracy bench's tasks -------------------------------------------------
@dataclass
class ImageFold:
    """The image-level twin of ``tasks.Fold``: rows of the source and target domains, same folds."""

    source: Any  # datasets.Domain
    source_rows: np.ndarray
    target: Any
    target_rows: np.ndarray
    target_labels: np.ndarray  # aligned to the source's classes, for scoring only


def image_folds(task: str) -> tuple[tuple[str, ...], list[ImageFold]]:
    """The folds of an accuracy-bench task over images, built exactly as ``tasks.load_task`` builds
    them over features (same domains, same photo halves, corrupted rows matched by image id)."""
    from edge_runtime.bench.datasets import load_domain
    from edge_runtime.bench.tasks import group_of, photo_halves

    group_of(task)  # refuses unknown names
    source_name, target_name = task.split("->")
    source = load_domain(source_name)
    classes = tuple(source.classes)
    if not target_name.startswith("photo") or (target_name == "photo" and source_name != "photo"):
        target = load_domain(target_name)
        labels = _aligned_labels(target, classes)
        return classes, [ImageFold(source, np.arange(len(source)), target, np.arange(len(target)), labels)]
    if target_name == "photo":
        target, rows = source, np.arange(len(source))
    else:
        target = load_domain(target_name)
        position = {image_id: i for i, image_id in enumerate(target.ids)}
        rows = np.array([position[i] for i in source.ids])  # corrupted row of each clean photo
    labels = _aligned_labels(target, classes)[rows]
    a, b = photo_halves(np.asarray(source.labels))
    return classes, [ImageFold(source, a, target, rows[b], labels[b]), ImageFold(source, b, target, rows[a], labels[a])]


def _aligned_labels(domain: Any, classes: tuple[str, ...]) -> np.ndarray:
    if tuple(domain.classes) == classes:
        return np.asarray(domain.labels, np.int64)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in domain.classes], np.int64)[np.asarray(domain.labels)]


def tent_accuracy(
    tasks: list[str],
    *,
    batch_sizes: tuple[int, ...] = (1, 16),
    adapters: tuple[str, ...] = GRADIENT_FREE,
    target_limit: int | None = 64,
    source_per_class: int = 20,
    order_seed: int = 0,
    seed: int = 0,
    backbone: str = "efficientnet-lite0",
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Online accuracy of Tent on the accuracy bench's tasks, over real images, side by side with
    the source head alone, retrain-last-layer and the gradient-free adapters on the same stream.

    Per fold: the source head (and every adapter) is fitted on up to ``source_per_class`` source
    images per class; the target is a stratified draw of up to ``target_limit`` images (all with
    None) in the stream order ``order_seed`` seeds, as ``tasks.Fold.stream`` orders features.
    Every method predicts each batch before it learns from it; the gradient-free adapters and
    retrain-last-layer see the torch forward's features of the same images, one at a time.
    Accuracies are averaged over folds.
    """
    import copy

    import torch

    from edge_runtime.adapters import ADAPTERS
    from edge_runtime.bench.accuracy import run_stream
    from edge_runtime.bench.tasks import SHIFTED_TASKS
    from edge_runtime.export.models import build_torch_model

    pristine = build_torch_model(backbone)
    prep = torch_preprocessor(backbone)
    present = [a for a in adapters if a in ADAPTERS]
    methods = ["source-only", "retrain-last-layer"] + [f"tent-b{b}" for b in batch_sizes] + present
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for task in tasks:
        classes, folds = image_folds(task)
        per_fold: dict[str, list[float]] = {m: [] for m in methods}
        seen = 0
        for fold in folds:
            src = fold.source_rows[
                stratified_subset(
                    np.asarray(fold.source.labels)[fold.source_rows], None, seed, per_class=source_per_class
                )
            ]
            src_x = np.concatenate([prep(fold.source.images[i]) for i in src])
            src_y = _aligned_labels(fold.source, classes)[src]
            src_features = forward_features(pristine, src_x)
            weight, bias, _ = source_head(src_features, src_y, len(classes))
            pick = stratified_subset(fold.target_labels, target_limit, seed)
            pick = pick[np.random.default_rng([order_seed, len(pick)]).permutation(len(pick))]
            x = np.concatenate([prep(fold.target.images[fold.target_rows[i]]) for i in pick])
            y = fold.target_labels[pick]
            seen += len(y)
            features = forward_features(pristine, x)
            logits = unit_rows(features) @ weight.T + bias
            per_fold["source-only"].append(float((logits.argmax(axis=1) == y).mean()))
            retrain = RetrainLastLayer(weight, bias)
            predicted = [int(retrain.step(torch.from_numpy(features[i : i + 1])).argmax()) for i in range(len(y))]
            per_fold["retrain-last-layer"].append(float((np.array(predicted) == y).mean()))
            for b in batch_sizes:
                tent = Tent(build_classifier(copy.deepcopy(pristine), weight, bias), batch_size=b)
                predicted = np.concatenate(
                    [tent.step(torch.from_numpy(x[i : i + b])).argmax(dim=1).numpy() for i in range(0, len(y), b)]
                )
                per_fold[f"tent-b{b}"].append(float((predicted == y).mean()))
            for name in present:
                adapter, why = fit_adapter(name, src_features, src_y, len(classes))
                if adapter is None:
                    failed[f"{task}: {name}"] = why
                    continue
                with one_blas_thread():
                    predicted, _ = run_stream(adapter, unit_rows(features))
                per_fold[name].append(float((predicted == y).mean()))
        results[task] = {m: {"accuracy": float(np.mean(v))} for m, v in per_fold.items() if v}
        results[task]["n_target"] = seen
        log(f"tent accuracy {task}: " + ", ".join(f"{m} {100 * results[task][m]['accuracy']:.1f}" for m in methods))
    shifted = [t for t in results if t in SHIFTED_TASKS]
    # A mean over shifted tasks only for methods that ran on every one of them (else it misleads).
    summary = {
        m: float(np.mean([results[t][m]["accuracy"] for t in shifted]))
        for m in methods
        if shifted and all(m in results[t] for t in shifted)
    }
    return {
        "tasks": results,
        "methods": methods,
        "mean_shifted_accuracy": summary,
        "skipped": {a: "not registered in edge_runtime.adapters.ADAPTERS" for a in adapters if a not in present},
        "failed": failed,
        "protocol": {
            "target_limit_per_fold": target_limit,
            "source_per_class": source_per_class,
            "order_seed": order_seed,
            "seed": seed,
            "tent": f"SGD momentum {TENT_MOMENTUM}, lr {TENT_LR_AT_64} x batch/64, BN affine only, "
            "entropy loss, one step per batch, predictions before the step's update",
            "retrain-last-layer": f"SGD lr {RETRAIN_LR} on the head's argmax pseudo-labels, batch 1",
        },
    }


def tent_markdown(result: dict[str, Any]) -> str:
    methods = result["methods"]
    lines = ["| task | images | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for task, row in result["tasks"].items():
        lines.append(
            f"| {task} | {row['n_target']} | "
            + " | ".join(f"{100 * row[m]['accuracy']:.1f}" if m in row else "failed" for m in methods)
            + " |"
        )
    if result["mean_shifted_accuracy"]:
        means = result["mean_shifted_accuracy"]
        lines.append(
            "| **mean over shifted tasks** | | "
            + " | ".join(f"**{100 * means[m]:.1f}**" if m in means else "" for m in methods)
            + " |"
        )
    lines += [f"- {k}: {v}" for k, v in result.get("failed", {}).items()]
    return "\n".join(lines)


def gain_and_cost_markdown(cost: dict[str, Any], accuracy: dict[str, Any] | None) -> str:
    """One table: per-instance adaptation cost, its ratio to Tent, and mean accuracy over shifted tasks."""
    means = (accuracy or {}).get("mean_shifted_accuracy", {})
    lines = [
        "| method | adaptation ms/instance | x Tent b1 | mean accuracy, shifted tasks (%) |",
        "|---|---:|---:|---:|",
    ]
    if "source-only" in means:
        lines.append(f"| source-only | 0 | 0 | {100 * means['source-only']:.1f} |")
    for method, ms in cost["per_instance_ms"].items():
        acc = f"{100 * means[method]:.1f}" if method in means else "not run"
        lines.append(f"| {method} | {ms:.4f} | {cost['ratio_to_tent'][method]:.2e} | {acc} |")
    return "\n".join(lines)


def resolve_tasks(text: str | None, quick: bool) -> list[str]:
    """Task names for the accuracy part: the accuracy bench's names and groups, or none."""
    from edge_runtime.bench.accuracy import resolve_tasks as accuracy_tasks

    if text == "none":
        return []
    if text is None and quick:
        return ["photo->clipart"]
    return accuracy_tasks(text, quick=False)


# -- CLI -----------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=64, help="target images timed per round (multiple of 16)")
    parser.add_argument("--source-per-class", type=int, default=20, help="labelled source images per class")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--methods", default=",".join(GRADIENT_FREE), help="gradient-free adapters to compare")
    parser.add_argument(
        "--tasks",
        help="accuracy-bench tasks for Tent's accuracy: names or groups " "(bench, dev, all), or none (default: bench)",
    )
    parser.add_argument(
        "--tent-limit",
        type=int,
        default=64,
        help="target images per task fold for the accuracy part (default 64; 0 = all)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"every method still, side by side, on {QUICK[0]} samples in {QUICK[1]} interleaved "
        f"rounds and one accuracy task of {QUICK[2]} images per fold (about a minute on 2 cores)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(main=main)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The cost bench and Tent's accuracy, as one JSON-able dict (``edgert bench all`` calls this)."""
    methods = tuple(m for m in args.methods.split(",") if m)
    samples, rounds, limit = QUICK if args.quick else (args.samples, args.rounds, args.tent_limit or None)
    result = run_cost(
        samples=samples,
        source_per_class=args.source_per_class,
        rounds=rounds,
        seed=args.seed,
        threads=args.threads,
        methods=methods,
        log=log,
    )
    tasks = resolve_tasks(args.tasks, args.quick)
    if tasks:
        source_per_class = min(args.source_per_class, 10) if args.quick else args.source_per_class
        result["accuracy"] = tent_accuracy(
            tasks, adapters=methods, target_limit=limit, seed=args.seed, source_per_class=source_per_class, log=log
        )
    return result


def main(args: argparse.Namespace) -> int:
    log = (lambda m: None) if args.json else print
    result = run(args, log)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(cost_markdown(result))
    if "accuracy" in result:
        print()
        print(tent_markdown(result["accuracy"]))
        print()
        print(gain_and_cost_markdown(result, result["accuracy"]))
    return 0
