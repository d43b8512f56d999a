"""Frames on a byte stream: header + payload + CRC-32, COBS-encoded, delimited by 0x00.

A ``Framing`` is a codec with a bounded receive buffer: ``feed(bytes)`` returns the packets and
the link errors found so far; ``pack(seq, body)`` returns the bytes to write. It never touches a
transport, so the protocol is tested without hardware (after pyserial's protocol handlers).
Variants differ in class constants only: ``Framing`` for hosts and Linux devices,
``McuFraming`` for microcontrollers with a few kB of RAM.

A SIGNED frame (flag bit 1) carries a u64 counter and an HMAC-SHA256 between its payload and its
CRC; the codec packs and parses that trailer, and ``firmware_bridge.auth`` checks it.

>>> from firmware_bridge.messages import Ack
>>> link = Framing()
>>> wire = link.pack(7, Ack(3))
>>> wire.hex(" ")
'04 01 02 01 02 07 02 04 01 01 02 03 01 01 05 f8 db 6e c3 00'
>>> link.feed(b"garbage\\x00" + wire)
[FrameError(code=<ErrorCode.MALFORMED: 3>, detail='...', seq=None), Packet(seq=7, body=Ack(count=3), signed=None)]
"""

from __future__ import annotations

import struct
from typing import Callable, ClassVar, NamedTuple, Optional

from edge_runtime.errors import PayloadError
from firmware_bridge import cobs
from firmware_bridge.codes import ErrorCode
from firmware_bridge.crc import crc32
from firmware_bridge.messages import BODIES, Body, Hello

PROTOCOL_VERSION = 1
FLAG_REPLY = 0x01
FLAG_SIGNED = 0x02
# version u8, type u8, flags u8, reserved u8 (0), seq u16, payload length u32
HEADER = struct.Struct("<BBBBHI")
CRC = struct.Struct("<I")
# after the payload of a SIGNED frame: counter u64, HMAC-SHA256 of (nonce | header | payload | counter)
TRAILER = struct.Struct("<Q32s")


class Signed(NamedTuple):
    """The trailer of a SIGNED frame and the bytes its MAC covers (header | payload | counter)."""

    counter: int
    mac: bytes
    message: bytes


class Packet(NamedTuple):
    seq: int
    body: Body
    signed: Optional[Signed] = None


class FrameError(NamedTuple):
    """A frame that arrived but could not be used. ``seq`` is None where the header is untrusted.

    ``signed`` is the trailer of a SIGNED frame whose type or payload was refused: a keyed device
    checks its MAC first, so a tampered frame is reported as tampered, not as malformed.
    """

    code: ErrorCode
    detail: str
    seq: Optional[int] = None
    signed: Optional[Signed] = None

    def __repr__(self) -> str:  # the detail text is for people; keep doctests stable
        return f"FrameError(code={self.code!r}, detail='...', seq={self.seq})"


class Framing:
    """Codec for one direction pair of a link; one instance per link (it holds the receive buffer)."""

    VERSION: ClassVar[int] = PROTOCOL_VERSION
    MAX_PAYLOAD: ClassVar[int] = 256 * 1024  # a raw 224x224 RGB frame (150,528 bytes) fits

    def __init__(self) -> None:
        self._limit = cobs.max_encoded_size(HEADER.size + self.MAX_PAYLOAD + TRAILER.size + CRC.size)
        self._buffer = bytearray()
        self._discarding = False

    @classmethod
    def max_frame_size(cls) -> int:
        """Bytes on the wire for the largest (signed) frame, delimiter included."""
        return cobs.max_encoded_size(HEADER.size + cls.MAX_PAYLOAD + TRAILER.size + CRC.size) + 1

    @property
    def partial(self) -> bool:
        """True while a frame has started arriving and its delimiter has not (a server's frame deadline)."""
        return bool(self._buffer) or self._discarding

    def pack(
        self, seq: int, body: Body, *, counter: Optional[int] = None, sign: Optional[Callable[[bytes], bytes]] = None
    ) -> bytes:
        """Bytes to write for one message: COBS(header | payload [| counter | mac] | crc32) and 0x00.

        With ``sign`` (a MAC function, ``firmware_bridge.auth.frame_signer``) and ``counter`` the
        frame is SIGNED: the MAC covers the header, the payload and the counter as sent.
        """
        payload = body.pack(self.MAX_PAYLOAD) if isinstance(body, Hello) else body.pack()
        if len(payload) > self.MAX_PAYLOAD:
            raise ValueError(
                f"{type(body).__name__} payload of {len(payload)} bytes exceeds "
                f"{type(self).__name__}.MAX_PAYLOAD = {self.MAX_PAYLOAD}"
            )
        flags = (FLAG_REPLY if body.REPLY else 0) | (FLAG_SIGNED if sign is not None else 0)
        raw = HEADER.pack(self.VERSION, body.TYPE, flags, 0, seq & 0xFFFF, len(payload)) + payload
        if sign is not None:
            if counter is None:
                raise ValueError("a SIGNED frame needs its counter")
            raw += struct.pack("<Q", counter)
            raw += sign(raw)
        return cobs.encode(raw + CRC.pack(crc32(raw))) + b"\x00"

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet | FrameError]:
        """Consume received bytes; return complete packets and link errors, in arrival order.

        Bytes between delimiters accumulate up to the framing's limit; past it the frame is
        reported OVERSIZED once and the rest is dropped up to the next 0x00 (resync point).
        Empty frames (two delimiters in a row) are idle fill and are ignored.
        """
        data = bytes(data)
        events: list[Packet | FrameError] = []
        start = 0
        while True:
            zero = data.find(0, start)
            end = len(data) if zero < 0 else zero
            if not self._discarding:
                if len(self._buffer) + end - start > self._limit:
                    events.append(
                        FrameError(ErrorCode.OVERSIZED, f"no delimiter within {self._limit} bytes: frame dropped")
                    )
                    self._buffer.clear()
                    self._discarding = True
                else:
                    self._buffer += data[start:end]
            if zero < 0:
                return events
            if self._discarding:
                self._discarding = False
            elif self._buffer:
                events.append(self._decode(bytes(self._buffer)))
                self._buffer.clear()
            start = zero + 1

    def _decode(self, encoded: bytes) -> Packet | FrameError:
        try:
            raw = cobs.decode(encoded)
        except cobs.CobsDecodeError as err:
            return FrameError(ErrorCode.MALFORMED, str(err))
        if len(raw) < HEADER.size + CRC.size:
            return FrameError(ErrorCode.MALFORMED, f"frame of {len(raw)} bytes is shorter than header + CRC")
        body_end = len(raw) - CRC.size
        (expected,) = CRC.unpack_from(raw, body_end)
        if crc32(raw[:body_end]) != expected:
            return FrameError(ErrorCode.BAD_CRC, "CRC-32 mismatch")
        version, kind, flags, _, seq, length = HEADER.unpack_from(raw)
        if version != self.VERSION:
            return FrameError(
                ErrorCode.BAD_VERSION, f"protocol version {version}, this side speaks {self.VERSION}", seq
            )
        if length > self.MAX_PAYLOAD:
            return FrameError(ErrorCode.OVERSIZED, f"payload of {length} bytes exceeds {self.MAX_PAYLOAD}", seq)
        trailer = TRAILER.size if flags & FLAG_SIGNED else 0
        if length != body_end - HEADER.size - trailer:
            return FrameError(
                ErrorCode.MALFORMED, f"length field {length}, payload holds " f"{body_end - HEADER.size - trailer}", seq
            )
        payload_end = HEADER.size + length
        signed = None
        if trailer:
            counter, mac = TRAILER.unpack_from(raw, payload_end)
            signed = Signed(counter, mac, raw[: payload_end + 8])
        cls = BODIES.get((kind, bool(flags & FLAG_REPLY)))
        if cls is None or flags & ~(FLAG_REPLY | FLAG_SIGNED):
            return FrameError(
                ErrorCode.UNKNOWN_TYPE, f"message type {kind:#04x} flags {flags:#04x} unknown", seq, signed
            )
        try:
            return Packet(seq, cls.unpack(raw[HEADER.size : payload_end]), signed)
        except PayloadError as err:
            return FrameError(ErrorCode.BAD_PAYLOAD, f"{cls.__name__}: {err}", seq, signed)


class McuFraming(Framing):
    """For microcontrollers: an 8 KiB payload bound (int8/float32 features fit, JPEG frames up to 8 KiB)."""

    MAX_PAYLOAD: ClassVar[int] = 8 * 1024


__all__ = [
    "CRC",
    "FLAG_REPLY",
    "FLAG_SIGNED",
    "FrameError",
    "Framing",
    "HEADER",
    "McuFraming",
    "PROTOCOL_VERSION",
    "Packet",
    "Signed",
    "TRAILER",
]
