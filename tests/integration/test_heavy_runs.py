"""Unit-level checks too heavy for the unit tier (real server processes, the default 1280-d MemFlow)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_runtime.adapters.memflow import MemFlow
from edge_runtime.bench import faults
from edge_runtime.fleet.ledger import Ledger
from edge_runtime.fleet.payload import encode

KEY = bytes(range(32))


def test_a_tiny_run_of_every_part_and_its_report(tmp_path: Path) -> None:
    log = lambda line: None  # noqa: E731
    results = {
        "quick": True,
        "host": os.uname().nodename,
        "time_utc": "now",
        "seconds": 1.0,
        "kills": faults.kill_trials(tmp_path, 1, 0, log),
        "load": faults.load_test(tmp_path, 6, 10, 20, 50.0, log),
        "fuzz": faults.fuzz(tmp_path, 300, None, 0, log),
        "auth": faults.auth_overhead(tmp_path, 20),
        "journal": faults.journal_cost(tmp_path, 20, teachers=4),
    }
    kills, load, fuzz = results["kills"], results["load"], results["fuzz"]
    assert kills["trials"] == 3 and kills["acknowledged_ops"] > 0
    assert kills["acknowledged_lost"] == 0 and kills["unloadable_states"] == 0 and kills["unclean_exits"] == 0
    assert load["replies"] == load["requests_sent"] and load["refused_beyond_cap"]
    assert fuzz["crashes"] == 0 and fuzz["hangs"] == 0 and fuzz["internal"] == 0, fuzz["internal_examples"]
    assert sum(fuzz["replies"].values()) > 0 and "BAD_MAC" in fuzz["replies"]
    assert results["journal"]["fsyncs_per_concurrent_teach"] is not None
    report = tmp_path / "REPORT.md"
    report.write_text("# report\n\n## Latency\n\nfigures\n\n## Faults and load (bridge)\n\nold\n\n## Other\n\nmore\n")
    section = faults.faults_markdown(results)
    faults.write_section(report, section)
    faults.write_section(report, section)
    text = report.read_text()
    assert text.count("## Faults and load (bridge)") == 1 and "old" not in text
    assert text.index("## Latency") < text.index("| acknowledged TEACH/FORGET lost") < text.index("## Other")


def test_one_class_per_delta_fits_64_kib_for_the_default_memflow():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(90, 1280)) + 2).astype(np.float32)
    model = MemFlow().fit(x, np.arange(90) % 9, 9)
    ledger = Ledger("a", {"source": np.zeros_like(model.statistics()["source"])})
    ledger.record(model.taught_statistics(x[:9], np.arange(9)))
    chunks = ledger.take(64 * 1024)
    header = {"kind": "delta", "device": "a", "seq": 1, "model": "f" * 64, "memory": "f" * 64, "t": 0.0}
    sizes = [len(encode(header, arrays, KEY)) for _, arrays in chunks]
    assert len(sizes) == 2 and max(sizes) <= 64 * 1024
    assert sorted(np.concatenate([a["source.classes"] for _, a in chunks]).tolist()) == list(range(9))
