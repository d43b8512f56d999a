"""The state folder of a journaled device: made durably, its files written atomically and privately,
and bound to its base.

**Bound to its base.** ``bridge-base.json`` (mode 0600, written once) names what the journal and
the checkpoints are changes *to*: the model, the adapter and its parameters, the source memory's
checksum, the feature width and the class names; every segment header carries its digest. A start
with another base is refused (``BaseMismatch``, one line naming both) before anything is written
or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edge_runtime.files import fsync_dir
from edge_runtime.state import StateError

BASE_FILE = "bridge-base.json"
FILE_MODE = 0o600  # journal records are the memory's contents: its owner's only


class BaseMismatch(StateError):
    """A state folder made for another model, adapter, memory, width or classes."""


def base_digest(base: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()


def _describe_base(base: dict[str, Any], keys: list[str]) -> str:
    """The fields ``keys`` of a base, for one line of text."""
    parts = []
    for key in keys:
        value = base.get(key)
        if key == "classes":
            names = [str(c) for c in (value or [])]
            text = f"{len(names)} classes [{','.join(names[:6])}{',...' if len(names) > 6 else ''}]"
        elif key in ("memory", "model_sha256"):
            text = f"{key} {str(value)[:12] + '...' if value else 'none'}"
        elif key == "params":
            text = f"adapter parameters {json.dumps(value, sort_keys=True, default=str)[:120]}"
        else:
            text = f"{key} {value}"
        parts.append(text)
    return ", ".join(parts)


def write_file(path: Path, data: bytes) -> None:
    """``path`` = ``data``, durably and atomically, mode 0600 (temp file, fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_folder(folder: Path) -> Path:
    """Create the state folder (mode 0700) and make its name durable: fsync every parent that gained an entry."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fsync_dir(path.parent)
    return folder


def bind_base(folder: Path, base: dict[str, Any], *, record: bool = True) -> str:
    """Check (or, in a folder without one and with ``record``, record) the base the folder's state
    is changes to. Returns the base's digest. ``BaseMismatch`` (one line naming both) when the folder was made
    for another base: nothing in the folder is changed.
    """
    base = json.loads(json.dumps(base, sort_keys=True, default=str))
    path = Path(folder) / BASE_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not an object")
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise StateError(f"{path} is unreadable ({err}): move the folder away to start afresh") from None
        if old != base:
            diff = [
                k
                for k in ("adapter", "params", "memory", "dim", "classes", "model_sha256", "format")
                if old.get(k) != base.get(k)
            ]
            raise BaseMismatch(
                f"state folder {folder} holds changes to {_describe_base(old, diff)}; this start asks "
                f"for {_describe_base(base, diff)}. Nothing was changed: start with the folder's "
                f"options, or give another --state folder"
            )
        return base_digest(base)
    if record:
        write_file(path, (json.dumps(base, sort_keys=True, indent=1) + "\n").encode())
    return base_digest(base)


__all__ = ["BASE_FILE", "BaseMismatch", "FILE_MODE", "base_digest", "bind_base", "make_folder", "write_file"]
