"""The bridge protocol's numbers: message types, error codes, pixel formats, feature dtypes,
capability bits, forget scopes and request options (``firmware_bridge/PROTOCOL.md``'s tables).

>>> ErrorCode(8).name, Capability.TEACH | Capability.FORGET
('BAD_INPUT', 12)
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


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


__all__ = [
    "CHANNELS",
    "Capability",
    "ErrorCode",
    "FeatureDtype",
    "ForgetScope",
    "MessageType",
    "NUMPY_DTYPES",
    "OPTION_READ_ONLY",
    "PixelFormat",
]
