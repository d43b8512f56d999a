"""Bodies that carry a sample or change the memory: FRAME, FEATURES, PREDICTION, TEACH, FORGET,
and TEACH_ONCE / FORGET_ONCE (the same with a request id). Layouts: ``firmware_bridge/PROTOCOL.md``.

>>> Prediction.unpack(Prediction(3, 0.5, ((3, 0.5), (1, 0.25)), 120).pack())
Prediction(label=3, confidence=0.5, top=((3, 0.5), (1, 0.25)), compute_us=120)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from edge_runtime.errors import PayloadError
from firmware_bridge.codes import CHANNELS, NUMPY_DTYPES, FeatureDtype, ForgetScope, MessageType, PixelFormat
from firmware_bridge.payload import as_enum, take


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
        fmt, options, top_k, width, height = take(cls._FIXED, payload)
        fmt = as_enum(PixelFormat, fmt)
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
        dtype, options, top_k, dim, scale = take(cls._FIXED, payload)
        dtype = as_enum(FeatureDtype, dtype)
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
        label, k, confidence, compute_us = take(cls._FIXED, payload)
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
        label, kind = take(cls._FIXED, payload)
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
        return cls(as_enum(ForgetScope, scope), value)


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


__all__ = ["Features", "Forget", "ForgetOnce", "Frame", "Prediction", "Teach", "TeachOnce"]
