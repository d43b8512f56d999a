"""CRC-32 as used on the wire and in exported C headers: CRC-32/ISO-HDLC (the zlib/Ethernet CRC).

Parameters (Rocksoft model): width 32, poly 0x04C11DB7 (reflected 0xEDB88320), init 0xFFFFFFFF,
refin and refout true, xorout 0xFFFFFFFF; check value over ASCII "123456789" is 0xCBF43926.
CRC-32 rather than CRC-16 because frames reach 256 KiB, where a 16-bit CRC misses one error
burst pattern in 65536; zlib computes it in C, and a bitwise C version is eight lines
(``firmware_bridge/c/edgert_crc32.c``).

>>> hex(crc32(b"123456789"))
'0xcbf43926'
"""

from __future__ import annotations

import zlib

CHECK_VALUE = 0xCBF43926


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32/ISO-HDLC of ``data``; pass the previous result as ``value`` to continue a running CRC."""
    return zlib.crc32(data, value) & 0xFFFFFFFF


__all__ = ["CHECK_VALUE", "crc32"]
