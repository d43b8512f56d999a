"""Durable file writes: the one atomic write every state, card and cache file goes through.

``atomic_write`` writes a temp file in the target's folder, fsyncs it, renames it over the
target and fsyncs the folder, so a power cut or ``kill -9`` at any point leaves either the old
file or the new one, never a mix, and the rename itself survives. Temp files are named
``.<name>.tmp-<pid>-<random>`` so a cleaner can find stale ones (``Checkpoints`` does).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_dir(folder: str | Path) -> None:
    """Make a rename (or a new file's name) in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through a temp file in its folder: fsync the file, rename, fsync the folder.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.txt", lambda f: f.write(b"hello")).read_bytes()
    b'hello'
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``atomic_write`` of a bytes value."""
    return atomic_write(path, lambda f: f.write(data))


__all__ = ["atomic_write", "atomic_write_bytes", "fsync_dir"]
