"""The report's figures (matplotlib, PNG): accuracy per task, cost vs accuracy, latency, running accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """PNG files for every section that has data; returns plot name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = {k: v["data"] for k, v in results["sections"].items() if v["status"] == "ok"}
    plots: dict[str, str] = {}

    if "latency" in sections:
        runs = sections["latency"]["results"]
        fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
        for ax, run in zip(axes[0], runs):
            if run.get("samples_ms"):
                ax.hist(run["samples_ms"], bins=40, color="tab:blue")
                ax.set_ylabel("queries")
            else:  # the latency bench returned percentiles only
                names = ["p50_ms", "p90_ms", "p99_ms", "mean_ms"]
                ax.bar([n[:-3] for n in names], [run[n] for n in names], color="tab:blue")
                ax.set_ylabel("ms (percentiles: raw latencies not returned)")
            for p, style in (("p50_ms", "-"), ("p99_ms", ":")):
                if run.get("samples_ms"):
                    ax.axvline(run[p], color="k", linestyle=style, label=p[:-3])
            ax.set_title(f"{run['name']} ({run['queries']} queries)", fontsize=9)
            ax.set_xlabel("ms per query, batch 1" if run.get("samples_ms") else "")
        fig.suptitle("Single-stream latency per backbone", fontsize=10)
        fig.tight_layout()
        plots["latency"] = _save(fig, out / "latency_histograms.png")

    if "accuracy" in sections and (out / "accuracy_per_task.png").exists():
        plots["accuracy"] = "accuracy_per_task.png"

    accuracy = sections.get("cost", {}).get("accuracy")
    if accuracy:
        tasks, methods = list(accuracy["tasks"]), accuracy["methods"]
        fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(tasks) * max(1, len(methods) / 4)), 4.5))
        width = 0.8 / len(methods)
        xs = np.arange(len(tasks))
        for i, m in enumerate(methods):
            ax.bar(
                xs + (i - (len(methods) - 1) / 2) * width,
                [100 * accuracy["tasks"][t][m]["accuracy"] for t in tasks],
                width,
                label=m,
            )
        ax.set_xticks(xs)
        ax.set_xticklabels([t.replace("photo->photo-c/", "c/") for t in tasks], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel("online accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Tent vs. gradient-free adapters, same images and stream (torch fp32 features)", fontsize=10)
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        plots["accuracy_tent"] = _save(fig, out / "accuracy_per_task_tent.png")

    if "stream_accuracy" in sections:
        data = sections["stream_accuracy"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, curve in data["running_accuracy"].items():
            ax.plot(
                np.arange(1, len(curve) + 1),
                100 * np.asarray(curve),
                label=name,
                linestyle="--" if name.startswith("source-only") else "-",
            )
        ax.set_xlabel("target samples seen")
        ax.set_ylabel("running accuracy (%)")
        ax.set_title(f"Running accuracy over the {data['task']} stream (order seed {data['order_seed']})", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plots["stream_accuracy"] = _save(fig, out / "running_accuracy.png")

    cost = sections.get("cost")
    if cost and cost.get("accuracy"):
        means = cost["accuracy"]["mean_shifted_accuracy"] or {
            m: float(np.mean([r[m]["accuracy"] for r in cost["accuracy"]["tasks"].values()]))
            for m in cost["accuracy"]["methods"]
        }
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for method, ms in cost["per_instance_ms"].items():
            if method in means and ms > 0:
                ax.scatter(ms, 100 * means[method], s=50)
                ax.annotate(method, (ms, 100 * means[method]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if "source-only" in means:
            ax.axhline(100 * means["source-only"], color="grey", linestyle=":", label="source-only (no adaptation)")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("adaptation cost per instance (ms, log scale)")
        ax.set_ylabel("mean online accuracy (%)")
        ax.set_title("Cost vs. accuracy (same run, same images)", fontsize=10)
        fig.tight_layout()
        plots["cost_vs_accuracy"] = _save(fig, out / "cost_vs_accuracy.png")
    return plots


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
