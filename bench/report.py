"""``edgert bench all``: every benchmark in one run, written to ``bench/results/<host>-<date>/``.

The folder gets ``results.json`` (everything, machine-readable), ``REPORT.md`` (the tables, the
machine they came from, and what was not measured and why) and PNG plots: latency histograms per
backbone, accuracy per task per method, running accuracy over a stream (source-only vs.
adapted), and adaptation cost (log scale) vs. accuracy.

Each section calls another benchmark's functions. A benchmark that is missing (not written yet,
an optional dependency absent) or that fails is recorded as such and the report says so; the
other sections still run. ``--quick`` shrinks every section for tests (about a few minutes on
a small machine).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.bench.figures import write_plots
from edge_runtime.bench.kernel_reference import dmn_vs_numpy, knn_vs_numpy, memflow_vs_torch
from edge_runtime.defaults import model_dir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_MODEL_DIR = model_dir()
PUBLISHED = REPO / "bench" / "REPORT.md"
PLOTS = "plots"  # folder beside the published report holding its PNGs
STREAM_TASK = "photo->clipart"

# other benchmarks included as they are, through their own CLI: name -> (args, quick args)
EXTERNAL = {
    "memflow": ([], ["--classes", "9", "--queries", "300", "--reference-queries", "60", "--rounds", "2"]),
    "knn": ([], ["--sizes", "2000", "--queries", "40", "--removes", "5"]),
    "stream": ([], ["--frames", "120"]),
    "faults": ([], ["--quick"]),
    "fleet": ([], ["--quick"]),
}


class Context:
    """What every section gets: where to write, how big to run, which models."""

    def __init__(self, out: Path, *, quick: bool, model_dir: Path, threads: int | None) -> None:
        self.out = out
        self.quick = quick
        self.model_dir = model_dir
        self.threads = threads
        self.results: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.out / name


# -- sections ------------------------------------------------------------------------------------
def latency_section(ctx: Context) -> dict[str, Any]:
    from edge_runtime.bench.latency import measure

    queries = 60 if ctx.quick else 1024
    results = measure(
        ctx.model_dir, queries=queries, warmup=5 if ctx.quick else 20, threads=ctx.threads, progress=False
    )
    by = {r["name"]: r for r in results}
    ratios = {}
    if "onnx-fp32" in by and "onnx-int8" in by:
        ratios["int8_speedup_vs_fp32_p50"] = by["onnx-fp32"]["p50_ms"] / by["onnx-int8"]["p50_ms"]
    if "tflite-int8" in by and "onnx-int8" in by:
        ratios["tflite_over_onnx_int8_p50"] = by["tflite-int8"]["p50_ms"] / by["onnx-int8"]["p50_ms"]
    return {"results": results, "ratios": ratios}


def energy_section(ctx: Context) -> dict[str, Any]:
    from edge_runtime.bench.energy import detect_meter, measure_energy
    from edge_runtime.bench.latency import sample_inputs
    from edge_runtime.model import load_backbone

    meter, reasons = detect_meter()
    model = ctx.model_dir / "int8.onnx"
    queries = 30 if ctx.quick else 500

    def run() -> int:
        backbone = load_backbone(model, threads=ctx.threads)
        inputs = sample_inputs(backbone)
        backbone.run(inputs[0])
        for i in range(queries):
            backbone.run(inputs[i % len(inputs)])
        return queries

    try:
        result = measure_energy(run, meter, idle_seconds=1.0 if ctx.quick else 5.0, reasons=reasons)
    finally:
        if meter is not None:
            meter.close()
    return {"model": str(model), **result.to_dict(), "summary": result.summary()}


def accuracy_section(ctx: Context) -> dict[str, Any]:
    """The accuracy bench on the features of fp32.onnx and, unless quick, of the device's own
    int8.tflite (an absent model is skipped)."""
    from edge_runtime.bench import accuracy
    from edge_runtime.defaults import bench_model

    parser = argparse.ArgumentParser()
    accuracy.configure(parser)
    argv = ["--json", str(ctx.path("accuracy.json")), "--png", str(ctx.path("accuracy_per_task.png"))]
    models = [bench_model()] + ([] if ctx.quick else [bench_model().with_name("int8.tflite")])
    for model in (m for m in models if m.is_file()):
        argv += ["--model", str(model)]
    args = parser.parse_args(argv + (["--quick"] if ctx.quick else []))
    _quietly(lambda: args.main(args))
    return json.loads(ctx.path("accuracy.json").read_text())


def cost_section(ctx: Context) -> dict[str, Any]:
    from edge_runtime.bench import cost

    parser = argparse.ArgumentParser()
    cost.configure(parser)
    argv = ["--quick"] if ctx.quick else []
    if ctx.threads:
        argv += ["--threads", str(ctx.threads)]
    return cost.run(parser.parse_args(argv), log=lambda m: None)


def stream_accuracy_section(ctx: Context) -> dict[str, Any]:
    """Running accuracy over one task's stream: the source head alone vs. each adapter."""
    from threadpoolctl import threadpool_limits

    from edge_runtime.adapters import ADAPTERS, make_adapter
    from edge_runtime.bench.accuracy import run_stream
    from edge_runtime.bench.tasks import ORDER_SEEDS, load_task, subsample

    task = load_task(STREAM_TASK)
    if ctx.quick:
        task = subsample(task, max_target=150, max_source_per_class=40)
    fold = task.folds[0]
    order = fold.order(ORDER_SEEDS[0])
    stream, labels = fold.target_x[order], fold.target_y[order]
    curves: dict[str, list[float]] = {}
    with threadpool_limits(limits=1):
        for name in ("linear", "memflow", "dmn", "t3a"):
            if name not in ADAPTERS:
                continue
            adapter = make_adapter(name).fit(fold.source_x, fold.source_y, n_classes=task.n_classes)
            adapter.prepare()
            predicted, _ = run_stream(adapter, stream)
            correct = (predicted == labels).astype(np.float64)
            curves["source-only (linear)" if name == "linear" else name] = (
                np.cumsum(correct) / np.arange(1, len(correct) + 1)
            ).tolist()
    return {"task": STREAM_TASK, "order_seed": ORDER_SEEDS[0], "n": len(labels), "running_accuracy": curves}


def numba_section(ctx: Context) -> dict[str, Any]:
    """Numba kernels vs. their references, batch 1, one thread, interleaved query by query."""
    from threadpoolctl import threadpool_limits

    queries = 100 if ctx.quick else 1000
    rows: dict[str, Any] = {}
    missing: dict[str, str] = {}
    with threadpool_limits(limits=1):
        for name, bench in (
            ("memflow adapt vs snntorch/torch reference", memflow_vs_torch),
            ("dmn ring read-out vs plain numpy", dmn_vs_numpy),
            ("knn exact search + vote vs plain numpy brute force", knn_vs_numpy),
        ):
            try:
                rows[name] = bench(queries)
            except ImportError as err:
                missing[name] = f"missing: {err}"
    return {"rows": rows, "missing": missing, "queries": queries}


def external_section(name: str) -> Callable[[Context], dict[str, Any]]:
    """Another ``edgert bench`` command, run through its own CLI with ``--json``."""

    def section(ctx: Context) -> dict[str, Any]:
        import importlib

        from edge_runtime.bench.cli import BENCHMARKS

        if name not in BENCHMARKS:
            raise ModuleNotFoundError(f"`edgert bench {name}` is not registered")
        module = importlib.import_module(BENCHMARKS[name][0])
        parser = argparse.ArgumentParser()
        module.configure(parser)
        full, quick = EXTERNAL[name]
        path = ctx.path(f"{name}.json")
        args = parser.parse_args((quick if ctx.quick else full) + ["--json", str(path)])
        _quietly(lambda: args.main(args))
        return json.loads(path.read_text())

    return section


def _quietly(work: Callable[[], Any]) -> Any:
    """Run a CLI-style function with its stdout captured (the report prints its own summary)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return work()


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "latency": latency_section,
    "energy": energy_section,
    "accuracy": accuracy_section,
    "cost": cost_section,
    "stream_accuracy": stream_accuracy_section,
    "numba_vs_reference": numba_section,
    **{name: external_section(name) for name in EXTERNAL},
}


def run_all(
    out: Path,
    *,
    quick: bool = False,
    model_dir: Path = DEFAULT_MODEL_DIR,
    threads: int | None = None,
    skip: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every section into ``out``; returns the results dict that ``results.json`` holds."""
    from edge_runtime.bench.environment import capture_environment

    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, quick=quick, model_dir=Path(model_dir), threads=threads)
    models = [ctx.model_dir / f for f in ("fp32.onnx", "int8.onnx", "int8.tflite")]
    results: dict[str, Any] = {
        "environment": capture_environment(models, threads=threads),
        "quick": quick,
        "sections": {},
    }
    for name, section in SECTIONS.items():
        if name in skip:
            results["sections"][name] = {"status": "skipped", "reason": "--skip on the command line"}
            continue
        log(f"bench all: {name} ...")
        started = time.perf_counter()
        try:
            data = section(ctx)
            entry = {"status": "ok", "data": data}
        except ModuleNotFoundError as err:
            entry = {"status": "missing", "reason": str(err)}
        except Exception as err:  # a failing benchmark must not take the others down; the report shows it
            entry = {
                "status": "failed",
                "reason": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=4),
            }
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["sections"][name] = entry
        log(f"bench all: {name}: {entry['status']} ({entry['seconds']} s)")
    results["environment"]["load_average_after"] = _load()
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    plots = write_plots(results, out)
    (out / "REPORT.md").write_text(render_markdown(results, plots))
    return results


def _load() -> list[float] | None:
    from edge_runtime.bench.environment import load_average

    return load_average()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- Markdown ------------------------------------------------------------------------------------
def render_markdown(results: dict[str, Any], plots: dict[str, str], image_prefix: str = "") -> str:
    """The report: machine first, then each section's table or why it is absent."""
    from edge_runtime.bench.environment import environment_markdown

    env = results["environment"]
    s = results["sections"]
    img = lambda key, alt: f"\n![{alt}]({image_prefix}{plots[key]})\n" if key in plots else ""  # noqa: E731
    out = [
        f"# edge_runtime benchmark report: `{env['host']}`",
        "",
        f"All figures below were measured on **{env['host']}** ({env['cpu_model']}, {env['cpu_count']} CPUs) "
        f"on {env['time_utc']}{' in --quick mode (reduced sizes)' if results['quick'] else ''}. "
        "Ratios are measured side by side in one run; absolute times are this machine's only.",
        "Regenerate: `edgert bench all` (writes `bench/results/<host>-<date>/`).",
        "",
        "## Machine",
        "",
        environment_markdown(env),
        f"- load average after the run: {env.get('load_average_after')}",
        "",
    ]

    out += ["## Latency (single-stream, batch 1)", ""]
    if _ok(s, "latency"):
        out += ["| backbone | queries | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|---:|"]
        for r in s["latency"]["data"]["results"]:
            out.append(
                f"| {r['name']} | {r['queries']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} |"
            )
        for k, v in s["latency"]["data"]["ratios"].items():
            out.append(f"\n{k}: **{v:.2f}**")
        out.append(img("latency", "latency histograms"))
    else:
        out += [_absent(s, "latency"), ""]

    out += ["## Energy", ""]
    if _ok(s, "energy"):
        e = s["energy"]["data"]
        if e["status"] == "measured":
            out += [
                f"- {e['joules_per_inference'] * 1e3:.3f} mJ per inference ({e['model']}), net of an idle baseline of "
                f"{e['idle_watts']:.2f} W; {e['inferences']} inferences in {e['run_seconds']:.1f} s",
                f"- meter: {e['meter_detail']}, sampled at {e['sample_rate_hz']:g} Hz ({e['samples']} samples)",
                "",
            ]
        else:
            out += [f"**Not measured**: {e['reason']}", ""]
    else:
        out += [_absent(s, "energy"), ""]

    out += ["## Adaptation cost: Tent (backprop) vs. gradient-free adapters", ""]
    if _ok(s, "cost"):
        from edge_runtime.bench.cost import cost_markdown, gain_and_cost_markdown, tent_markdown

        c = s["cost"]["data"]
        setup = c["setup"]
        out += [
            f"Same EfficientNet-Lite0 (torch fp32), same run, {setup['samples']} target images of {setup['target']} "
            f"x {setup['rounds']} interleaved rounds, source head fitted on {setup['source_samples']} {setup['source']} "
            f"images; torch threads {setup['threads']}. {c['protocol']}.",
            "",
            cost_markdown(c),
            "",
        ]
        tent = c["ratio_to_tent"]
        for m in ("memflow", "dmn", "t3a"):
            if m in tent:
                out.append(
                    f"- {m}: adaptation cost = **{100 * tent[m]:.3g}%** of Tent's at batch 1 "
                    f"(target: at most 1% for MemFlow)"
                    if m == "memflow"
                    else f"- {m}: adaptation cost = **{100 * tent[m]:.3g}%** of Tent's at batch 1"
                )
        out += [
            "",
            "Peak memory: *torch* = bytes autograd saves for backward + gradients + optimiser state of one "
            "step (exact); *traced* = tracemalloc peak of the adapter calls (numpy/Python; not inside Numba "
            "kernels); *state* = the adapter's state arrays; *RSS* = process high-water-mark growth over the "
            "work (VmHWM reset; allocator reuse can make it read low).",
            "",
        ]
        if c.get("accuracy"):
            a = c["accuracy"]
            p = a["protocol"]
            out += [
                "### Accuracy on the accuracy bench's tasks, same images for every method",
                "",
                f"Up to {p['target_limit_per_fold']} target images per task fold (stratified draw, seed {p['seed']}), "
                f"stream order seed {p['order_seed']}, source head on up to {p['source_per_class']} images per "
                f"class. Tent: {p['tent']}. Retrain-last-layer: {p['retrain-last-layer']}.",
                "",
                tent_markdown(a),
                "",
                img("accuracy_tent", "accuracy per task, Tent vs adapters"),
                "### Gain and cost together",
                "",
                gain_and_cost_markdown(c, a),
                "",
                img("cost_vs_accuracy", "cost vs accuracy"),
            ]
    else:
        out += [_absent(s, "cost"), ""]

    out += ["## Accuracy under domain shift (accuracy bench, cached backbone features)", ""]
    if _ok(s, "accuracy"):
        from edge_runtime.bench.accuracy import markdown_table

        a = s["accuracy"]["data"]
        methods = list(dict.fromkeys(m for row in a["tasks"].values() for m in row))
        out += [f"Protocol: {json.dumps(a.get('protocol', {}))}", ""]
        for run in a.get("models", [a]):
            if "model" in run:
                out += [f"### Features of {Path(run['model']).parent.name}/{Path(run['model']).name}", ""]
            out += [markdown_table(run["tasks"], methods, run["summary"]), ""]
        out += [img("accuracy", "accuracy per task per method")]
    else:
        out += [_absent(s, "accuracy"), ""]

    out += ["## Running accuracy over a stream", ""]
    if _ok(s, "stream_accuracy"):
        d = s["stream_accuracy"]["data"]
        finals = ", ".join(f"{k} {100 * v[-1]:.1f}%" for k, v in d["running_accuracy"].items())
        out += [
            f"{d['task']}, fold 0, {d['n']} target samples, order seed {d['order_seed']}: final {finals}.",
            img("stream_accuracy", "running accuracy"),
        ]
    else:
        out += [_absent(s, "stream_accuracy"), ""]

    out += ["## Numba vs. reference implementations (batch 1, one thread, interleaved)", ""]
    if _ok(s, "numba_vs_reference"):
        d = s["numba_vs_reference"]["data"]
        out += [
            "| kernel | Numba p50 µs | reference p50 µs | speed-up | max abs diff | reference | data |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for name, r in d["rows"].items():
            out.append(
                f"| {name} | {r['numba_p50_us']:.1f} | {r['reference_p50_us']:.1f} | {r['speedup']:.1f}x | "
                f"{r['max_abs_diff']:.2e} | {r['reference']} | {r['data']} |"
            )
        out += [f"- {k}: {v}" for k, v in d["missing"].items()]
        out.append("")
    else:
        out += [_absent(s, "numba_vs_reference"), ""]

    if _ok(s, "faults"):
        from edge_runtime.bench.faults import faults_markdown

        out += [faults_markdown(s["faults"]["data"])]
    else:
        out += ["## Faults and load (bridge)", "", _absent(s, "faults"), ""]

    if _ok(s, "fleet"):
        from edge_runtime.bench.fleet import markdown as fleet_markdown

        out += [fleet_markdown(s["fleet"]["data"])]
    else:
        out += ["## Fleet memory (MQTT)", "", _absent(s, "fleet"), ""]

    out += ["## Other benchmarks", ""]
    for name in (n for n in EXTERNAL if n not in ("faults", "fleet")):
        if _ok(s, name):
            out.append(
                f"- `edgert bench {name}`: ran; figures in `{name}.json` of the results folder"
                f"{': ' + _highlights(name, s[name]['data']) if _highlights(name, s[name]['data']) else ''}"
            )
        else:
            out.append(f"- `edgert bench {name}`: {_absent(s, name)}")
    return "\n".join(out) + "\n"


def _highlights(name: str, data: dict[str, Any]) -> str:
    """A line of the figures that matter from another bench's JSON, where its shape is known."""
    try:
        if name == "memflow":
            return "; ".join(
                f"{k} classes: adapt p50 {r['numba']['p50_us']:.1f} µs (quietest round "
                f"{r['numba_round_p50_us']['quietest']:.1f} µs), {r['speedup_p50']:.0f}x the torch reference"
                for k, r in data["per_classes"].items()
            )
        if name == "knn":
            return "; ".join(
                f"{r['entries']} entries: recall@k {r['recall_at_k']:.3f}, exact/ANN {r['speed_ratio_exact_over_ann_p50']:.1f}x"
                for r in data["search"].values()
            )
    except (KeyError, TypeError, AttributeError):
        return ""
    return ""


def _ok(sections: dict[str, Any], name: str) -> bool:
    return sections.get(name, {}).get("status") == "ok"


def _absent(sections: dict[str, Any], name: str) -> str:
    entry = sections.get(name, {"status": "missing", "reason": "not run"})
    return f"**Not measured** ({entry['status']}: {entry.get('reason', '')})"


def default_out() -> Path:
    return RESULTS / f"{socket.gethostname()}-{time.strftime('%Y-%m-%d', time.gmtime())}"


def publish(out: Path, target: Path = PUBLISHED) -> Path:
    """Write the report to ``target`` (``bench/REPORT.md``) with its plots copied beside it into
    ``plots/`` (committed with it: ``bench/results/`` is not), replacing a previous report's."""
    results = json.loads((out / "results.json").read_text())
    plots = {p.stem: p.name for p in out.glob("*.png")}
    keyed = {
        "latency": "latency_histograms",
        "accuracy": "accuracy_per_task",
        "accuracy_tent": "accuracy_per_task_tent",
        "stream_accuracy": "running_accuracy",
        "cost_vs_accuracy": "cost_vs_accuracy",
    }
    available = {k: plots[v] for k, v in keyed.items() if v in plots}
    folder = target.parent / PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    for name in available.values():
        shutil.copyfile(out / name, folder / name)
    target.write_text(render_markdown(results, available, image_prefix=f"{PLOTS}/"))
    return target


# -- CLI -----------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/<host>-<date>)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="exported backbones (default export)")
    parser.add_argument("--threads", type=int, default=None, help="threads for the backbone runtimes and torch")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="reduced sizes everywhere (for tests)")
    parser.add_argument("--publish", action="store_true", help="also write the report to bench/REPORT.md")
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from edge_runtime.errors import InputError

    skip = tuple(s for s in args.skip.split(",") if s)
    unknown = [s for s in skip if s not in SECTIONS]
    if unknown:
        raise InputError(f"unknown section(s) {', '.join(unknown)} in --skip; known: {', '.join(SECTIONS)}")
    out = args.out or default_out()
    results = run_all(out, quick=args.quick, model_dir=args.model_dir, threads=args.threads, skip=skip)
    missing = {k: v["status"] for k, v in results["sections"].items() if v["status"] != "ok"}
    print(f"report: {out / 'REPORT.md'}")
    if missing:
        print("not measured: " + ", ".join(f"{k} ({v})" for k, v in missing.items()))
    if args.publish:
        print(f"published: {publish(out)}")
    return 0


__all__ = ["SECTIONS", "configure", "main", "publish", "render_markdown", "run_all", "write_plots"]
