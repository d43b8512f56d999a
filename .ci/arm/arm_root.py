"""Phases 1-4 of the arm64 run: the host's tools, the arm64 root and its mounts, the aarch64 wheels and the
device venv installed from them inside the root."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomllib
from common import (
    DEBOOTSTRAP_INCLUDE,
    GLIBC_MAX,
    IN_ROOT,
    MIRROR,
    PROJECT,
    REPO,
    ROOT,
    SUITE,
    VENV,
    WHEELS,
    WORK,
    cpu_seconds,
    in_root,
    log,
    mounts,
    sh,
)
from wheels import download


# -- 1. host tools -----------------------------------------------------------------------------------------
def host_tools() -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("check-arm-run: needs root (apt, binfmt_misc, mount, chroot)")
    need = {"qemu-user-static": "qemu-aarch64-static", "binfmt-support": "update-binfmts", "debootstrap": "debootstrap"}
    missing = [p for p, tool in need.items() if shutil.which(tool) is None]
    if missing:
        log(f"installing Debian packages: {' '.join(missing)}")
        sh("apt-get", "update", "-qq")
        sh(
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        sh("mount", "-t", "binfmt_misc", "binfmt_misc", binfmt)
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        sh("update-binfmts", "--enable", "qemu-aarch64", check=False)
    text = entry.read_text() if entry.exists() else ""
    flags = re.search(r"^flags: (\S*)", text, re.M)
    if not text.startswith("enabled") or flags is None or "F" not in flags.group(1):
        raise SystemExit(f"check-arm-run: qemu-aarch64 is not registered with binfmt_misc (flag F):\n{text}")
    qemu = sh("qemu-aarch64-static", "--version").stdout.splitlines()[0]
    return {
        "qemu": qemu,
        "binfmt_flags": flags.group(1),
        "debootstrap": sh("dpkg-query", "-W", "-f=${Version}", "debootstrap").stdout,
    }


# -- 2. root -----------------------------------------------------------------------------------------------
def mounted_under(path: Path) -> list[Path]:
    prefix = str(path.resolve())
    points = [
        Path(line.split()[1].replace("\\040", " ")) for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    return [p for p in points if str(p) == prefix or str(p).startswith(prefix + "/")]


def unmount_all() -> None:
    for point in reversed(mounts):
        if sh("umount", point, check=False).returncode != 0:
            sh("umount", "-l", point, check=False)
    mounts.clear()
    for point in sorted(mounted_under(ROOT), key=lambda p: len(str(p)), reverse=True):  # a killed run's leftovers
        if sh("umount", point, check=False).returncode != 0:
            sh("umount", "-l", point, check=False)


def read_marker(marker: Path) -> dict[str, Any]:
    try:
        return json.loads(marker.read_text())
    except ValueError:
        return {}


def build_root() -> dict[str, Any]:
    """The cached root's record (how long it took to build), building it first when absent."""
    marker = ROOT / ".edgert-root-complete"
    if marker.exists():
        return {"reused": True, "built": read_marker(marker)}
    start, start_cpu = time.monotonic(), cpu_seconds()
    unmount_all()
    if mounted_under(ROOT):
        raise SystemExit(f"check-arm-run: still mounted under {ROOT}: {mounted_under(ROOT)}; not removing it")
    if ROOT.exists():
        sh("rm", "-rf", "--one-file-system", ROOT)
    ROOT.parent.mkdir(parents=True, exist_ok=True)
    sh("debootstrap", "--arch=arm64", "--variant=minbase", f"--include={DEBOOTSTRAP_INCLUDE}", SUITE, ROOT, MIRROR)
    built = {
        "seconds": round(time.monotonic() - start, 1),
        "cpu_s": round(cpu_seconds() - start_cpu, 1),
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "include": DEBOOTSTRAP_INCLUDE,
    }
    marker.write_text(json.dumps(built) + "\n")
    return {"reused": False, "built": built}


def bind(source: Path, target: Path, read_only: bool = False) -> None:
    target.mkdir(parents=True, exist_ok=True)
    sh("mount", "--bind", source, target)
    mounts.append(target)
    if read_only:
        sh("mount", "-o", "remount,bind,ro", target)


def fake_sysfs() -> None:
    """A tmpfs /sys holding only the CPU lists cpuinfo (pytorch/cpuinfo) needs to initialise.

    Without any /sys, cpuinfo fails ("failed to parse both lists of possible and present
    processors"): LiteRT then does not create its XNNPACK delegate and silently runs its built-in
    kernels, and ONNX Runtime warns that CPU features are undetected, so the root would not run
    what a board runs. The host's own /sys crashes cpuinfo's Arm code (x86 topology); these two
    files are enough, and the ISA features then come from AT_HWCAP, as on a board.
    """
    target = ROOT / "sys"
    target.mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "edgert-sys", target)
    mounts.append(target)
    cpus = target / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{(os.cpu_count() or 1) - 1}\n")


def mount_all() -> None:
    unmount_all()
    WORK.mkdir(parents=True, exist_ok=True)
    bind(Path("/proc"), ROOT / "proc")
    bind(Path("/dev"), ROOT / "dev")
    fake_sysfs()
    bind(WHEELS, ROOT / "mnt" / "wheels", read_only=True)
    bind(PROJECT, ROOT / "mnt" / "project", read_only=True)
    bind(WORK, ROOT / IN_ROOT.lstrip("/"))


# -- 3. wheels ---------------------------------------------------------------------------------------------
def requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def download_wheels() -> list[dict[str, str]]:
    WHEELS.mkdir(parents=True, exist_ok=True)
    rows = download("3.11", requirements(), WHEELS, GLIBC_MAX)
    shutil.rmtree(PROJECT, ignore_errors=True)
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", PROJECT, REPO)
    shutil.rmtree(REPO / "build", ignore_errors=True)
    return rows


# -- 4. install --------------------------------------------------------------------------------------------
def pip_install(*args: str) -> None:
    """pip install in the root's venv, from the mounted wheels only."""
    sh(*in_root(f"{VENV}/bin/python", "-m", "pip", "install", "--quiet", "--no-index", *args))


def install(wheels: list[dict[str, str]]) -> dict[str, Any]:
    key = hashlib.sha256("\n".join(sorted(p.name for p in WHEELS.glob("*.whl"))).encode()).hexdigest()[:16]
    marker = ROOT / VENV.lstrip("/") / f".deps-{key}"
    reused = marker.exists()
    start, start_cpu = time.monotonic(), cpu_seconds()
    if not reused:
        shutil.rmtree(ROOT / VENV.lstrip("/"), ignore_errors=True)
        sh(*in_root("/usr/bin/python3", "-m", "venv", VENV))
        pip_install("--find-links", "/mnt/wheels", *requirements())
        marker.write_text(
            json.dumps(
                {
                    "seconds": round(time.monotonic() - start, 1),
                    "cpu_s": round(cpu_seconds() - start_cpu, 1),
                    "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "wheels": [f"{w['package']}=={w['version']}" for w in wheels],
                }
            )
            + "\n"
        )
    project = next(PROJECT.glob("*.whl"))
    pip_install("--no-deps", "--force-reinstall", f"/mnt/project/{project.name}")
    helped = sh(*in_root(f"{VENV}/bin/edgert", "--help"))
    installed = sh(*in_root(f"{VENV}/bin/python", "-m", "pip", "list", "--format=freeze")).stdout.split()
    torch_present = sh(
        *in_root(
            f"{VENV}/bin/python",
            "-c",
            "import importlib.util as u; "
            "print(','.join(n for n in ('torch', 'litert_torch', 'matplotlib', 'sklearn') "
            "if u.find_spec(n)))",
        )
    ).stdout.strip()
    return {
        "deps_reused": reused,
        "deps_installed": read_marker(marker),
        "project_wheel": project.name,
        "installed": installed,
        "edgert_help": helped.stdout.splitlines()[0],
        "host_packages_installed": torch_present or None,
    }
