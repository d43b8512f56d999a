"""Run ``edgert ARGS`` with the host-only packages blocked, and record what it imported.

Usage: python guarded.py REPORT.json ARGS...   (the same as ``edgert ARGS``)

A meta-path finder placed first refuses ``torch``, ``litert_torch``, ``matplotlib`` and
``sklearn`` (ImportError) and records every attempt, even one the caller catches; at exit the
top-level names in ``sys.modules`` and the attempts are written to REPORT.json. Used on both sides
of the arm64 run (``.ci/arm/run_arm64.py``): in the arm64 root torch is not even installed, on
the x86 host it is, so the blocker is what makes the two runs take the same code path.
"""

from __future__ import annotations

import atexit
import json
import sys

FORBIDDEN = ("torch", "litert_torch", "matplotlib", "sklearn")
attempts: list[str] = []


class Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            attempts.append(name)
            raise ModuleNotFoundError(f"{name} is blocked on the device path", name=name)
        return None


def report(path: str) -> None:
    modules = sorted({name.split(".")[0] for name in sys.modules})
    with open(path, "w") as f:
        json.dump(
            {
                "blocked_attempts": attempts,
                "forbidden_loaded": [m for m in modules if m in FORBIDDEN],
                "modules": modules,
            },
            f,
            indent=1,
        )


def main() -> None:
    out = sys.argv[1]
    sys.meta_path.insert(0, Blocker())
    atexit.register(report, out)
    sys.argv = ["edgert", *sys.argv[2:]]
    from importlib.metadata import entry_points  # the installed `edgert` script's own entry point

    (edgert,) = entry_points(group="console_scripts", name="edgert")
    sys.exit(edgert.load()())


if __name__ == "__main__":
    main()
