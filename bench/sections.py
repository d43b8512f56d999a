"""A benchmark's Markdown section: printed, its results as JSON, and put in place in a report."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any


def write_section(report: Path, section: str, title: str = "## Faults and load (bridge)") -> Path:
    """Put ``section`` into ``report`` in place of its previous section ``title``."""
    text = report.read_text() if report.is_file() else ""
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text)
    elif "\n## Other benchmarks" in text:  # where `edgert bench all` puts it
        text = text.replace("\n## Other benchmarks", "\n" + section + "\n## Other benchmarks", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)
    return report


def publish(args: argparse.Namespace, results: dict[str, Any], section: str, title: str) -> None:
    """Print ``section``; write ``results`` to ``--json`` and the section into ``--report`` when given."""
    print(section)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    if args.report is not None:
        write_section(args.report, section, title)
