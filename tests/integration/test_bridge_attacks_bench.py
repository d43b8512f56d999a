"""The attack scenarios' report rows (bench/attacks.py), and the fuzz part run small for real."""

from __future__ import annotations

from edge_runtime.bench.attacks import attacks_markdown, payload_fuzz
from edge_runtime.bench.faults import faults_markdown


def test_attack_rows_and_the_attacks_only_section() -> None:
    attacks = {
        "disk": {"skipped": "not root: cannot mount a tmpfs"},
        "junk": {"teaches": 100, "acknowledged": 100, "applied": 100, "applied_twice": 0, "junk_bursts": 5, "drops": 2},
        "flood": {
            "strangers": 256,
            "flooders": 2,
            "p99_ratio": 1.5,
            "p99_flooded_ms": 3.0,
            "p99_alone_ms": 2.0,
            "rss_growth_mb": 4.0,
            "alive": True,
        },
        "payloads": {
            "fleet_payloads": 10,
            "thread_deaths": 0,
            "memory_changed": False,
            "hellos": 10,
            "hello_crashes": 0,
        },
        "base": {
            "refused": {"dim": True, "classes": True, "adapter": True},
            "intact": True,
            "items_after": 20,
            "items_taught": 20,
        },
    }
    rows = attacks_markdown(attacks)
    assert len(rows) == 7 and rows[0][1].startswith("skipped: not root")
    text = faults_markdown({"quick": True, "host": "vm", "time_utc": "now", "seconds": 1.0, "attacks": attacks})
    assert "--attacks-only --quick" in text and "100 / 100; 0" in text and "refused; intact" in text


def test_payload_fuzz_small_run_kills_no_thread_and_changes_no_memory() -> None:
    result = payload_fuzz(200, 1, lambda line: None)
    assert result["thread_deaths"] == 0 and result["hello_crashes"] == 0 and not result["memory_changed"]
