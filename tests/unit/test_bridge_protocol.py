"""Bridge protocol without hardware: COBS vectors, CRC, message layouts, and a fuzzed decoder."""

from __future__ import annotations

import random
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import cobs
from firmware_bridge.codes import ErrorCode, FeatureDtype, ForgetScope, PixelFormat
from firmware_bridge.crc import CHECK_VALUE, crc32
from firmware_bridge.framing import CRC, HEADER, FrameError, Framing, McuFraming, Packet
from firmware_bridge.messages import (
    BODIES,
    Ack,
    Auth,
    AuthReply,
    Error,
    Hello,
    HelloReply,
    StateChunk,
    StateExportRequest,
    Stats,
    StatsRequest,
)
from firmware_bridge.samples import Features, Forget, ForgetOnce, Frame, Prediction, Teach, TeachOnce

# (decoded, encoded) from the COBS article on Wikipedia (delimiter not included).
_RUN_1_FE = bytes(range(1, 0xFF))
COBS_VECTORS = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (_RUN_1_FE, b"\xff" + _RUN_1_FE),
    (b"\x00" + _RUN_1_FE, b"\x01\xff" + _RUN_1_FE),
    (_RUN_1_FE + b"\xff", b"\xff" + _RUN_1_FE + b"\x02\xff"),
    (bytes(range(2, 0x100)) + b"\x00", b"\xff" + bytes(range(2, 0x100)) + b"\x01\x01"),
    (bytes(range(3, 0x100)) + b"\x00\x01", b"\xfe" + bytes(range(3, 0x100)) + b"\x02\x01"),
    (b"", b"\x01"),
]


@pytest.mark.parametrize("decoded, encoded", COBS_VECTORS)
def test_cobs_known_vectors(decoded: bytes, encoded: bytes) -> None:
    assert cobs.encode(decoded) == encoded
    if decoded:
        assert cobs.decode(encoded) == decoded


def test_cobs_random_round_trips_respect_the_size_bound() -> None:
    rng = random.Random(1)
    for _ in range(400):
        n = rng.choice([rng.randrange(0, 20), rng.randrange(0, 1200)])
        zero_rate = rng.choice([0.0, 0.01, 0.3, 1.0])
        data = bytes(0 if rng.random() < zero_rate else rng.randrange(1, 256) for _ in range(n))
        encoded = cobs.encode(data)
        assert 0 not in encoded
        assert len(encoded) <= cobs.max_encoded_size(n)
        assert cobs.decode(encoded) == data
    # The bound is tight: a run of non-zero bytes reaches it.
    assert len(cobs.encode(b"\x01" * 1000)) == cobs.max_encoded_size(1000)


@pytest.mark.parametrize("bad", [b"\x00", b"\x05\x01\x02", b"\x03\x01\x00"])
def test_cobs_rejects_invalid_encodings(bad: bytes) -> None:
    with pytest.raises(cobs.CobsDecodeError):
        cobs.decode(bad)


def test_crc32_check_value() -> None:
    assert crc32(b"123456789") == CHECK_VALUE == 0xCBF43926
    assert crc32(b"56789", crc32(b"1234")) == CHECK_VALUE


SAMPLE_BODIES = [
    Hello(8192),
    HelloReply(262144, 1280, 3, 0x3F, bytes(range(32)), "ncm", ("mammal", "bird", "fleur é")),
    HelloReply(8192, 64, 1, 0x7F, bytes(32), "knn", ("a",), nonce=bytes(range(16))),
    Auth(bytes(range(16)), bytes(range(100, 132))),
    AuthReply(bytes(range(32))),
    Ack(12),
    Error(ErrorCode.BAD_INPUT, "features have width 12, this adapter expects 1280"),
    Frame(PixelFormat.RGB888, 4, 2, bytes(range(24)), 1, 3),
    Frame(PixelFormat.JPEG, 0, 0, b"\xff\xd8\xff\xe0jpeg"),
    Features.quantize(np.linspace(-1, 2, 1280, dtype=np.float32)),
    Features.quantize(np.linspace(-1, 2, 16, dtype=np.float32), FeatureDtype.FLOAT16, top_k=5),
    Features.quantize(np.linspace(-1, 2, 16, dtype=np.float32), FeatureDtype.FLOAT32, options=1),
    Prediction(2, 0.75, ((2, 0.75), (0, 0.125)), 321),
    Teach(4, Features.quantize(np.ones(8, np.float32), FeatureDtype.FLOAT32)),
    Teach(1, Frame(PixelFormat.GRAY8, 3, 1, b"\x01\x02\x03")),
    TeachOnce(2, Features.quantize(np.ones(8, np.float32), FeatureDtype.FLOAT32), 0x0123456789ABCDEF),
    Forget(ForgetScope.ITEM, 99),
    ForgetOnce(ForgetScope.ITEM, 99, 2**64 - 1),
    StatsRequest(),
    Stats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    StateExportRequest(4096, 1024),
    StateChunk(10, 30, 0xDEADBEEF, b"0123456789"),
]


@pytest.mark.parametrize("body", SAMPLE_BODIES, ids=lambda b: type(b).__name__)
def test_every_message_survives_the_wire(body: object) -> None:
    link = Framing()
    wire = link.pack(0xFFFF, body)
    assert wire.endswith(b"\x00") and wire.count(0) == 1
    (packet,) = link.feed(wire)
    assert packet == Packet(0xFFFF, body)


def test_every_message_type_has_a_sample() -> None:
    assert {(type(b).TYPE, type(b).REPLY) for b in SAMPLE_BODIES} == set(BODIES)


def test_int8_features_keep_their_values() -> None:
    x = np.random.default_rng(0).normal(size=1280).astype(np.float32)
    sent = Features.quantize(x)
    back = Framing().feed(Framing().pack(1, sent))[0].body.to_float32()
    assert np.abs(back - x).max() <= sent.scale / 2 + 1e-7
    assert np.corrcoef(back, x)[0, 1] > 0.9999


def test_byte_at_a_time_delivery() -> None:
    link = Framing()
    wire = b"".join(link.pack(i, b) for i, b in enumerate(SAMPLE_BODIES))
    got = []
    for i in range(len(wire)):
        got += link.feed(wire[i : i + 1])
    assert [p.body for p in got] == SAMPLE_BODIES


def test_resync_after_garbage_loses_only_the_damaged_frame() -> None:
    link = Framing()
    good = [link.pack(i, Ack(i)) for i in range(3)]
    stream = b"\x13\x37garbage" + good[0] + b"\x00\x00" + good[1][:7] + b"\x00" + good[2]
    events = link.feed(stream)
    packets = [e for e in events if isinstance(e, Packet)]
    errors = [e for e in events if isinstance(e, FrameError)]
    # garbage glued to frame 0 spoils it; frame 1 is cut short; frame 2 arrives intact.
    assert [p.body for p in packets] == [Ack(2)]
    assert len(errors) == 2 and all(e.code in (ErrorCode.MALFORMED, ErrorCode.BAD_CRC) for e in errors)


def test_bad_crc_oversize_malformed_and_unknown_are_reported() -> None:
    link = McuFraming()
    raw = HEADER.pack(1, 0x02, 1, 0, 5, 4) + struct.pack("<I", 7)
    flipped = bytearray(raw + struct.pack("<I", crc32(raw)))
    flipped[9] ^= 0x10
    assert link.feed(cobs.encode(bytes(flipped)) + b"\x00")[0].code == ErrorCode.BAD_CRC
    # More bytes than the framing allows without a delimiter: reported once, then resync.
    events = link.feed(b"\x01" * (McuFraming.max_frame_size() + 10))
    assert [e.code for e in events] == [ErrorCode.OVERSIZED]
    assert link.feed(b"\x00" + link.pack(3, Ack(1)))[-1] == Packet(3, Ack(1))
    # A header announcing more than MAX_PAYLOAD.
    raw = HEADER.pack(1, 0x02, 1, 0, 6, McuFraming.MAX_PAYLOAD + 1)
    event = link.feed(cobs.encode(raw + struct.pack("<I", crc32(raw))) + b"\x00")[0]
    assert event.code in (ErrorCode.OVERSIZED, ErrorCode.MALFORMED) and event.seq == 6
    for header, code in [
        (HEADER.pack(2, 0x02, 1, 0, 7, 0), ErrorCode.BAD_VERSION),
        (HEADER.pack(1, 0x7E, 0, 0, 8, 0), ErrorCode.UNKNOWN_TYPE),
        (HEADER.pack(1, 0x02, 1, 0, 9, 3) + b"abc", ErrorCode.BAD_PAYLOAD),
    ]:
        (event,) = link.feed(cobs.encode(header + struct.pack("<I", crc32(header))) + b"\x00")
        assert event.code == code and event.seq is not None


def _check_events(events: list) -> None:
    for event in events:
        assert isinstance(event, (Packet, FrameError))
        if isinstance(event, FrameError):
            assert isinstance(event.code, ErrorCode)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes_never_raise(data: bytes) -> None:
    link = McuFraming()
    _check_events(link.feed(data))
    # After any garbage, a delimiter and a good frame get through.
    assert link.feed(b"\x00" + link.pack(1, Ack(5)))[-1] == Packet(1, Ack(5))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(SAMPLE_BODIES))), st.data())
def test_fuzz_truncations_and_bit_flips(index: int, data: st.DataObject) -> None:
    link = Framing()
    body = SAMPLE_BODIES[index]
    wire = bytearray(link.pack(42, body))
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(wire) - 2), st.integers(0, 7)), max_size=4), label="flips")
    damaged = bytearray(wire)
    for pos, bit in flips:
        damaged[pos] ^= 1 << bit
    for sample in (wire[:cut] + b"\x00", bytes(damaged)):
        events = link.feed(sample)
        _check_events(events)
        # A damaged frame is either reported or (when a flip made a 0x00) split and reported; a
        # packet only comes out if the CRC still matched, i.e. the flips cancelled out.
        for event in events:
            if isinstance(event, Packet):
                assert event == Packet(42, body)
        link.feed(b"\x00")  # resync point for the next sample
    assert link.feed(link.pack(43, body)) == [Packet(43, body)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(BODIES)), st.binary(max_size=200), st.integers(0, 0xFFFF))
def test_fuzz_valid_frames_with_random_payloads(key: tuple[int, bool], payload: bytes, seq: int) -> None:
    # CRC-valid frames whose payload is random: every layout check must answer, never raise.
    raw = HEADER.pack(1, key[0], int(key[1]), 0, seq, len(payload)) + payload
    (event,) = Framing().feed(cobs.encode(raw + struct.pack("<I", crc32(raw))) + b"\x00")
    assert isinstance(event, Packet) or (event.code == ErrorCode.BAD_PAYLOAD and event.seq == seq)


# -- revision 2: signed frames and the AUTH exchange -------------------------------------------------------
def _doc_vectors() -> dict[str, bytes]:
    """The hex test vectors of PROTOCOL.md section 5, by their row name."""
    from pathlib import Path

    import firmware_bridge

    text = (Path(firmware_bridge.__file__).parent / "PROTOCOL.md").read_text()
    rows = re.findall(r"^\| (proof_h|proof_d|STATS request[^|]*|ACK\(1\) reply[^|]*) \| `([0-9a-f ]+)` \|$", text, re.M)
    return {name.split(",")[0].split(" ")[0]: bytes.fromhex(value) for name, value in rows}


def test_protocol_md_auth_vectors_match_the_implementation() -> None:
    from firmware_bridge.auth import DeviceSession, HostSession, KeyRing

    vectors = _doc_vectors()
    assert set(vectors) == {"proof_h", "proof_d", "STATS", "ACK(1)"}
    key, nonce_d, nonce_h = bytes(range(32)), bytes(range(16)), bytes(range(16, 32))
    device = DeviceSession(KeyRing([key]))
    device.nonce = nonce_d
    reply = device.authenticate(Auth(nonce_h, vectors["proof_h"]))
    assert reply.proof == vectors["proof_d"]
    host = HostSession(key)
    host._device_nonce, host._host_nonce = nonce_d, nonce_h
    host.check_device(reply)
    link = Framing()
    request = link.pack(1, StatsRequest(), counter=host.next_counter(), sign=host.signer)
    assert cobs.decode(request[:-1]) == vectors["STATS"]
    assert cobs.decode(link.pack(1, Ack(1), counter=1, sign=device.signer)[:-1]) == vectors["ACK(1)"]


def test_signed_frames_round_trip_and_carry_what_the_mac_covers() -> None:
    from firmware_bridge.auth import frame_signer
    from firmware_bridge.framing import FLAG_SIGNED, TRAILER

    sign = frame_signer(b"k" * 32, b"n" * 16)
    link = Framing()
    for i, body in enumerate(SAMPLE_BODIES):
        wire = link.pack(i, body, counter=1000 + i, sign=sign)
        (packet,) = link.feed(wire)
        assert packet.body == body and packet.signed.counter == 1000 + i
        raw = cobs.decode(wire[:-1])
        assert raw[2] & FLAG_SIGNED and packet.signed.message == raw[: len(raw) - CRC.size - 32]
        assert packet.signed.mac == sign(packet.signed.message)
        assert len(raw) == HEADER.size + len(body.pack()) + TRAILER.size + CRC.size
    assert len(link.pack(0, Hello(8192), counter=1, sign=sign)) <= Framing.max_frame_size()


def test_device_session_refuses_missing_tampered_and_replayed_requests() -> None:
    from firmware_bridge.auth import AuthError, DeviceSession, HostSession, KeyRing

    key = bytes(range(32))
    device, host = DeviceSession(KeyRing([b"old key, rotated" * 2, key])), HostSession(key)
    with pytest.raises(AuthError) as err:
        device.admit(1, b"", b"")
    assert err.value.code == ErrorCode.AUTH_REQUIRED  # before AUTH
    host.check_device(device.authenticate(host.auth(device.new_nonce())))  # the second key of the ring matches
    wires = [Framing().pack(i, StatsRequest(), counter=host.next_counter(), sign=host.signer) for i in range(3)]
    packets = [Framing().feed(w)[0] for w in wires]
    device.admit(*packets[1].signed)  # counter 2: accepted (counters may skip, never go back)
    for packet, code in [(packets[0], ErrorCode.REPLAYED), (packets[1], ErrorCode.REPLAYED)]:
        with pytest.raises(AuthError) as err:
            device.admit(*packet.signed)
        assert err.value.code == code
    counter, mac, message = packets[2].signed
    with pytest.raises(AuthError) as err:
        device.admit(counter, mac, message[:-1] + bytes([message[-1] ^ 1]))
    assert err.value.code == ErrorCode.BAD_MAC
    with pytest.raises(AuthError) as err:
        device.admit(None, b"", b"")
    assert err.value.code == ErrorCode.AUTH_REQUIRED
    device.admit(counter, mac, message)
    with pytest.raises(AuthError) as err:  # a wrong proof spends the nonce
        device.authenticate(Auth(bytes(16), bytes(32)))
    assert err.value.code == ErrorCode.AUTH_FAILED and not device.authenticated


def test_key_files_must_be_private_and_hold_hex_keys(tmp_path) -> None:
    from edge_runtime.errors import InputError
    from firmware_bridge.auth import read_keys, write_key_file

    path = write_key_file(tmp_path / "k", [bytes(range(32)), bytes(16)])
    assert (path.stat().st_mode & 0o777) == 0o600 and read_keys(path) == [bytes(range(32)), bytes(16)]
    with pytest.raises(InputError, match="exists"):
        write_key_file(path, [bytes(32)])
    path.chmod(0o640)
    with pytest.raises(InputError, match="mode 0640"):
        read_keys(path)
    for text, message in [("zz\n", "hex digits"), ("00ff\n", "at least 16"), ("# only a comment\n", "holds no key")]:
        path.write_text(text)
        path.chmod(0o600)
        with pytest.raises(InputError, match=message):
            read_keys(path)
