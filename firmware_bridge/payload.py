"""Reading and writing the fields of a message payload: fixed structs, UTF-8 text, enum values.

Each reader raises ``PayloadError`` on bytes that do not fit, so a body's ``unpack`` never
returns a half-read message.
"""

from __future__ import annotations

import struct
from dataclasses import astuple
from enum import IntEnum
from typing import ClassVar

from edge_runtime.errors import PayloadError


def take(fmt: struct.Struct, payload: bytes, offset: int = 0) -> tuple:
    if len(payload) < offset + fmt.size:
        raise PayloadError(f"payload of {len(payload)} bytes is shorter than its {offset + fmt.size}-byte fixed part")
    return fmt.unpack_from(payload, offset)


def utf8_text(raw: bytes) -> str:
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


def as_enum(enum: type[IntEnum], value: int) -> IntEnum:
    try:
        return enum(value)
    except ValueError:
        raise PayloadError(f"{value} is not a valid {enum.__name__}") from None


class Fixed:
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


__all__ = ["Fixed", "as_enum", "take", "utf8_prefix", "utf8_text"]
