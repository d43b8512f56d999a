"""What every phase of the arm64 run shares: where things are, the emulated CPU, logging and
timed phases, shell commands, and what has to be undone on exit (mounts, child processes)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "arm64"
ROOT = CACHE / "root"
WHEELS = CACHE / "wheels"
PROJECT = CACHE / "project"
WORK = CACHE / "work"
MODELS = REPO / "models" / "efficientnet-lite0"
BACKBONES = ("int8.tflite", "int8.onnx")
FRAMES = "frames.mkv"
IN_ROOT = "/arm"  # WORK, seen from inside the root
VENV = "/opt/edgert"  # the device venv inside the root
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
DEBOOTSTRAP_INCLUDE = "python3,python3-venv,python3-pip,ca-certificates"
GLIBC_MAX = 36  # bookworm
FORBIDDEN = ("torch", "litert_torch", "matplotlib", "sklearn")
AGREEMENT_TARGET = 0.99
PROBE_FRAMES, PROBE_STRIDE = 32, 20  # frames 0, 20, ..., 620: both domains of the video
AGREEMENT_FLOOR = 0.97  # below this a run fails; the 99% is reported as met or not
# The emulated CPU model. qemu's default, `max`, offers every feature it knows (SVE2, SME, i8mm,
# ...), and on it LiteRT's XNNPACK computes wrong features (top-1 the same class on every frame,
# relative L2 ~1.07 from x86: see `qemu_max_check` in the JSON); on cortex-a72 (Raspberry Pi 4: NEON,
# no dotprod) and cortex-a76 (Raspberry Pi 5: NEON + dotprod) XNNPACK's features are those of x86.
# Real boards are these CPUs, so the runs pin them.
QEMU_CPU = "cortex-a72"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

phases: dict[str, float] = {}
cpu: dict[str, float] = {}  # CPU seconds (user + system) of the phase's own and children's processes
mounts: list[Path] = []
children: list[subprocess.Popen] = []


def log(text: str) -> None:
    print(f"check-arm-run: {text}", flush=True)


@contextlib.contextmanager
def phase(name: str):
    log(f"{name} ...")
    start, start_cpu = time.monotonic(), cpu_seconds()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - start, 1)
        cpu[name] = round(cpu_seconds() - start_cpu, 1)
        log(f"{name}: {phases[name]:.1f} s (CPU {cpu[name]:.1f} s)")


def cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sh(*command: str | Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], text=True, capture_output=True, **kw)
    if check and done.returncode != 0:
        raise SystemExit(
            f"check-arm-run: {' '.join(map(str, command))[:300]} failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def in_root(*command: str, qemu_cpu: str | None = None) -> list[str]:
    """``command`` in the root, on the emulated CPU ``qemu_cpu`` (default: QEMU_CPU, see there)."""
    env = [f"{k}={v}" for k, v in ENV.items()] + [f"QEMU_CPU={qemu_cpu or QEMU_CPU}"]
    return ["chroot", str(ROOT), "/usr/bin/env", "-i", *env, *command]
