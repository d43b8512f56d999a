"""Energy meters against fake sysfs trees: counters that advance, wrap around, and files that are missing."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest

from edge_runtime.bench import energy
from edge_runtime.bench.energy import (
    HwmonPowerMeter,
    MeterUnavailable,
    RaplMeter,
    Trace,
    measure_energy,
    parse_pmic_adc,
)


def write_atomic(path: Path, text: str) -> None:
    """As the kernel presents it: a reader never sees a half-written value."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_rapl(root: Path, zones: dict[str, tuple[int, int]]) -> Path:
    """zones: directory name -> (energy_uj, max_energy_range_uj)."""
    for zone, (energy_uj, span) in zones.items():
        d = root / zone
        d.mkdir(parents=True)
        (d / "name").write_text(f"package-{zone.split(':')[1]}\n" if zone.count(":") == 1 else "core\n")
        write_atomic(d / "energy_uj", f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{span}\n")
    return root


def set_energy(root: Path, zone: str, energy_uj: int) -> None:
    write_atomic(root / zone / "energy_uj", f"{energy_uj}\n")


def test_rapl_counts_the_advance_of_each_package_and_ignores_subzones(tmp_path):
    root = make_rapl(
        tmp_path,
        {"intel-rapl:0": (1_000_000, 10**9), "intel-rapl:1": (5_000_000, 10**9), "intel-rapl:0:0": (7_000_000, 10**9)},
    )
    meter = RaplMeter(root)
    assert meter.read() == 0.0
    set_energy(root, "intel-rapl:0", 3_500_000)
    set_energy(root, "intel-rapl:1", 6_000_000)
    set_energy(root, "intel-rapl:0:0", 9_000_000)  # part of package 0: must not be added again
    assert meter.read() == pytest.approx(3.5)
    set_energy(root, "intel-rapl:0", 4_000_000)
    assert meter.read() == pytest.approx(4.0)
    assert "package-0 + package-1" in meter.describe()


def test_rapl_counter_wrap_around_adds_the_wrapped_span(tmp_path):
    span = 262_143_328_850
    root = make_rapl(tmp_path, {"intel-rapl:0": (span - 2_000_000, span)})
    meter = RaplMeter(root)
    set_energy(root, "intel-rapl:0", 500_000)  # wrapped: 2 J to the top, then 0.5 J
    assert meter.read() == pytest.approx(2.5)
    set_energy(root, "intel-rapl:0", 1_500_000)
    assert meter.read() == pytest.approx(3.5)
    # A second wrap in the same run is counted too.
    set_energy(root, "intel-rapl:0", span - 1_000_000)
    set_energy(root, "intel-rapl:0", span - 1_000_000)
    total = meter.read()
    set_energy(root, "intel-rapl:0", 250_000)
    assert meter.read() - total == pytest.approx(1.25)


def test_rapl_missing_files_say_which(tmp_path):
    with pytest.raises(MeterUnavailable, match="no RAPL zones"):
        RaplMeter(tmp_path / "nothing")
    root = make_rapl(tmp_path / "a", {"intel-rapl:0": (0, 10**9)})
    (root / "intel-rapl:0" / "max_energy_range_uj").unlink()
    with pytest.raises(MeterUnavailable, match="max_energy_range_uj"):
        RaplMeter(root)
    root = make_rapl(tmp_path / "b", {"intel-rapl:0": (0, 10**9)})
    meter = RaplMeter(root)
    (root / "intel-rapl:0" / "energy_uj").unlink()
    with pytest.raises(MeterUnavailable, match="energy_uj"):
        meter.read()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_rapl_root_only_counter_names_the_fix(tmp_path):
    root = make_rapl(tmp_path, {"intel-rapl:0": (0, 10**9)})
    (root / "intel-rapl:0" / "energy_uj").chmod(0)
    with pytest.raises(MeterUnavailable, match="root only"):
        RaplMeter(root)


def test_hwmon_ina219_power_and_volts_times_amps(tmp_path):
    other = tmp_path / "hwmon0"
    other.mkdir()
    (other / "name").write_text("k10temp\n")
    ina = tmp_path / "hwmon1"
    ina.mkdir()
    (ina / "name").write_text("ina219\n")
    write_atomic(ina / "power1_input", "2500000\n")  # microwatts
    meter = HwmonPowerMeter(tmp_path)
    assert meter.read() == pytest.approx(2.5)
    write_atomic(ina / "power1_input", "3000000\n")
    assert meter.read() == pytest.approx(3.0)
    (ina / "power1_input").unlink()
    (ina / "in1_input").write_text("5000\n")  # mV
    (ina / "curr1_input").write_text("400\n")  # mA
    assert meter.read() == pytest.approx(2.0)
    (ina / "curr1_input").unlink()
    with pytest.raises(MeterUnavailable, match="unreadable"):
        meter.read()


def test_hwmon_without_a_power_chip_is_unavailable(tmp_path):
    (tmp_path / "hwmon0").mkdir()
    (tmp_path / "hwmon0" / "name").write_text("coretemp\n")
    with pytest.raises(MeterUnavailable, match="no ina219"):
        HwmonPowerMeter(tmp_path)


PI5_OUTPUT = """\
     3V7_WL_SW_A current(0)=0.10000000A
   VDD_CORE_A current(7)=2.50000000A
     EXT5V_V volt(24)=5.12000000V
     3V7_WL_SW_V volt(8)=3.70000000V
   VDD_CORE_V volt(15)=0.80000000V
"""


def test_pi5_pmic_sums_rails_with_both_current_and_voltage():
    assert parse_pmic_adc(PI5_OUTPUT) == pytest.approx(0.1 * 3.7 + 2.5 * 0.8)
    with pytest.raises(MeterUnavailable):
        parse_pmic_adc('error=1 error_msg="Command not registered"')


def test_pi5_meter_runs_the_command(tmp_path):
    script = tmp_path / "fake-vcgencmd"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{PI5_OUTPUT}EOF\n")
    script.chmod(0o755)
    meter = energy.Pi5PmicMeter((str(script), "pmic_read_adc"))
    assert meter.read() == pytest.approx(2.37)
    with pytest.raises(MeterUnavailable, match="not on PATH"):
        energy.Pi5PmicMeter((str(tmp_path / "absent"),))


def test_trace_integrates_power_and_differences_counters():
    power = Trace("power", 10.0, [0.0, 1.0, 3.0], [2.0, 4.0, 4.0])
    assert power.joules() == pytest.approx(3.0 + 8.0)
    assert power.mean_watts() == pytest.approx(11.0 / 3.0)
    counter = Trace("energy", 10.0, [0.0, 1.0, 2.0], [10.0, 11.0, 15.0])
    assert counter.joules() == pytest.approx(5.0)


def test_energy_per_inference_from_an_advancing_counter_with_a_wrap(tmp_path):
    span = 10_000_000
    root = make_rapl(tmp_path, {"intel-rapl:0": (span - 300_000, span)})
    meter = RaplMeter(root)
    state = {"uj": span - 300_000}

    def run() -> int:
        # Each "inference" costs 0.2 J on the fake package; the counter wraps on the second.
        for _ in range(5):
            state["uj"] = (state["uj"] + 200_000) % span
            set_energy(root, "intel-rapl:0", state["uj"])
        return 5

    result = measure_energy(run, meter, idle_seconds=0.05, rate_hz=200)
    assert result.status == "measured"
    assert result.idle_watts == 0.0  # the counter did not move while idle
    assert result.run_joules == pytest.approx(1.0)
    assert result.joules_per_inference == pytest.approx(0.2)
    assert result.sample_rate_hz == 200 and result.samples >= 2


def test_idle_baseline_is_subtracted(tmp_path):
    (tmp_path / "hwmon0").mkdir()
    (tmp_path / "hwmon0" / "name").write_text("ina219\n")
    write_atomic(tmp_path / "hwmon0" / "power1_input", "4000000\n")  # 4 W, idle and busy alike
    result = measure_energy(lambda: 10, HwmonPowerMeter(tmp_path), idle_seconds=0.05, rate_hz=100)
    assert result.status == "measured"
    assert result.idle_watts == pytest.approx(4.0)
    assert result.run_joules > 0
    assert abs(result.net_joules) < 1e-9


def test_no_meter_is_not_measured_and_the_run_is_not_estimated():
    calls = []
    result = measure_energy(lambda: calls.append(1) or 1, None, reasons={"rapl": "no RAPL zones under /x"})
    assert result.status == energy.NOT_MEASURED
    assert result.joules_per_inference is None
    assert "no RAPL zones" in result.reason and "not measured" in result.summary()
    assert calls == []


def test_a_meter_failing_mid_run_spoils_the_figure(tmp_path):
    root = make_rapl(tmp_path, {"intel-rapl:0": (0, 10**9)})
    meter = RaplMeter(root)

    def run() -> int:
        (root / "intel-rapl:0" / "energy_uj").unlink()
        return 1

    result = measure_energy(run, meter, idle_seconds=0.01, rate_hz=100)
    assert result.status == energy.NOT_MEASURED
    assert "energy_uj" in result.reason


def test_detect_meter_reports_why_each_meter_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vcgencmd here
    meter, reasons = energy.detect_meter(["pi5-pmic"])
    assert meter is None and "vcgencmd" in reasons["pi5-pmic"]


def test_doctests():
    assert doctest.testmod(energy).failed == 0


def test_a_failing_run_stops_the_sampler(tmp_path):
    import threading

    root = make_rapl(tmp_path, {"intel-rapl:0": (0, 10**9)})
    before = threading.active_count()

    def run() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_energy(run, RaplMeter(root), idle_seconds=0.01, rate_hz=100)
    assert threading.active_count() == before
