"""Message bodies of the bridge protocol: little-endian packed payloads, one class per message.

Each body class has class constants ``TYPE`` (the header's type byte) and ``REPLY`` (whether the
header's REPLY flag is set), ``pack() -> bytes`` and ``unpack(payload) -> body``. The byte layouts
are specified in ``firmware_bridge/PROTOCOL.md``; the struct formats are that table.
Unpacking raises ``PayloadError`` on any payload that does not match its layout exactly.

This module holds the session's bodies (HELLO, AUTH, ACK, ERROR, STATS, STATE_EXPORT) and
``BODIES``, the lookup of every body; those that carry a sample or change the memory are in
``firmware_bridge.samples``, the numbers they use in ``firmware_bridge.codes``.

>>> Error.unpack(Error(8, "features have width 3, this device expects 4").pack())
Error(code=8, message='features have width 3, this device expects 4')
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Union

from edge_runtime.errors import PayloadError
from firmware_bridge.codes import MessageType
from firmware_bridge.payload import Fixed, take, utf8_prefix, utf8_text
from firmware_bridge.samples import Features, Forget, ForgetOnce, Frame, Prediction, Teach, TeachOnce


@dataclass(frozen=True)
class Hello:
    """Capabilities. The host sends one (its own limits), the device replies with its own.

    A device with a key appends a fresh ``nonce`` to its reply (a field older hosts never see,
    since a keyless device does not send it); the host proves the key over it with AUTH.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<IHHH32sB")

    max_payload: int
    feature_dim: int = 0
    n_classes: int = 0
    capabilities: int = 0
    model_sha256: bytes = bytes(32)
    adapter: str = ""
    classes: tuple[str, ...] = ()
    nonce: bytes = b""

    def pack(self, max_size: int = 0) -> bytes:
        """The payload; names are cut to 255 bytes on a UTF-8 character boundary, and with ``max_size``
        (the framing's MAX_PAYLOAD) trailing class names are left out so the whole HELLO fits
        (``n_classes`` still counts every class: a host names the rest by index)."""
        adapter = utf8_prefix(self.adapter, 255)
        nonce = [bytes([len(self.nonce)]), bytes(self.nonce)] if self.nonce else []
        room = (max_size or (1 << 62)) - self._FIXED.size - len(adapter) - 2 - sum(map(len, nonce))
        names = []
        for name in self.classes[:0xFFFF]:
            raw = utf8_prefix(name, 255)
            if 1 + len(raw) > room:
                break
            room -= 1 + len(raw)
            names += [bytes([len(raw)]), raw]
        out = [
            self._FIXED.pack(
                self.max_payload & 0xFFFFFFFF,
                self.feature_dim & 0xFFFF,
                self.n_classes & 0xFFFF,
                self.capabilities & 0xFFFF,
                bytes(self.model_sha256)[:32],
                len(adapter),
            ),
            adapter,
            struct.pack("<H", len(names) // 2),
            *names,
            *nonce,
        ]
        return b"".join(out)

    @classmethod
    def unpack(cls, payload: bytes) -> "Hello":
        max_payload, dim, n_classes, caps, sha, n_adapter = take(cls._FIXED, payload)
        pos = cls._FIXED.size
        adapter = utf8_text(payload[pos : pos + n_adapter])
        pos += n_adapter
        (n_names,) = take(struct.Struct("<H"), payload, pos)
        pos += 2
        names: list[str] = []
        for _ in range(n_names):
            if pos >= len(payload):
                raise PayloadError(f"HELLO announces {n_names} class names, payload ends after {len(names)}")
            n = payload[pos]
            names.append(utf8_text(payload[pos + 1 : pos + 1 + n]))
            pos += 1 + n
        nonce = b""
        if pos < len(payload):  # the optional nonce of a keyed device
            nonce = bytes(payload[pos + 1 : pos + 1 + payload[pos]])
            pos += 1 + payload[pos]
        if pos != len(payload) or len(adapter.encode()) != n_adapter:
            raise PayloadError(f"HELLO payload is {len(payload)} bytes, its fields take {pos}")
        return cls(max_payload, dim, n_classes, caps, sha, adapter, tuple(names), nonce)


@dataclass(frozen=True)
class HelloReply(Hello):
    REPLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Auth(Fixed):
    """The host's proof of the key: its own nonce and HMAC-SHA256(key, "edgert host" | device nonce | host nonce)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<16s32s")

    host_nonce: bytes
    proof: bytes


@dataclass(frozen=True)
class AuthReply(Fixed):
    """The device's proof of the same key: HMAC-SHA256(key, "edgert device" | device nonce | host nonce)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<32s")

    proof: bytes


@dataclass(frozen=True)
class Ack(Fixed):
    """Success of TEACH or FORGET; ``count`` = items learned or removed."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<I")

    count: int = 0


@dataclass(frozen=True)
class Error:
    """A request (or a damaged frame) that was not served; the link stays up."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<HH")
    MAX_TEXT: ClassVar[int] = 200

    code: int
    message: str = ""

    def pack(self) -> bytes:
        raw = utf8_prefix(self.message, self.MAX_TEXT)
        return self._FIXED.pack(self.code, len(raw)) + raw

    @classmethod
    def unpack(cls, payload: bytes) -> "Error":
        code, n = take(cls._FIXED, payload)
        if len(payload) != cls._FIXED.size + n:
            raise PayloadError(f"ERROR payload is {len(payload)} bytes, its fields take {cls._FIXED.size + n}")
        return cls(code, utf8_text(payload[cls._FIXED.size :]))


@dataclass(frozen=True)
class StatsRequest:
    TYPE: ClassVar[MessageType] = MessageType.STATS
    REPLY: ClassVar[bool] = False

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, payload: bytes) -> "StatsRequest":
        if payload:
            raise PayloadError(f"a STATS request has an empty payload, got {len(payload)} bytes")
        return cls()


@dataclass(frozen=True)
class Stats(Fixed):
    """Device counters since start (all u32, wrapping)."""

    TYPE: ClassVar[MessageType] = MessageType.STATS
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<10I")

    uptime_ms: int = 0
    frames: int = 0
    features: int = 0
    teaches: int = 0
    forgets: int = 0
    errors: int = 0
    adapted: int = 0
    mean_compute_us: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class StateExportRequest(Fixed):
    """Ask for ``max_len`` bytes of the device's state file starting at ``offset``."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_EXPORT
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<II")

    offset: int = 0
    max_len: int = 4096


@dataclass(frozen=True)
class StateChunk:
    """A slice of the state file (as written by ``edge_runtime.state``) and the whole file's CRC-32."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_EXPORT
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<III")

    offset: int
    total: int
    crc32: int
    data: bytes = field(default=b"")

    def pack(self) -> bytes:
        return self._FIXED.pack(self.offset, self.total, self.crc32) + bytes(self.data)

    @classmethod
    def unpack(cls, payload: bytes) -> "StateChunk":
        offset, total, crc = take(cls._FIXED, payload)
        data = bytes(payload[cls._FIXED.size :])
        if offset + len(data) > total:
            raise PayloadError(f"STATE_EXPORT chunk [{offset}, {offset + len(data)}) runs past the total {total}")
        return cls(offset, total, crc, data)


Body = Union[
    Hello,
    Auth,
    AuthReply,
    Ack,
    Error,
    Frame,
    Features,
    Prediction,
    Teach,
    Forget,
    TeachOnce,
    ForgetOnce,
    StatsRequest,
    Stats,
    StateExportRequest,
    StateChunk,
]

# (type, reply flag) -> body class: the one place a decoder looks a message up.
BODIES: dict[tuple[int, bool], type] = {
    (cls.TYPE, cls.REPLY): cls
    for cls in (
        Hello,
        HelloReply,
        Auth,
        AuthReply,
        Ack,
        Error,
        Frame,
        Features,
        Prediction,
        Teach,
        Forget,
        TeachOnce,
        ForgetOnce,
        StatsRequest,
        Stats,
        StateExportRequest,
        StateChunk,
    )
}

__all__ = [
    "BODIES",
    "Ack",
    "Auth",
    "AuthReply",
    "Body",
    "Error",
    "Hello",
    "HelloReply",
    "Stats",
    "StatsRequest",
    "StateChunk",
    "StateExportRequest",
]
