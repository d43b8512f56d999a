"""The fleet's wire format: a JSON header and plain arrays, HMAC-SHA256 signed, size-limited.

One payload is one MQTT message::

    offset 0   4s   magic b"EGFL"
           4   u8   format (1)
           5   u8   flags: bit 0 = signed
           6   u16  0
           8   u32  length H of the header
          12   H    JSON header (UTF-8): {"kind", "device", "seq", "model", "memory", ...,
                    "arrays": [[name, dtype, shape], ...]}
        12+H   ...  each array's bytes, C order, in the header's order (little-endian numbers)
         end   32   HMAC-SHA256(key, every byte before it), when signed

No pickle: the reader accepts only the dtypes in ``DTYPES`` and checks that the arrays fill the
bytes exactly. A signature proves who sent a payload, not that it is well formed, so a signed
header is checked as strictly as any input: at most ``MAX_HEADER`` bytes of JSON (nesting that
exhausts the parser is ``malformed``), at most ``MAX_ARRAYS`` arrays of at most ``MAX_NDIM``
dimensions whose sizes (exact integers, no overflow) fit the bytes present. ``decode`` checks, in this order and before anything is parsed that the MAC does
not cover: the size limit (``oversized``), the prefix (``malformed``), the signature
(``unsigned``, ``bad_signature``; compared with ``hmac.compare_digest`` against every key of the
ring, for rotation), then the header and arrays (``malformed``). ``wrong_model`` is the
receiver's check of the header against its own model and memory (``edge_runtime.fleet.sync``).

Compatibility policy: readers accept ``format`` 1; a header field old readers may ignore does
not bump it.

>>> key = bytes(range(32))
>>> blob = encode({"kind": "delta", "seq": 1}, {"counts": np.array([1.0, 2.0])}, key)
>>> header, arrays = decode(blob, [key], max_bytes=1024)
>>> header["seq"], arrays["counts"]
(1, array([1., 2.]))
>>> decode(blob[:-1] + bytes([blob[-1] ^ 1]), [key], max_bytes=1024)
Traceback (most recent call last):
...
edge_runtime.errors.PayloadError: bad_signature: HMAC does not match any fleet key (tampered, or another key)
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import InputError, PayloadError
from edge_runtime.keys import MAC_SIZE, MIN_KEY_SIZE, mac, read_keys, signed_by_any

MAGIC = b"EGFL"
FORMAT = 1
FLAG_SIGNED = 1
PREFIX = struct.Struct("<4sBBHI")
DTYPES = ("<f8", "<i8", "<i4", "<i2", "|u1")
KINDS = ("unsigned", "bad_signature", "oversized", "wrong_model", "malformed", "overflow")
MAX_HEADER = 64 * 1024
MAX_ARRAYS = 64
MAX_NDIM = 8
MAX_NAME = 128
KEY_ENV = "EDGERT_FLEET_KEY"


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray], key: bytes | None) -> bytes:
    """The bytes of one payload; ``key`` None writes it unsigned (which every receiver drops)."""
    parts, described = [], []
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype.str not in DTYPES:
            raise ValueError(f"array {name!r} has dtype {a.dtype}; payloads carry {', '.join(DTYPES)}")
        described.append([name, dtype.str, list(a.shape)])
        parts.append(a.astype(dtype, copy=False).tobytes())
    text = json.dumps({**header, "arrays": described}, separators=(",", ":")).encode()
    body = PREFIX.pack(MAGIC, FORMAT, FLAG_SIGNED if key else 0, 0, len(text)) + text + b"".join(parts)
    return body + mac(key, body) if key else body


def decode(blob: bytes, keys: list[bytes], max_bytes: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a payload, or ``PayloadError`` (see the module docstring for the order)."""
    if len(blob) > max_bytes:
        raise PayloadError(f"{len(blob)} bytes, the limit is {max_bytes}", kind="oversized")
    if len(blob) < PREFIX.size:
        raise PayloadError(f"{len(blob)} bytes, shorter than the {PREFIX.size}-byte prefix", kind="malformed")
    magic, fmt, flags, _, size = PREFIX.unpack_from(blob)
    if magic != MAGIC or fmt != FORMAT:
        raise PayloadError(f"not a fleet payload of format {FORMAT} (magic {magic!r}, format {fmt})", kind="malformed")
    if not flags & FLAG_SIGNED:
        raise PayloadError("no HMAC: the sender has no fleet key", kind="unsigned")
    if len(blob) < PREFIX.size + MAC_SIZE:
        raise PayloadError("signed payload shorter than its HMAC", kind="malformed")
    body, tag = blob[:-MAC_SIZE], blob[-MAC_SIZE:]
    if not signed_by_any(keys, tag, body):
        raise PayloadError("HMAC does not match any fleet key (tampered, or another key)", kind="bad_signature")
    return _parse(body, size)


def _parse(body: bytes, size: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    start = PREFIX.size + size
    if start > len(body):
        raise PayloadError(f"header of {size} bytes runs past the payload", kind="malformed")
    if size > MAX_HEADER:
        raise PayloadError(f"header of {size} bytes, the limit is {MAX_HEADER}", kind="malformed")
    try:
        header = json.loads(body[PREFIX.size : start].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PayloadError(f"header is not JSON ({type(err).__name__})", kind="malformed") from None
    described = header.get("arrays") if isinstance(header, dict) else None
    if not isinstance(described, list) or len(described) > MAX_ARRAYS:
        raise PayloadError(f"header is not an object with an 'arrays' list of at most {MAX_ARRAYS}", kind="malformed")
    arrays, offset = {}, start
    for entry in described:
        if not _valid_entry(entry) or entry[0] in arrays:
            raise PayloadError(f"bad array entry {str(entry)[:80]}", kind="malformed")
        name, dtype, shape = entry[0], entry[1], tuple(entry[2])
        count = 1
        for n in shape:  # exact integers: a huge shape cannot overflow into a small size
            count *= n
        n = count * np.dtype(dtype).itemsize
        if offset + n > len(body):
            raise PayloadError(f"array {name!r} {shape} runs past the payload", kind="malformed")
        arrays[name] = np.frombuffer(body, dtype, count=count, offset=offset).reshape(shape)
        offset += n
    if offset != len(body):
        raise PayloadError(f"{len(body) - offset} bytes after the last array", kind="malformed")
    return header, arrays


def _valid_entry(entry: Any) -> bool:
    """``[name, dtype, shape]`` with a short str name, a known dtype and at most MAX_NDIM int sizes."""
    if not isinstance(entry, list) or len(entry) != 3:
        return False
    name, dtype, shape = entry
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME
        and isinstance(dtype, str)
        and dtype in DTYPES
        and isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(type(n) is int and 0 <= n <= 1 << 40 for n in shape)
    )


def fleet_keys(path: str | Path | None = None) -> list[bytes]:
    """The fleet keys: from a key file (``edgert bridge keygen``; hex, one per line, mode 0600 or
    stricter; the first signs, all verify) or, without one, from ``$EDGERT_FLEET_KEY`` (hex keys,
    comma-separated)."""
    if path is not None:
        return read_keys(path)
    text = os.environ.get(KEY_ENV, "")
    try:
        keys = [bytes.fromhex(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(
            f"${KEY_ENV} must hold hex keys, comma-separated (make one with `edgert bridge keygen`)"
        ) from None
    if not keys:
        raise InputError(f"a fleet needs a key: pass --fleet-key FILE or set ${KEY_ENV} (`edgert bridge keygen`)")
    if any(len(key) < MIN_KEY_SIZE for key in keys):
        raise InputError(f"${KEY_ENV}: every key needs at least {MIN_KEY_SIZE} bytes (`edgert bridge keygen` makes 32)")
    return keys


__all__ = ["DTYPES", "KINDS", "KEY_ENV", "MAC_SIZE", "MAX_HEADER", "PayloadError", "decode", "encode", "fleet_keys"]
