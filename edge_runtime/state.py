"""Adapter state on disk: source memories and stream checkpoints, one file format, no pickle.

A state file is an ``.npz`` (``np.savez``, uncompressed) holding the adapter's arrays under
``a/<name>`` and a JSON header as a uint8 array under ``header``. The header says what the file is
(``kind``: ``"memory"`` or ``"checkpoint"``), its ``format``, the adapter's registry ``name``
(``memflow``, ``shift+t3a``, ...), its class's name and constructor parameters, the class names, the sha256 of the model whose features it holds, free
``meta`` (frames seen, ...), and a sha256 ``checksum`` over the header and every array's name,
dtype, shape and bytes. Files are read with ``allow_pickle=False``.

A checkpoint may also carry ``extra`` arrays that belong with the adapter's state but not to it
(a fleet member's per-peer statistics, ``edge_runtime.fleet``), under ``x/<name>``: they are
written in the same atomic file, so the two can never disagree after a crash. Their own sha256,
``extra_checksum``, sits in the header (which ``checksum`` covers); readers without this field
ignore them.

Every write is atomic: a temp file in the same folder, ``fsync`` of the file, ``rename`` over the
target, ``fsync`` of the folder. A power cut or ``kill -9`` at any point leaves either the old file
or the new one, never a torn one. A checkpoint folder holds numbered files
``checkpoint-00000042.npz``; a save keeps the newest and the previous good one, so a checkpoint
that later fails its checksum still has a good predecessor. Loading tries the newest first and
reports each file it skips (corrupt, wrong model, wrong adapter) by name.

Compatibility policy: this runtime reads files whose ``format`` is in ``READABLE_FORMATS`` and
writes ``FILE_FORMAT``. A header field that old readers may ignore does not bump the format.

>>> read_header("/nonexistent/checkpoint-00000001.npz")
Traceback (most recent call last):
...
edge_runtime.state.StateError: state file not found: /nonexistent/checkpoint-00000001.npz
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.adapters import Adapter, make_adapter
from edge_runtime.errors import InputError
from edge_runtime.files import atomic_write

FILE_FORMAT = 1
READABLE_FORMATS = (1,)
KINDS = ("memory", "checkpoint")
HEADER_KEY = "header"
ARRAY_PREFIX = "a/"
EXTRA_PREFIX = "x/"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})\.npz$")


class StateError(InputError):
    """A state file that cannot be used: missing, torn, corrupt, or made for another model."""


@dataclass
class State:
    """An adapter restored from a state file, with the file's header and where it came from."""

    adapter: Adapter
    header: dict[str, Any]
    path: Path
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.header["classes"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.header.get("meta", {}))


def _json_default(value: Any) -> Any:
    # Adapter parameters may hold numpy scalars or tuples; JSON keeps their values.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"adapter parameter of type {type(value).__name__} cannot be stored as JSON")


def _c_order(a: Any) -> np.ndarray:
    """``a`` in C order with its shape kept: ``np.ascontiguousarray`` turns a 0-d array into shape (1,),
    which adapters that store a scalar (kNN's class count) cannot read back. Files written that way
    still verify: their arrays are stored, and hashed, as (1,)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.array(a, order="C")


def checksum(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the header (without its checksum) and each array's name, dtype, shape, bytes."""
    digest = hashlib.sha256()
    body = {k: v for k, v in header.items() if k != "checksum"}
    digest.update(json.dumps(body, sort_keys=True, default=_json_default).encode())
    for name in sorted(arrays):
        a = _c_order(arrays[name])
        digest.update(f"\n{name}|{a.dtype.str}|{a.shape}\n".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_state(
    path: str | Path,
    adapter: Adapter,
    *,
    kind: str,
    model_sha256: str,
    classes: list[str],
    name: str | None = None,
    meta: dict[str, Any] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``adapter.state_dict()`` atomically as a state file; returns the path.

    ``name`` is the registry name the adapter was made with (default: its class's ``name``);
    ``extra`` are arrays stored beside the adapter's (see the module docstring).
    """
    blob = encode_state(
        adapter, kind=kind, model_sha256=model_sha256, classes=classes, name=name, meta=meta, extra=extra
    )
    return atomic_write(Path(path), lambda f: f.write(blob))


def encode_state(
    adapter: Adapter,
    *,
    kind: str,
    model_sha256: str,
    classes: list[str],
    name: str | None = None,
    meta: dict[str, Any] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> bytes:
    """The bytes of a state file (see ``write_state``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    state = adapter.state_dict()
    if len(classes) != adapter.n_classes:
        raise InputError(f"{len(classes)} class names for an adapter with {adapter.n_classes} classes")
    arrays = {key: _c_order(a) for key, a in state["arrays"].items()}
    extra = {key: _c_order(a) for key, a in (extra or {}).items()}
    for key, a in {**arrays, **extra}.items():
        if a.dtype.kind not in "biuf":
            raise InputError(f"adapter array {key!r} has dtype {a.dtype}: state files hold numeric arrays only")
    header = {
        "format": FILE_FORMAT,
        "kind": kind,
        "name": name or state["adapter"],
        "adapter": state["adapter"],
        "state_format": state["format"],
        "params": state["params"],
        "classes": list(classes),
        "model_sha256": model_sha256,
        "created": time.time(),
        "meta": meta or {},
    }
    if extra:
        header["extra_checksum"] = checksum({}, extra)
    # Round-trip the header through JSON first, so the checksum covers exactly what is stored.
    header = json.loads(json.dumps(header, default=_json_default))
    header["checksum"] = checksum(header, arrays)
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    payload = {
        HEADER_KEY: blob,
        **{ARRAY_PREFIX + k: v for k, v in arrays.items()},
        **{EXTRA_PREFIX + k: v for k, v in extra.items()},
    }
    buffer = io.BytesIO()
    np.savez(buffer, **payload)  # type: ignore[arg-type]
    return buffer.getvalue()


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    if not path.is_file():
        raise StateError(f"state file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if HEADER_KEY not in npz.files:
                raise StateError(
                    f"{path} is not a state file (no header): write it with edgert memory build or edgert run"
                )
            header = json.loads(npz[HEADER_KEY].tobytes().decode())
            arrays = {k[len(ARRAY_PREFIX) :]: npz[k] for k in npz.files if k.startswith(ARRAY_PREFIX)}
            extra = {k[len(EXTRA_PREFIX) :]: npz[k] for k in npz.files if k.startswith(EXTRA_PREFIX)}
    except StateError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise StateError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict) or header.get("format") not in READABLE_FORMATS:
        fmt = header.get("format") if isinstance(header, dict) else None
        raise StateError(f"{path} has format {fmt!r}; this runtime reads {READABLE_FORMATS}")
    if header.get("checksum") != checksum(header, arrays) or header.get("extra_checksum", checksum({}, {})) != checksum(
        {}, extra
    ):
        raise StateError(f"{path} fails its checksum: the file is corrupt")
    return header, arrays, extra


def read_header(path: str | Path) -> dict[str, Any]:
    """The checked header of a state file (the whole file is read to verify its checksum)."""
    return _read(Path(path))[0]


def read_state(path: str | Path, *, model_sha256: str | None = None, adapter: str | None = None) -> State:
    """Load and verify a state file; with ``model_sha256`` / ``adapter`` it must match them."""
    path = Path(path)
    header, arrays, extra = _read(path)
    if model_sha256 is not None and header["model_sha256"] != model_sha256:
        raise StateError(
            f"{path} was made for model sha256 {header['model_sha256'][:12]}..., not this model's "
            f"{model_sha256[:12]}...: rebuild it with this model"
        )
    if adapter is not None and header["name"] != adapter:
        raise StateError(f"{path} holds adapter {header['name']!r}, not {adapter!r}")
    state = {
        "adapter": header["adapter"],
        "format": header["state_format"],
        "params": header["params"],
        "arrays": arrays,
    }
    try:
        cls = type(make_adapter(header["name"], **header["params"]))
        restored = cls.from_state_dict(state)
    except (TypeError, KeyError, ValueError) as err:
        raise StateError(f"{path}: cannot restore adapter {header['name']!r}: {err}") from None
    if len(header["classes"]) != restored.n_classes:
        raise StateError(f"{path}: {len(header['classes'])} class names for {restored.n_classes} classes")
    return State(restored, header, path, extra)


@dataclass
class Checkpoints:
    """A folder of numbered checkpoints for one stream; one writer at a time (a lock file).

    ``load()`` returns the newest usable checkpoint and records every skipped file and why in
    ``problems``; ``save()`` writes the next number and keeps only it and the previous good one.
    """

    folder: Path
    model_sha256: str
    adapter: str
    problems: list[str] = field(default_factory=list)
    _good: Path | None = None
    _lock: int | None = None

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise StateError(f"state folder {self.folder} is in use by another process") from None
        # Temp files of a write that was cut short (kill -9, power cut) are never valid state.
        for stale in self.folder.glob(".checkpoint-*.npz.tmp-*"):
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def files(self) -> list[Path]:
        """Checkpoint files, newest first."""
        found = [p for p in self.folder.iterdir() if CHECKPOINT_RE.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def load(self) -> State | None:
        """The newest checkpoint that verifies and matches the model and adapter, or None."""
        for path in self.files():
            try:
                state = read_state(path, model_sha256=self.model_sha256, adapter=self.adapter)
            except StateError as err:
                self.problems.append(str(err))
                continue
            self._good = path
            return state
        return None

    def save(
        self,
        adapter: Adapter,
        classes: list[str],
        meta: dict[str, Any] | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> Path:
        files = self.files()
        number = int(CHECKPOINT_RE.match(files[0].name).group(1)) + 1 if files else 1  # type: ignore[union-attr]
        path = write_state(
            self.folder / f"checkpoint-{number:08d}.npz",
            adapter,
            kind="checkpoint",
            model_sha256=self.model_sha256,
            classes=classes,
            name=self.adapter,
            meta=meta,
            extra=extra,
        )
        keep = {path, self._good}
        for old in files:
            if old not in keep:
                old.unlink(missing_ok=True)
        self._good = path
        return path
