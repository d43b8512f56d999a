"""Message bodies of the bridge protocol: little-endian packed payloads, one class per message.

Each body class has class constants ``TYPE`` (the header's type byte) and ``REPLY`` (whether the
header's REPLY flag is set), ``pack() -> bytes`` and ``unpack(payload) -> body``. The byte layouts
are specified in ``firmware_bridge/PROTOCOL.md``; the struct formats below are that table.
Unpacking raises ``PayloadError`` on any payload that does not match its layout exactly.

>>> Prediction.unpack(Prediction(3, 0.5, ((3, 0.5), (1, 0.25)), 120).pack())
Prediction(label=3, confidence=0.5, top=((3, 0.5), (1, 0.25)), compute_us=120)
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, field
from enum import IntEnum
from typing import ClassVar, Union

import numpy as np

from edge_runtime.errors import PayloadError


class MessageType(IntEnum):
    HELLO = 0x01
    ACK = 0x02
    ERROR = 0x03
    AUTH = 0x04
    FRAME = 0x10
    FEATURES = 0x11
    PREDICTION = 0x12
    TEACH = 0x20
    FORGET = 0x21
    TEACH_ONCE = 0x22  # TEACH with a request id: applied once however often it arrives
    FORGET_ONCE = 0x23  # FORGET with a request id
    STATS = 0x30
    STATE_EXPORT = 0x31


class ErrorCode(IntEnum):
    BAD_CRC = 1  # link level: the frame's CRC did not match (seq untrusted, sent as 0)
    OVERSIZED = 2  # link level: more than the framing's maximum between two delimiters
    MALFORMED = 3  # link level: not COBS, shorter than a header, or length field mismatch
    BAD_VERSION = 4  # the header's protocol version is not one this side speaks
    UNKNOWN_TYPE = 5  # type/flags combination this side does not handle
    BAD_PAYLOAD = 6  # the payload does not match its message's layout
    UNSUPPORTED = 7  # a valid request the device cannot serve (no backbone, no unlearning)
    BAD_INPUT = 8  # valid layout, unusable content: wrong feature width, NaN, unknown label
    INTERNAL = 9  # the device failed while serving a valid request
    AUTH_FAILED = 10  # AUTH proof does not match any key of the device (wrong key, or a stale nonce)
    AUTH_REQUIRED = 11  # a keyed device got a request without an HMAC, or before AUTH succeeded
    BAD_MAC = 12  # the request's HMAC does not match its bytes: tampered, or signed with another key
    REPLAYED = 13  # the request's counter is not above the last one accepted on this connection
    BUSY = 14  # the device serves its maximum number of connections (seq 0; the connection is closed)
    TIMEOUT = 15  # idle too long, or a frame did not complete in time (seq 0; the connection is closed)
    STORAGE = 16  # the change could not be made durable (disk full, I/O error): see the message; retry later


class PixelFormat(IntEnum):
    JPEG = 0
    GRAY8 = 1
    RGB888 = 2
    BGR888 = 3


CHANNELS = {PixelFormat.GRAY8: 1, PixelFormat.RGB888: 3, PixelFormat.BGR888: 3}


class FeatureDtype(IntEnum):
    FLOAT32 = 0
    FLOAT16 = 1
    INT8 = 2  # value = scale * q


NUMPY_DTYPES = {
    FeatureDtype.FLOAT32: np.dtype("<f4"),
    FeatureDtype.FLOAT16: np.dtype("<f2"),
    FeatureDtype.INT8: np.dtype("i1"),
}


class Capability(IntEnum):
    FRAME = 1 << 0
    FEATURES = 1 << 1
    TEACH = 1 << 2
    FORGET = 1 << 3
    STATE_EXPORT = 1 << 4
    ADAPTS = 1 << 5
    AUTH = 1 << 6  # requests must be authenticated (HELLO carries the nonce, then AUTH)
    DURABLE = 1 << 7  # an ACK to TEACH/FORGET is sent only once the operation is on stable storage
    IDEMPOTENT = 1 << 8  # TEACH_ONCE/FORGET_ONCE: a request id sent again is answered with the first reply


class ForgetScope(IntEnum):
    ADAPTED = 0  # what was learned from unlabelled frames (adapter.forget()); `value` is ignored
    ITEM = 1  # one stored item by id `value` (adapter.forget([value]); memories that keep items)


# Request options (FRAME, FEATURES): bit 0 asks the device not to adapt on this sample.
OPTION_READ_ONLY = 0x01


def _take(fmt: struct.Struct, payload: bytes, offset: int = 0) -> tuple:
    if len(payload) < offset + fmt.size:
        raise PayloadError(f"payload of {len(payload)} bytes is shorter than its {offset + fmt.size}-byte fixed part")
    return fmt.unpack_from(payload, offset)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError(f"text field is not UTF-8: {err.reason}") from None


def utf8_prefix(text: str, limit: int) -> bytes:
    """The UTF-8 bytes of ``text``, cut to at most ``limit`` bytes without splitting a character.

    >>> utf8_prefix("caf\u00e9", 4), utf8_prefix("caf\u00e9", 5)
    (b'caf', b'caf\xc3\xa9')
    """
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    cut = raw[:limit]
    return cut.decode("utf-8", "ignore").encode("utf-8")


def _enum(enum: type[IntEnum], value: int) -> IntEnum:
    try:
        return enum(value)
    except ValueError:
        raise PayloadError(f"{value} is not a valid {enum.__name__}") from None


class _Fixed:
    """A message whose whole payload is one struct of its dataclass fields, in order."""

    _FIXED: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        # Counters wrap at 32 bits rather than failing to pack on a device up for months.
        return self._FIXED.pack(*(v if isinstance(v, bytes) else int(v) & 0xFFFFFFFF for v in astuple(self)))

    @classmethod
    def unpack(cls, payload: bytes):  # noqa: ANN206 - returns an instance of the subclass
        if len(payload) != cls._FIXED.size:
            raise PayloadError(f"{cls.TYPE.name} payload must be {cls._FIXED.size} bytes, got {len(payload)}")
        return cls(*cls._FIXED.unpack(payload))


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
        max_payload, dim, n_classes, caps, sha, n_adapter = _take(cls._FIXED, payload)
        pos = cls._FIXED.size
        adapter = _text(payload[pos : pos + n_adapter])
        pos += n_adapter
        (n_names,) = _take(struct.Struct("<H"), payload, pos)
        pos += 2
        names: list[str] = []
        for _ in range(n_names):
            if pos >= len(payload):
                raise PayloadError(f"HELLO announces {n_names} class names, payload ends after {len(names)}")
            n = payload[pos]
            names.append(_text(payload[pos + 1 : pos + 1 + n]))
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
class Auth(_Fixed):
    """The host's proof of the key: its own nonce and HMAC-SHA256(key, "edgert host" | device nonce | host nonce)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<16s32s")

    host_nonce: bytes
    proof: bytes


@dataclass(frozen=True)
class AuthReply(_Fixed):
    """The device's proof of the same key: HMAC-SHA256(key, "edgert device" | device nonce | host nonce)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<32s")

    proof: bytes


@dataclass(frozen=True)
class Ack(_Fixed):
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
        code, n = _take(cls._FIXED, payload)
        if len(payload) != cls._FIXED.size + n:
            raise PayloadError(f"ERROR payload is {len(payload)} bytes, its fields take {cls._FIXED.size + n}")
        return cls(code, _text(payload[cls._FIXED.size :]))


@dataclass(frozen=True)
class Frame:
    """An image: JPEG bytes, or raw 8-bit pixels row-major (width, height given)."""

    TYPE: ClassVar[MessageType] = MessageType.FRAME
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<BBBxHH")

    format: PixelFormat
    width: int
    height: int
    data: bytes
    options: int = 0
    top_k: int = 1

    def pack(self) -> bytes:
        return self._FIXED.pack(self.format, self.options, self.top_k, self.width, self.height) + bytes(self.data)

    @classmethod
    def unpack(cls, payload: bytes) -> "Frame":
        fmt, options, top_k, width, height = _take(cls._FIXED, payload)
        fmt = _enum(PixelFormat, fmt)
        data = bytes(payload[cls._FIXED.size :])
        if fmt != PixelFormat.JPEG and len(data) != width * height * CHANNELS[fmt]:
            raise PayloadError(
                f"{fmt.name} frame {width}x{height} needs {width * height * CHANNELS[fmt]} bytes, got {len(data)}"
            )
        return cls(fmt, width, height, data, options, top_k)


@dataclass(frozen=True, eq=False)
class Features:
    """One feature vector as sent: float32, float16, or int8 with one scale (value = scale * q)."""

    TYPE: ClassVar[MessageType] = MessageType.FEATURES
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<BBBxHf")

    values: np.ndarray  # the wire array: dtype as NUMPY_DTYPES[dtype], shape (dim,)
    dtype: FeatureDtype = FeatureDtype.FLOAT32
    scale: float = 1.0
    options: int = 0
    top_k: int = 1

    @classmethod
    def quantize(cls, features: np.ndarray, dtype: FeatureDtype = FeatureDtype.INT8, **kw) -> "Features":
        """Encode float features for the wire; int8 uses the symmetric scale max|x| / 127."""
        x = np.asarray(features, dtype=np.float32).reshape(-1)
        if dtype == FeatureDtype.INT8:
            peak = float(np.abs(x).max()) if x.size else 0.0
            scale = peak / 127.0 if peak > 0 else 1.0
            return cls(np.clip(np.rint(x / scale), -127, 127).astype(np.int8), dtype, scale, **kw)
        return cls(x.astype(NUMPY_DTYPES[dtype]), dtype, 1.0, **kw)

    def to_float32(self) -> np.ndarray:
        x = self.values.astype(np.float32)
        return x * np.float32(self.scale) if self.dtype == FeatureDtype.INT8 else x

    def pack(self) -> bytes:
        values = np.ascontiguousarray(self.values, dtype=NUMPY_DTYPES[FeatureDtype(self.dtype)])
        return self._FIXED.pack(self.dtype, self.options, self.top_k, values.size, self.scale) + values.tobytes()

    @classmethod
    def unpack(cls, payload: bytes) -> "Features":
        dtype, options, top_k, dim, scale = _take(cls._FIXED, payload)
        dtype = _enum(FeatureDtype, dtype)
        np_dtype = NUMPY_DTYPES[dtype]
        if len(payload) != cls._FIXED.size + dim * np_dtype.itemsize:
            raise PayloadError(
                f"FEATURES of {dim} x {dtype.name} need {cls._FIXED.size + dim * np_dtype.itemsize} "
                f"payload bytes, got {len(payload)}"
            )
        values = np.frombuffer(payload, dtype=np_dtype, count=dim, offset=cls._FIXED.size)
        return cls(values, dtype, scale, options, top_k)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Features) and self.pack() == other.pack()


@dataclass(frozen=True)
class Prediction:
    """The answer to FRAME or FEATURES: best class, its probability, the top k, device compute time."""

    TYPE: ClassVar[MessageType] = MessageType.PREDICTION
    REPLY: ClassVar[bool] = True
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<HBxfI")
    _ENTRY: ClassVar[struct.Struct] = struct.Struct("<Hf")

    label: int
    confidence: float
    top: tuple[tuple[int, float], ...] = ()
    compute_us: int = 0

    def pack(self) -> bytes:
        return self._FIXED.pack(self.label, len(self.top), self.confidence, self.compute_us) + b"".join(
            self._ENTRY.pack(c, p) for c, p in self.top
        )

    @classmethod
    def unpack(cls, payload: bytes) -> "Prediction":
        label, k, confidence, compute_us = _take(cls._FIXED, payload)
        if len(payload) != cls._FIXED.size + k * cls._ENTRY.size:
            raise PayloadError(
                f"PREDICTION with top-{k} needs {cls._FIXED.size + k * cls._ENTRY.size} bytes, got {len(payload)}"
            )
        top = tuple(cls._ENTRY.unpack_from(payload, cls._FIXED.size + i * cls._ENTRY.size) for i in range(k))
        return cls(label, confidence, top, compute_us)


@dataclass(frozen=True)
class Teach:
    """A labelled sample: a FEATURES or a FRAME body after the label (their options are ignored)."""

    TYPE: ClassVar[MessageType] = MessageType.TEACH
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<HBx")

    label: int
    sample: Union[Features, Frame]

    def pack(self) -> bytes:
        return self._FIXED.pack(self.label, self.sample.TYPE) + self.sample.pack()

    @classmethod
    def unpack(cls, payload: bytes) -> "Teach":
        label, kind = _take(cls._FIXED, payload)
        body = payload[cls._FIXED.size :]
        if kind == MessageType.FEATURES:
            return cls(label, Features.unpack(body))
        if kind == MessageType.FRAME:
            return cls(label, Frame.unpack(body))
        raise PayloadError(f"TEACH sample kind must be FRAME (0x10) or FEATURES (0x11), got {kind:#04x}")


@dataclass(frozen=True)
class Forget:
    """Unlearn what adaptation learned, or one stored item; answered by ACK(count removed)."""

    TYPE: ClassVar[MessageType] = MessageType.FORGET
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<BxxxI")

    scope: ForgetScope
    value: int

    def pack(self) -> bytes:
        return self._FIXED.pack(self.scope, self.value)

    @classmethod
    def unpack(cls, payload: bytes) -> "Forget":
        if len(payload) != cls._FIXED.size:
            raise PayloadError(f"FORGET payload must be {cls._FIXED.size} bytes, got {len(payload)}")
        scope, value = cls._FIXED.unpack(payload)
        return cls(_enum(ForgetScope, scope), value)


_RID = struct.Struct("<Q")


def _rid_split(name: str, payload: bytes) -> tuple[int, bytes]:
    if len(payload) < _RID.size:
        raise PayloadError(f"{name} payload of {len(payload)} bytes is shorter than its 8-byte request id")
    (rid,) = _RID.unpack_from(payload)
    if rid == 0:
        raise PayloadError(f"{name} request id 0 is reserved: draw a random non-zero u64")
    return rid, payload[_RID.size :]


@dataclass(frozen=True)
class TeachOnce(Teach):
    """TEACH with a client-chosen request id (u64, not 0) before the TEACH payload: a device that
    has applied that id answers a repeat with the first reply instead of teaching again."""

    TYPE: ClassVar[MessageType] = MessageType.TEACH_ONCE
    request_id: int = 0

    def pack(self) -> bytes:
        return _RID.pack(self.request_id) + Teach.pack(self)

    @classmethod
    def unpack(cls, payload: bytes) -> "TeachOnce":
        rid, rest = _rid_split("TEACH_ONCE", payload)
        teach = Teach.unpack(rest)
        return cls(teach.label, teach.sample, rid)


@dataclass(frozen=True)
class ForgetOnce(Forget):
    """FORGET with a request id (as ``TeachOnce``)."""

    TYPE: ClassVar[MessageType] = MessageType.FORGET_ONCE
    request_id: int = 0

    def pack(self) -> bytes:
        return _RID.pack(self.request_id) + Forget.pack(self)

    @classmethod
    def unpack(cls, payload: bytes) -> "ForgetOnce":
        rid, rest = _rid_split("FORGET_ONCE", payload)
        forget = Forget.unpack(rest)
        return cls(forget.scope, forget.value, rid)


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
class Stats(_Fixed):
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
class StateExportRequest(_Fixed):
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
        offset, total, crc = _take(cls._FIXED, payload)
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
    "CHANNELS",
    "Capability",
    "Error",
    "ErrorCode",
    "FeatureDtype",
    "Features",
    "Forget",
    "ForgetOnce",
    "ForgetScope",
    "Frame",
    "Hello",
    "HelloReply",
    "MessageType",
    "NUMPY_DTYPES",
    "OPTION_READ_ONLY",
    "PayloadError",
    "PixelFormat",
    "Prediction",
    "Stats",
    "StatsRequest",
    "StateChunk",
    "StateExportRequest",
    "Teach",
    "TeachOnce",
    "utf8_prefix",
]
