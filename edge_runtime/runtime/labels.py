"""``LabelSchedule``: labels to teach during a run, by frame index or time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import InputError
from edge_runtime.source.capture import Frame


@dataclass
class LabelSchedule:
    """Labels to teach, from a JSONL of ``{"frame": n, "label": name}`` or ``{"t": s, "label": name}``.

    Each entry is taught once, on the first processed frame at or after its frame index / time.
    """

    by_frame: list[tuple[int, int]]  # (frame, class index), sorted
    by_time: list[tuple[float, int]]

    @classmethod
    def load(cls, path: str | Path, classes: list[str]) -> "LabelSchedule":
        index = {name: i for i, name in enumerate(classes)}
        by_frame, by_time = [], []
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as err:
            raise InputError(f"cannot read labels file {path}: {err.strerror}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row["label"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f'{path}:{n}: expected {{"frame": n or "t": seconds, "label": name}}') from None
            if name not in index:
                raise InputError(f"{path}:{n}: unknown label {name!r}; the memory knows {', '.join(classes)}")
            if "frame" in row:
                by_frame.append((int(row["frame"]), index[name]))
            elif "t" in row:
                by_time.append((float(row["t"]), index[name]))
            else:
                raise InputError(f'{path}:{n}: give "frame" or "t" with each label')
        return cls(sorted(by_frame), sorted(by_time))

    def due(self, frame: Frame) -> list[int]:
        """Class indices to teach on this frame (each entry once)."""
        out = []
        while self.by_frame and self.by_frame[0][0] <= frame.index:
            out.append(self.by_frame.pop(0)[1])
        while self.by_time and self.by_time[0][0] <= frame.t:
            out.append(self.by_time.pop(0)[1])
        return out
