"""Energy meters behind one interface, and energy per inference from a metered run.

A meter is either a cumulative **energy counter** (Intel RAPL powercap: joules since some point,
wrapping at ``max_energy_range_uj``) or an instantaneous **power gauge** (Jetson ``jtop``, the
Raspberry Pi 5 PMIC through ``vcgencmd pmic_read_adc``, an INA219 through hwmon sysfs or I2C).
Both are sampled by one background thread at a stated rate; counters are unwrapped sample to
sample (so several wraps in a long run are all counted), gauges are integrated with the
trapezoid rule.

Energy per inference = (energy over the run - idle power x run time) / inferences, where idle
power is measured just before the run with the same meter at the same rate. Where no meter can
be read the result says "not measured" and why: it never falls back to an estimate.

The board-specific readers sit behind ``EnergyMeter`` (after ExecuTorch's platform layer), each
taking its sysfs root or command as an argument, so they are tested against fake trees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

NOT_MEASURED = "not measured"
DEFAULT_RATE_HZ = 20.0


class MeterUnavailable(Exception):
    """This meter cannot be read on this machine; the message says why."""


class EnergyMeter(ABC):
    """One way of reading a board's power or energy.

    ``kind`` is ``"energy"`` when ``read()`` returns cumulative joules (a counter, already
    unwrapped by the meter) or ``"power"`` when it returns watts now.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["energy", "power"]]

    @abstractmethod
    def read(self) -> float:
        """Joules so far (``kind == "energy"``) or watts now (``kind == "power"``)."""

    def describe(self) -> str:
        """What is metered (domains, rails or device), for the report."""
        return self.name

    def close(self) -> None:
        """Release the device or service behind the meter."""


# -- Intel RAPL ---------------------------------------------------------------------------------
class RaplMeter(EnergyMeter):
    """Intel (and recent AMD) RAPL through ``/sys/class/powercap/intel-rapl:N``.

    Sums the top-level zones (``intel-rapl:0``, ``intel-rapl:1``, ...: one per package; their
    sub-zones ``intel-rapl:0:0`` are parts of the package and would double count). Each zone's
    ``energy_uj`` wraps to 0 after ``max_energy_range_uj``; ``read`` adds the wrapped span, which
    is correct as long as the counter is read at least once per wrap (minutes at full load; the
    sampler reads it many times a second).
    """

    name = "rapl"
    kind = "energy"

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.root = Path(root)
        zones = sorted(p for p in self.root.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not zones:
            raise MeterUnavailable(f"no RAPL zones under {self.root}")
        self._zones: list[Path] = zones
        self._names = [_read_text(z / "name", default=z.name) for z in zones]
        self._ranges: list[int] = []
        for zone in zones:
            try:
                self._ranges.append(int(_read_text(zone / "max_energy_range_uj")))
            except (OSError, ValueError) as err:
                raise MeterUnavailable(f"{zone}/max_energy_range_uj unreadable ({err})") from None
        self._last = self._raw()
        self._total_uj = 0

    def _raw(self) -> list[int]:
        values = []
        for zone in self._zones:
            path = zone / "energy_uj"
            try:
                values.append(int(_read_text(path)))
            except PermissionError:
                # Since Linux 5.10 (CVE-2020-8694) energy_uj is readable by root only.
                raise MeterUnavailable(
                    f"{path} is readable by root only: run as root or " f"chmod o+r {path}"
                ) from None
            except (OSError, ValueError) as err:
                raise MeterUnavailable(f"{path} unreadable ({err})") from None
        return values

    def read(self) -> float:
        now = self._raw()
        for last, new, span in zip(self._last, now, self._ranges):
            self._total_uj += new - last if new >= last else (span - last) + new
        self._last = now
        return self._total_uj * 1e-6

    def describe(self) -> str:
        return f"RAPL powercap, {' + '.join(self._names)} ({self.root})"


# -- hwmon power gauges (INA219 and friends) ------------------------------------------------------
class HwmonPowerMeter(EnergyMeter):
    """An INA2xx power monitor through the kernel's hwmon driver: ``power1_input`` in microwatts.

    Taken from the first ``/sys/class/hwmon/hwmonN`` whose ``name`` is one of ``chips``. With
    only ``in1_input`` (bus mV) and ``curr1_input`` (mA) it multiplies them.
    """

    name = "ina219-hwmon"
    kind = "power"

    def __init__(
        self, root: str | Path = "/sys/class/hwmon", chips: tuple[str, ...] = ("ina219", "ina226", "ina3221")
    ) -> None:
        self.root = Path(root)
        self.chips = chips
        for device in sorted(self.root.glob("hwmon*")):
            chip = _read_text(device / "name", default="")
            if chip in chips:
                self._device = device
                self._chip = chip
                break
        else:
            raise MeterUnavailable(f"no {'/'.join(chips)} under {self.root}")
        self.read()  # refuse now, not mid-run, if the files are unreadable

    def read(self) -> float:
        try:
            if (self._device / "power1_input").exists():
                return int(_read_text(self._device / "power1_input")) * 1e-6
            millivolts = int(_read_text(self._device / "in1_input"))
            milliamps = int(_read_text(self._device / "curr1_input"))
        except (OSError, ValueError) as err:
            raise MeterUnavailable(f"{self._device}: power files unreadable ({err})") from None
        return millivolts * milliamps * 1e-6

    def describe(self) -> str:
        return f"{self._chip} via hwmon ({self._device})"


class Ina219I2CMeter(EnergyMeter):
    """An INA219 read directly over I2C with ``smbus2`` (optional), when no kernel driver is bound.

    Reads the shunt voltage (register 0x01, signed, 10 uV per bit) and the bus voltage (0x02,
    bits 15..3, 4 mV per bit) and computes P = V_bus x V_shunt / R_shunt, so no calibration
    register has to be programmed (and no other user of the chip is disturbed).
    """

    name = "ina219-i2c"
    kind = "power"

    def __init__(self, bus: int = 1, address: int = 0x40, shunt_ohms: float = 0.1) -> None:
        self.bus = bus
        self.address = address
        self.shunt_ohms = shunt_ohms
        try:
            from smbus2 import SMBus  # optional: only on boards with an INA219 wired up
        except ImportError:
            raise MeterUnavailable("smbus2 is not installed (pip install smbus2)") from None
        if not Path(f"/dev/i2c-{bus}").exists():
            raise MeterUnavailable(f"/dev/i2c-{bus} does not exist")
        try:
            self._smbus = SMBus(bus)
            self.read()
        except OSError as err:
            raise MeterUnavailable(f"no INA219 answers at i2c-{bus} 0x{address:02x} ({err})") from None

    def _register(self, register: int) -> int:
        word = self._smbus.read_word_data(self.address, register)
        return ((word & 0xFF) << 8) | (word >> 8)  # SMBus words are little-endian, the INA219 big

    def read(self) -> float:
        return ina219_watts(self._register(0x01), self._register(0x02), self.shunt_ohms)

    def describe(self) -> str:
        return f"INA219 over I2C (bus {self.bus}, 0x{self.address:02x}, shunt {self.shunt_ohms} ohm)"

    def close(self) -> None:
        self._smbus.close()


def ina219_watts(shunt_register: int, bus_register: int, shunt_ohms: float) -> float:
    """Power from raw INA219 shunt and bus voltage registers (16-bit, big-endian already swapped).

    >>> round(ina219_watts(1000, (5000 // 4) << 3, 0.1), 3)  # 10 mV over 0.1 ohm at 5 V
    0.5
    """
    shunt = shunt_register - 0x10000 if shunt_register & 0x8000 else shunt_register
    shunt_volts = shunt * 10e-6
    bus_volts = (bus_register >> 3) * 4e-3
    return bus_volts * shunt_volts / shunt_ohms


# -- Raspberry Pi 5 -----------------------------------------------------------------------------
_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-0-9.eE+]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> float:
    """Total power in watts from ``vcgencmd pmic_read_adc`` output: sum of V x A over the rails.

    The Pi 5 PMIC reports each rail's current (``NAME_A``) and voltage (``NAME_V``); rails with
    only one of the two are skipped. This is the SoC-side supply, not the 5 V input.

    >>> parse_pmic_adc('''
    ...  VDD_CORE_A current(7)=2.00000000A
    ...  EXT5V_V volt(24)=5.10000000V
    ...  VDD_CORE_V volt(15)=0.80000000V''')
    1.6
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match:
            rail, unit, value = match.groups()
            (amps if unit == "A" else volts)[rail] = float(value)
    rails = sorted(set(amps) & set(volts))
    if not rails:
        raise MeterUnavailable("vcgencmd pmic_read_adc printed no rail with both current and voltage")
    return round(sum(amps[r] * volts[r] for r in rails), 9)


class Pi5PmicMeter(EnergyMeter):
    """Raspberry Pi 5 PMIC rails through ``vcgencmd pmic_read_adc`` (about 10 ms per call)."""

    name = "pi5-pmic"
    kind = "power"

    def __init__(self, command: tuple[str, ...] = ("vcgencmd", "pmic_read_adc")) -> None:
        self.command = command
        if shutil.which(command[0]) is None:
            raise MeterUnavailable(f"{command[0]} is not on PATH (not a Raspberry Pi)")
        self.read()

    def read(self) -> float:
        try:
            out = subprocess.run(self.command, capture_output=True, text=True, timeout=5, check=True).stdout
        except (OSError, subprocess.SubprocessError) as err:
            raise MeterUnavailable(f"{' '.join(self.command)} failed ({err})") from None
        return parse_pmic_adc(out)

    def describe(self) -> str:
        return "Raspberry Pi 5 PMIC rails (vcgencmd pmic_read_adc), sum of V x A"


# -- Jetson -------------------------------------------------------------------------------------
class JetsonMeter(EnergyMeter):
    """Jetson board power through jetson-stats (``jtop``), imported only when installed.

    ``jtop`` reports the INA3221 rails; ``power["tot"]["power"]`` is the board total in mW
    (jetson-stats 4.x).
    """

    name = "jetson-jtop"
    kind = "power"

    def __init__(self) -> None:
        try:
            from jtop import jtop  # optional: jetson-stats exists only on Jetson boards
        except ImportError:
            raise MeterUnavailable(
                "jetson-stats is not installed (not a Jetson, or pip install jetson-stats)"
            ) from None
        try:
            self._jtop = jtop()
            self._jtop.start()
        except Exception as err:  # jtop raises its own JtopException when the service is down
            raise MeterUnavailable(f"jtop service not reachable ({err})") from None
        self.read()

    def read(self) -> float:
        try:
            return float(self._jtop.power["tot"]["power"]) * 1e-3
        except (KeyError, TypeError) as err:
            raise MeterUnavailable(f"jtop reports no total power ({err})") from None

    def describe(self) -> str:
        return "Jetson board total through jtop (INA3221 rails)"

    def close(self) -> None:
        self._jtop.close()


# name -> factory, tried in this order by ``detect_meter``
METERS: dict[str, Callable[[], EnergyMeter]] = {
    "rapl": RaplMeter,
    "jetson-jtop": JetsonMeter,
    "pi5-pmic": Pi5PmicMeter,
    "ina219-hwmon": HwmonPowerMeter,
    "ina219-i2c": Ina219I2CMeter,
}


def detect_meter(names: list[str] | None = None) -> tuple[EnergyMeter | None, dict[str, str]]:
    """The first meter that can be read here, and why each one tried before it could not.

    Returns ``(None, reasons)`` when no meter exists: callers report "not measured".
    """
    reasons: dict[str, str] = {}
    for name in names or list(METERS):
        try:
            return METERS[name](), reasons
        except MeterUnavailable as err:
            reasons[name] = str(err)
    return None, reasons


# -- sampling and energy per inference ----------------------------------------------------------
@dataclass
class Trace:
    """Meter samples (seconds since start, value) taken at ``rate_hz``."""

    kind: str
    rate_hz: float
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0

    def joules(self) -> float:
        """Energy over the trace: counter difference, or trapezoid integral of power."""
        if len(self.times) < 2:
            return 0.0
        if self.kind == "energy":
            return self.values[-1] - self.values[0]
        return sum(
            (t1 - t0) * (v0 + v1) / 2
            for t0, t1, v0, v1 in zip(self.times, self.times[1:], self.values, self.values[1:])
        )

    def mean_watts(self) -> float:
        return self.joules() / self.seconds if self.seconds > 0 else 0.0


class Sampler:
    """Reads a meter at ``rate_hz`` on a background thread between ``start()`` and ``stop()``.

    The first and last samples are taken on the caller's thread, exactly at the run's edges.
    """

    def __init__(self, meter: EnergyMeter, rate_hz: float = DEFAULT_RATE_HZ) -> None:
        self.meter = meter
        self.rate_hz = rate_hz
        self._trace = Trace(meter.kind, rate_hz)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def _sample(self, t0: float) -> None:
        with self._lock:
            value = self.meter.read()
            self._trace.times.append(time.perf_counter() - t0)
            self._trace.values.append(value)

    def _loop(self, t0: float) -> None:
        period = 1.0 / self.rate_hz
        try:
            while not self._stop.wait(period):
                self._sample(t0)
        except BaseException as err:  # surfaced by stop(): a meter failing mid-run spoils the figure
            self._error = err

    def start(self) -> "Sampler":
        self._t0 = time.perf_counter()
        self._sample(self._t0)
        self._thread = threading.Thread(target=self._loop, args=(self._t0,), daemon=True)
        self._thread.start()
        return self

    def halt(self) -> None:
        """Stop the sampling thread without a final sample (the run failed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> Trace:
        self.halt()
        if self._error is not None:
            raise MeterUnavailable(f"{self.meter.name} failed while sampling ({self._error})")
        self._sample(self._t0)
        return self._trace


@dataclass
class EnergyResult:
    """Energy per inference of one metered run, or why it was not measured."""

    status: str  # "measured" or NOT_MEASURED
    meter: str | None = None
    meter_detail: str | None = None
    sample_rate_hz: float | None = None
    samples: int | None = None
    idle_seconds: float | None = None
    idle_watts: float | None = None
    run_seconds: float | None = None
    run_joules: float | None = None
    net_joules: float | None = None
    inferences: int | None = None
    joules_per_inference: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.status != "measured":
            return f"energy: {NOT_MEASURED} ({self.reason})"
        return (
            f"energy: {self.joules_per_inference * 1e3:.3f} mJ/inference net of idle "
            f"{self.idle_watts:.2f} W ({self.meter}, {self.sample_rate_hz:g} Hz, {self.samples} samples)"
        )


def not_measured(reason: str) -> EnergyResult:
    return EnergyResult(status=NOT_MEASURED, reason=reason)


def measure_energy(
    run: Callable[[], int],
    meter: EnergyMeter | None,
    *,
    idle_seconds: float = 2.0,
    rate_hz: float = DEFAULT_RATE_HZ,
    reasons: dict[str, str] | None = None,
) -> EnergyResult:
    """Energy per inference of ``run()`` (which returns how many inferences it made).

    Idle power is sampled for ``idle_seconds`` first, with the same meter and rate; the run's
    energy minus idle power x run time, over the inferences, is the figure. Without a meter,
    ``run`` is not called and the result is "not measured" with ``reasons``.
    """
    if meter is None:
        why = "; ".join(f"{k}: {v}" for k, v in (reasons or {}).items()) or "no meter"
        return not_measured(f"no energy meter on this machine ({why})")
    try:
        idle_sampler = Sampler(meter, rate_hz).start()
        time.sleep(idle_seconds)
        idle = idle_sampler.stop()
        sampler = Sampler(meter, rate_hz).start()
        try:
            inferences = int(run())
        except BaseException:
            sampler.halt()
            raise
        active = sampler.stop()
    except MeterUnavailable as err:
        return not_measured(str(err))
    if inferences <= 0:
        return not_measured("the run made no inferences")
    idle_watts = idle.mean_watts()
    net = active.joules() - idle_watts * active.seconds
    return EnergyResult(
        status="measured",
        meter=meter.name,
        meter_detail=meter.describe(),
        sample_rate_hz=rate_hz,
        samples=len(active.times),
        idle_seconds=idle.seconds,
        idle_watts=idle_watts,
        run_seconds=active.seconds,
        run_joules=active.joules(),
        net_joules=net,
        inferences=inferences,
        joules_per_inference=net / inferences,
    )


def _read_text(path: Path, default: str | None = None) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        if default is None:
            raise
        return default


__all__ = [
    "EnergyMeter",
    "EnergyResult",
    "HwmonPowerMeter",
    "Ina219I2CMeter",
    "JetsonMeter",
    "METERS",
    "MeterUnavailable",
    "NOT_MEASURED",
    "Pi5PmicMeter",
    "RaplMeter",
    "Sampler",
    "Trace",
    "detect_meter",
    "measure_energy",
    "not_measured",
    "parse_pmic_adc",
]
