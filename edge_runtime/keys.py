"""Pre-shared keys and HMAC-SHA256 signing: the primitives the bridge and the fleet both use.

Key files are hex, one key per line (``#`` comments), mode 0600 or stricter; several keys are for
rotation: a receiver accepts any of them, a sender signs with the first. ``edgert bridge keygen``
writes one. The bridge's challenge-response (``firmware_bridge.auth``) and the fleet's signed
payloads (``edge_runtime.fleet.payload``) are built on ``mac``, ``frame_signer`` and ``read_keys``.

>>> key = bytes(range(32))
>>> mac(key, b"ab", b"c") == mac(key, b"abc") == frame_signer(key, b"a")(b"bc")
True
>>> signed_by_any([bytes(32), key], mac(key, b"abc"), b"abc")
True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Callable

from edge_runtime.errors import InputError

MAC_SIZE = 32
MIN_KEY_SIZE = 16


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of the concatenated ``parts``."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part)
    return h.digest()


def frame_signer(key: bytes, nonce: bytes) -> Callable[[bytes], bytes]:
    """``message -> HMAC-SHA256(key, nonce | message)``: the MAC of a SIGNED frame on one connection.

    The keyed, nonce-fed state is computed once and copied per frame (half the hashing of a
    fresh ``hmac.new`` for a short request).
    """
    base = hmac.new(key, nonce, hashlib.sha256)

    def sign(message: bytes) -> bytes:
        h = base.copy()
        h.update(message)
        return h.digest()

    return sign


def read_keys(path: str | Path) -> list[bytes]:
    """The keys in a key file: hex, one per line (``#`` comments); refused unless mode 0600 or stricter.

    Several keys are for rotation: a device accepts any of them, a host signs with the first.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise InputError(f"cannot read key file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}: other users could read it; " f"run `chmod 600 {path}`"
        )
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as err:
        raise InputError(f"cannot read key file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(
            f"key file {path} is not text: a key file holds hex keys, one per line "
            f"(make one with `edgert bridge keygen`)"
        ) from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise InputError(f"{path}:{n}: a key is hex digits (make one with `edgert bridge keygen`)") from None
        if len(key) < MIN_KEY_SIZE:
            raise InputError(
                f"{path}:{n}: key of {len(key)} bytes; use at least {MIN_KEY_SIZE} "
                f"(`edgert bridge keygen` makes 32)"
            )
        keys.append(key)
    if not keys:
        raise InputError(f"key file {path} holds no key (make one with `edgert bridge keygen`)")
    return keys


def write_key_file(path: str | Path, keys: list[bytes]) -> Path:
    """Write ``keys`` (hex, one per line) to a new file created with mode 0600; refuses to overwrite."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path} exists: choose a new name (rotation adds keys with --add)") from None
    with os.fdopen(fd, "w") as f:
        f.write("".join(key.hex() + "\n" for key in keys))
        f.flush()
        os.fsync(f.fileno())
    return path


def signed_by_any(keys: list[bytes], tag: bytes, *parts: bytes) -> bool:
    """Whether ``tag`` is the HMAC of ``parts`` under one of ``keys`` (constant-time compares)."""
    return any(hmac.compare_digest(mac(key, *parts), tag) for key in keys)


__all__ = ["MAC_SIZE", "MIN_KEY_SIZE", "frame_signer", "mac", "read_keys", "signed_by_any", "write_key_file"]
