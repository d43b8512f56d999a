"""``edgert bench all`` on a quick run: results.json, REPORT.md and plots, missing benches reported."""

from __future__ import annotations

import json
import re

import pytest

from edge_runtime.bench import report

CHEAP = ("latency", "energy", "stream_accuracy", "numba_vs_reference")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, exported):
    out = tmp_path_factory.mktemp("results")
    sections = dict(report.SECTIONS)

    def not_written(ctx):
        import edge_runtime.bench.not_a_benchmark  # noqa: F401  (absent on purpose)

    def broken(ctx):
        raise RuntimeError("the meter caught fire")

    # The heavy sections have tests of their own; here: the cheap real ones, plus one bench that
    # does not exist and one that fails, which the report must name instead of stopping.
    report.SECTIONS.clear()
    report.SECTIONS.update({k: sections[k] for k in CHEAP})
    report.SECTIONS.update({"not_written": not_written, "broken": broken})
    try:
        results = report.run_all(out, quick=True, model_dir=exported["int8.onnx"].parent, threads=1, log=lambda m: None)
    finally:
        report.SECTIONS.clear()
        report.SECTIONS.update(sections)
    return out, results


def test_results_json_holds_every_section_and_the_machine(quick_run):
    out, results = quick_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["environment"]["cpu_count"] >= 1 and saved["environment"]["models"]
    for name in CHEAP:
        assert saved["sections"][name]["status"] == "ok", saved["sections"][name].get("traceback")
    assert saved["sections"]["not_written"]["status"] == "missing"
    assert saved["sections"]["broken"]["status"] == "failed"
    assert "caught fire" in saved["sections"]["broken"]["reason"]
    latency = {r["name"] for r in saved["sections"]["latency"]["data"]["results"]}
    assert {"onnx-fp32", "onnx-int8"} <= latency


def test_markdown_names_the_machine_and_what_was_not_measured(quick_run):
    out, results = quick_run
    text = (out / "REPORT.md").read_text()
    env = results["environment"]
    assert env["host"] in text and env["cpu_model"] in text
    assert "## Latency" in text and "onnx-int8" in text
    energy = results["sections"]["energy"]["data"]
    if energy["status"] != "measured":
        assert "**Not measured**" in text.split("## Energy")[1].split("##")[0]
    # Sections that were not run (cost, accuracy) or are missing say so rather than vanish.
    assert "Not measured** (missing" in text.split("## Adaptation cost")[1].split("##")[0]
    numba = text.split("## Numba vs. reference")[1].split("##")[0]
    assert "memflow adapt vs snntorch/torch reference" in numba


def test_plots_are_written(quick_run):
    out, _ = quick_run
    for name in ("latency_histograms.png", "running_accuracy.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_publish_puts_the_plots_beside_the_report(quick_run, tmp_path):
    out, _ = quick_run
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "old_plot.png").write_bytes(b"stale")
    published = report.publish(out, tmp_path / "REPORT.md")
    text = published.read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert "plots/running_accuracy.png" in links and len(links) >= 2
    for link in links:  # every image the report shows is a file beside it, not in bench/results/
        assert (tmp_path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "plots" / "old_plot.png").exists()
