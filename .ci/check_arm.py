"""Do the device requirements install on the Arm boards from wheels alone? (``make check-arm``)

For each board Python (3.10: Jetson, JetPack 6; 3.11: Raspberry Pi OS Bookworm), ``pip download
--only-binary=:all:`` resolves the base requirements of pyproject.toml plus the ``fleet`` extra for
64-bit Arm Linux, and prints one table row per wheel: package, version, wheel tag. A source build
anywhere fails the check.

Platform tags: manylinux2014_aarch64 (glibc 2.17) and every manylinux_2_X_aarch64 up to glibc
2.35, what pip itself accepts on JetPack 6 (Ubuntu 22.04, glibc 2.35) and on Bookworm (glibc
2.36). manylinux2014 alone is not enough: onnxruntime has published no manylinux2014 aarch64
wheel since 1.16, numba and llvmlite none since 0.59/0.42 (they are manylinux_2_27/2_28 now).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import tomllib
from arm.wheels import download

PYTHONS = {"3.10": "Jetson Orin (JetPack 6)", "3.11": "Raspberry Pi 4/5 (Raspberry Pi OS Bookworm)"}
GLIBC_MAX = 35  # JetPack 6's glibc; Bookworm's is 2.36
FLEET_BY_NAME = ["paho-mqtt>=2,<3"]  # the fleet extra, while it is not yet in pyproject.toml


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return project["dependencies"] + project.get("optional-dependencies", {}).get("fleet", FLEET_BY_NAME)


def main() -> None:
    wanted = requirements(Path(__file__).resolve().parents[1] / "pyproject.toml")
    print(f"check-arm: {', '.join(wanted)}")
    for python, board in PYTHONS.items():
        with tempfile.TemporaryDirectory() as tmp:
            rows = download(python, wanted, Path(tmp), GLIBC_MAX)
        width = max(len(r["package"]) for r in rows)
        print(f"\nPython {python}, linux aarch64, glibc <= 2.{GLIBC_MAX}: {board}: {len(rows)} wheels, no source build")
        print(f"{'package':<{width}}  {'version':<12} wheel tag")
        for r in rows:
            print(f"{r['package']:<{width}}  {r['version']:<12} {r['tag']}")


if __name__ == "__main__":
    main()
