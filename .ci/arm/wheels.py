"""aarch64 wheels of the device requirements, downloaded on the x86 host: ``make check-arm`` asks
whether they resolve from wheels alone, ``make check-arm-run`` installs them in the arm64 root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

WHEEL = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<platform>.+)\.whl$"
)


def download(python: str, wanted: list[str], into: Path, glibc_max: int) -> list[dict[str, str]]:
    """``pip download --only-binary=:all:`` of ``wanted`` for CPython ``python`` on every manylinux
    aarch64 tag up to glibc 2.``glibc_max`` into ``into``; one row per wheel there (package,
    version, tag). Exits naming the requirements that need a source build."""
    tag = python.replace(".", "")
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in range(17, glibc_max + 1)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", python, "--abi", f"cp{tag}", "-d", str(into)]
    for platform in platforms:
        command += ["--platform", platform]
    done = subprocess.run(command + wanted, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        sys.exit(f"Python {python} aarch64 does not resolve from wheels:\n" + "\n".join(errors))
    rows = []
    for wheel in sorted(into.iterdir()):
        match = WHEEL.match(wheel.name)
        if match is None:
            sys.exit(f"Python {python}: {wheel.name} is not a wheel (a source build on the board)")
        rows.append(
            {
                "package": match["name"],
                "version": match["version"],
                "tag": f"{match['py']}-{match['abi']}-{match['platform']}",
            }
        )
    return rows
