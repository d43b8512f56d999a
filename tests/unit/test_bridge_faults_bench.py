"""``edgert bench faults`` at a tiny size: every part runs against real server processes and the
report section is written (and rewritten in place, not appended twice)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_runtime.bench import faults


def test_numbers_survive_normalisation() -> None:
    from edge_runtime.adapters.base import as_features

    rng = np.random.default_rng(0)
    x = np.stack([faults.numbered(t, rng) for t in (1, 977, 99_999)])
    assert faults.numbers_of(as_features(x)).tolist() == [1, 977, 99_999]


def test_ledger_counts_only_acknowledged_operations() -> None:
    ledger = faults.Acknowledged()
    ledger.acked, ledger.forgotten = {1, 2, 3}, {3}
    ledger.unsure_teach, ledger.unsure_forget = {4}, {2}
    # 2's FORGET was in flight (either way is right), 4's TEACH landed, 1 is missing: one loss.
    assert ledger.reconcile({4: 40}) == (1, 0)
    assert ledger.acked == {1, 2, 3, 4} and ledger.forgotten == {2, 3}
    assert ledger.reconcile({1: 10, 3: 30, 4: 40, 7: 70}) == (1, 1)  # 3 came back; 7 was never taught


def test_a_tiny_run_of_every_part_and_its_report(tmp_path: Path) -> None:
    log = lambda line: None  # noqa: E731
    results = {"quick": True, "host": os.uname().nodename, "time_utc": "now", "seconds": 1.0,
               "kills": faults.kill_trials(tmp_path, 1, 0, log),
               "load": faults.load_test(tmp_path, 6, 10, 20, 50.0, log),
               "fuzz": faults.fuzz(tmp_path, 300, None, 0, log),
               "auth": faults.auth_overhead(tmp_path, 20),
               "journal": faults.journal_cost(tmp_path, 20, teachers=4)}
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
