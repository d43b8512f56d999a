"""Issue #24, part 5: COBS decoding at C speed on frames of many short blocks, checked against
the byte-by-byte reference (the PROTOCOL.md vectors, random and damaged frames)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from firmware_bridge import cobs

VECTORS = [
    ("00", "01 01"),
    ("00 00", "01 01 01"),
    ("00 11 00", "01 02 11 01"),
    ("11 22 00 33", "03 11 22 02 33"),
    ("11 22 33 44", "05 11 22 33 44"),
    ("11 00 00 00", "02 11 01 01 01"),
]


@pytest.mark.parametrize("raw, encoded", VECTORS)
def test_known_vectors(raw: str, encoded: str) -> None:
    assert cobs.decode(bytes.fromhex(encoded)) == bytes.fromhex(raw)


def test_the_254_byte_vectors() -> None:
    run = bytes(range(1, 255))
    assert cobs.decode(b"\xff" + run) == run
    assert cobs.decode(b"\x01\xff" + run) == b"\x00" + run
    assert cobs.decode(b"\xff" + run + b"\x02\xff") == run + b"\xff"
    assert cobs.decode(b"\xff" + bytes(range(2, 256)) + b"\x01\x01") == bytes(range(2, 256)) + b"\x00"


def test_agrees_with_the_reference_on_valid_and_damaged_frames() -> None:
    rng = random.Random(24)
    for _ in range(3000):
        n = rng.choice([1, 2, 253, 254, 255, 509, 3000, 40_000])
        zeros = rng.random()
        data = bytes(0 if rng.random() < zeros else rng.randrange(1, 256) for _ in range(n))
        enc = cobs.encode(data)
        assert cobs.decode(enc) == data
        bad = bytearray(enc + (bytes([rng.randrange(1, 256)]) if rng.random() < 0.3 else b""))
        bad[rng.randrange(len(bad))] = rng.randrange(256)
        outcomes = []
        for decode in (cobs.decode_reference, cobs.decode):
            try:
                outcomes.append(decode(bytes(bad)))
            except cobs.CobsDecodeError:
                outcomes.append("error")
        assert outcomes[0] == outcomes[1]


def test_maximum_frames_of_short_blocks_decode_as_the_reference() -> None:
    # the fast decoder's own case (its speed is measured by the bridge bench, not timed here)
    rng = np.random.default_rng(0)
    frames = [bytes(262_198), ((rng.random(262_198) < 0.05) * rng.integers(1, 256, 262_198)).astype(np.uint8).tobytes()]
    for data in frames:
        enc = cobs.encode(data)
        assert cobs.decode(enc) == cobs.decode_reference(enc) == data
    data = os.urandom(262_198)
    assert cobs.decode(cobs.encode(data)) == data
