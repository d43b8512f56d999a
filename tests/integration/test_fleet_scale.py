"""``edgert bench fleet --parts scale``: simulated devices with real MQTT clients on a real Mosquitto.

A small fleet (30 devices in 2 processes, a 3-second teaching window) must converge, exactly,
with every update applied once; the Markdown and the plot are written.
"""

from __future__ import annotations

import json

from edge_runtime.cli import main as edgert


def test_scale_bench_converges_exactly_and_counts_every_update_once(tmp_path):
    out = tmp_path / "fleet.json"
    assert (
        edgert(
            [
                "bench",
                "fleet",
                "--parts",
                "scale",
                "--devices",
                "30",
                "--scale-window",
                "3",
                "--scale-rate",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    scale = json.loads(out.read_text())["scale"]
    (row,) = scale["rows"]
    assert row["connected"] == 30 and row["converged"] and row["exact"] and row["counts_equal"]
    assert row["taught"] == 12 and row["updates_published"] >= 1 and row["rejected"] == 0
    # every published update applied once by each of the 29 other devices: nothing lost, nothing twice
    assert row["outcomes"]["applied"] == 29 * row["updates_published"] and "gap" not in row["outcomes"]
    assert row["outcomes"].get("duplicate", 0) == 0 and row["convergence_s"] is not None
    assert row["merge_ms"]["n"] == row["outcomes"]["applied"] + row["outcomes"].get("resynced", 0)
    assert (tmp_path / "plots" / "fleet_scale.png").stat().st_size > 10_000
