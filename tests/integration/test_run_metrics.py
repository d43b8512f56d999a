"""``edgert run --metrics``: the Prometheus endpoint scraped during a real run on a real video."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edge_runtime.errors import InputError
from edge_runtime.runtime.metrics import parse_address

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST = DATA / "vtest.avi"


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in the scrape"
    return float(match.group(1))


@pytest.fixture(scope="module")
def dmn_memory(exported, tmp_path_factory) -> Path:
    import cv2

    from edge_runtime.cli import main as edgert

    root = tmp_path_factory.mktemp("metrics")
    for name in ("orange", "baboon", "butterfly"):
        photo = cv2.imread(str(DATA / f"{name}.jpg"))
        (root / "source" / name).mkdir(parents=True)
        for i, (y, x) in enumerate([(0, 0), (20, 20), (40, 10)]):
            cv2.imwrite(str(root / "source" / name / f"{i}.png"), photo[y : y + 300, x : x + 300])
    memory = root / "dmn.npz"
    assert (
        edgert(
            [
                "memory",
                "build",
                "--model",
                str(exported["int8.tflite"]),
                "--images",
                str(root / "source"),
                "--adapter",
                "dmn",
                "--out",
                str(memory),
            ]
        )
        == 0
    )
    return memory


@pytest.mark.skipif(not VTEST.is_file(), reason="needs Debian's opencv-doc")
def test_metrics_move_with_the_frames_of_a_real_run(exported, dmn_memory, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "run",
            "--source",
            str(VTEST),
            "--model",
            str(exported["int8.tflite"]),
            "--adapter",
            "dmn",
            "--memory",
            str(dmn_memory),
            "--state",
            str(tmp_path / "state"),
            "--realtime",
            "--max-frames",
            "40",
            "--quiet",
            "--metrics",
            "0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in proc.stderr:  # the address is printed before the first frame
            if match := re.search(r"metrics on (http://\S+)", line):
                url = match.group(1)
                break
        assert url and url.startswith("http://127.0.0.1:"), "loopback by default"
        scrapes = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if _value(text, "edgert_frames_total") >= 1:
                scrapes.append(text)
            if len(scrapes) == 2 or (scrapes and _value(scrapes[0], "edgert_frames_total") >= 30):
                break
            time.sleep(1.0 if not scrapes else 1.5)
        if len(scrapes) == 1 and proc.poll() is None:
            scrapes.append(urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(scrapes) == 2, "two scrapes while frames were flowing"
    first, second = scrapes
    assert _value(second, "edgert_frames_total") > _value(first, "edgert_frames_total") >= 1
    for stage in ("decode", "backbone", "adapt"):
        count = f'edgert_stage_seconds_count{{stage="{stage}"}}'
        assert _value(second, count) > _value(first, count)
    assert _value(second, "edgert_prediction_entropy_count") == _value(second, "edgert_frames_total")
    assert 0 <= _value(second, "edgert_prediction_entropy_last") <= 1
    assert _value(second, "edgert_fps") > 0
    # DMN's rings take only frames under its write gate: pedestrians are no orange, so they may stay empty
    assert _value(second, "edgert_memory_entries") >= 0 and 0 <= _value(second, "edgert_memory_fill_ratio") <= 1
    assert _value(second, "edgert_checkpoint_age_seconds") > 0
    assert 'edgert_backbone_info{active="cpu",model="int8.tflite",runtime="litert"} 1.0' in second
    assert "40 frames" in out


def test_metrics_address_defaults_to_loopback_and_bad_ones_are_named():
    assert parse_address("9108") == ("127.0.0.1", 9108)
    assert parse_address(":9108") == ("127.0.0.1", 9108)
    for bad in ("camera:9108", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(InputError, match="--metrics"):
            parse_address(bad)
