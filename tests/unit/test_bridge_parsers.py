"""Issue #24, part 4: every input is checked before use, signed ones too.

Fleet payloads (a huge shape, deep JSON, hostile MQTT messages), HELLO names, key files, SIGHUP,
``edgert fleet status`` rows and the strings ``export-c`` writes into C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_runtime.adapters.ncm import NCM
from edge_runtime.cli.fleet import presence_row
from edge_runtime.errors import InputError
from edge_runtime.fleet.payload import PREFIX, PayloadError, decode, encode
from edge_runtime.fleet.sync import FleetSync
from firmware_bridge.auth import KeyRing, read_keys, write_key_file
from firmware_bridge.device import BridgeDevice
from firmware_bridge.export_c import _c_comment, _c_string, export_c
from firmware_bridge.framing import McuFraming, Packet
from firmware_bridge.messages import Hello, HelloReply
from firmware_bridge.payload import utf8_prefix

KEY = bytes(range(32))


def _signed(header_text: bytes, body: bytes = b"") -> bytes:
    raw = PREFIX.pack(b"EGFL", 1, 1, 0, len(header_text)) + header_text + body
    import hashlib
    import hmac

    return raw + hmac.new(KEY, raw, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "header",
    [
        b'{"arrays": [["a", "|u1", [4294967296, 4294967296, 4294967296]]]}',  # 2**96 bytes: overflowed int64 before
        b'{"arrays": [["a", "<f8", [-1]]]}',
        b'{"arrays": [["a", "<f8", [true]]]}',
        b'{"arrays": [["a", "<f8", [1,1,1,1,1,1,1,1,1]]]}',
        b'{"arrays": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deep nesting: RecursionError before
        b"[" * 50_000 + b"]" * 50_000,
    ],
)
def test_a_validly_signed_but_malformed_payload_is_malformed(header: bytes) -> None:
    with pytest.raises(PayloadError) as err:
        decode(_signed(header, bytes(64)), [KEY], max_bytes=1 << 22)
    assert err.value.kind == "malformed"


def _sync(**kw) -> FleetSync:
    rng = np.random.default_rng(0)
    ncm = NCM().fit(rng.normal(size=(12, 8)).astype(np.float32), np.arange(12) % 3)
    return FleetSync(ncm, "mqtt://127.0.0.1:1/shop", "cam1", [KEY], "ab" * 32, log=lambda line: None, **kw)


def test_hostile_mqtt_messages_never_end_the_client_thread_and_the_inbox_is_bounded() -> None:
    sync = _sync(max_inbox=2)
    topic = sync.topic("delta", "cam2")
    hostile = [
        _signed(b'{"arrays": [["a", "|u1", [4294967296, 4294967296]]]}'),
        _signed(b"[" * 60_000 + b"]" * 60_000),
        b"\x00" * 10,
        b"",
        os.urandom(300),
        _signed(json.dumps({"kind": "delta", "device": "cam2", "seq": True, "arrays": []}).encode()),
    ]
    for payload in hostile:
        sync._on_message(None, None, SimpleNamespace(topic=topic, payload=payload))
    assert sum(sync.rejected.values()) == len(hostile) and sync._inbox.qsize() == 0
    good = {"kind": "delta", "device": "cam2", "model": sync.model_sha256, "memory": sync.fingerprint}
    for seq in range(1, 6):
        sync._on_message(None, None, SimpleNamespace(topic=topic, payload=encode({**good, "seq": seq}, {}, KEY)))
    assert sync._inbox.qsize() == 2 and sync.rejected["overflow"] == 3
    before = {k: v.copy() for k, v in sync.adapter.statistics().items()}
    sync._apply_inbox()  # well-signed but empty statistics: refused by the ledger, memory unchanged
    after = sync.adapter.statistics()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_signed_delta_the_memory_refuses_leaves_the_ledger_untouched() -> None:
    """Fractional NCM counts, well signed: refused before the ledger takes the peer's update, so
    the same sequence number, sent again well-formed, is applied (before, the ledger recorded the
    bad delta, then add_statistics raised out of the stream's step)."""
    from edge_runtime.fleet.ledger import pack

    sync = _sync()
    peer = NCM.from_state_dict(sync.adapter.state_dict())
    x = np.ones((1, 8), np.float32)
    good = peer.taught_statistics(x, np.array([1]))
    bad = {"source": good["source"] * 0.5}
    header = {"kind": "delta", "device": "cam2", "seq": 1, "model": sync.model_sha256, "memory": sync.fingerprint}
    topic = sync.topic("delta", "cam2")
    before = sync.adapter.statistics()["source"].copy()
    sync._on_message(None, None, SimpleNamespace(topic=topic, payload=encode(header, pack(bad), KEY)))
    assert sync._apply_inbox() == 0 and sync.rejected["malformed"] == 1
    assert np.array_equal(sync.adapter.statistics()["source"], before) and "cam2" not in sync.ledger.peers
    sync._on_message(None, None, SimpleNamespace(topic=topic, payload=encode(header, pack(good), KEY)))
    assert sync._apply_inbox() == 1 and sync.ledger.peers["cam2"].seq == 1
    np.testing.assert_array_equal(sync.adapter.statistics()["source"], before + good["source"])


def test_the_broker_is_asked_not_to_send_large_messages() -> None:
    sync = _sync()
    assert sync.max_message < 64 << 20


@pytest.mark.parametrize(
    "payload",
    [
        b"[1, 2]",
        b'{"device": {"x": 1}, "t": "soon", "seq": [1], "model": null}',
        b"\xff\xfe",
        b"[" * 10_000,
        b'{"device": "\\u001b[31mred", "t": 1e999}',
    ],
)
def test_fleet_status_rows_survive_any_presence_message(payload: bytes) -> None:
    row = presence_row("edgert/shop/abc/presence/cam9", payload)
    assert isinstance(row["device"], str) and row["device"].isprintable()
    for name in ("seq", "bytes_sent", "t"):
        assert name not in row or type(row[name]) in (int, float)
    line = f"{row['device']:<16} {row.get('model', '?'):<13} {row.get('seq', '?'):>11} {row.get('bytes_sent', '?'):>12}"
    assert line


def test_hello_names_are_cut_on_a_utf8_boundary_and_too_many_never_crash() -> None:
    assert utf8_prefix("é" * 200, 255).decode("utf-8") == "é" * 127
    reply = HelloReply(8192, 4, 3, 0, bytes(32), "ncm", ("é" * 200, "ok", "日本" * 100))
    assert Hello.unpack(reply.pack()).classes == ("é" * 127, "ok", ("日本" * 100)[:85])
    names = [f"class-{i:05d}" for i in range(70_000)]
    rng = np.random.default_rng(0)
    device = BridgeDevice(
        NCM().fit(rng.normal(size=(4, 4)).astype(np.float32), np.arange(4) % 2), classes=names[:2], framing=McuFraming
    )
    device.classes = names  # a device with more names than one HELLO can carry
    (reply,) = device.handle_batch([Packet(1, Hello(8192))])[0]
    wire = McuFraming().pack(1, reply.body)  # used to raise: the stdio server died here
    (packet,) = McuFraming().feed(wire)
    assert 0 < len(packet.body.classes) < len(names) and packet.body.classes[0] == names[0]


def test_a_key_file_of_raw_bytes_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "raw.key"
    path.write_bytes(os.urandom(32) + b"\xff")
    path.chmod(0o600)
    with pytest.raises(InputError, match="not text"):
        read_keys(path)


def test_sighup_with_a_bad_key_file_keeps_the_old_keys(tmp_path: Path, capsys) -> None:
    from edge_runtime.runtime.shutdown import Shutdown
    from firmware_bridge.cli import _reload_keys

    path = write_key_file(tmp_path / "k", [KEY])
    ring = KeyRing.from_file(path)
    reloaded = threading.Event()
    with Shutdown() as shutdown:
        shutdown.on_signal(signal.SIGHUP, lambda: (_reload_keys(ring), reloaded.set()))
        path.write_bytes(b"\xff\xfe raw")
        os.kill(os.getpid(), signal.SIGHUP)
        assert reloaded.wait(10)
    assert ring.keys == [KEY] and not shutdown.requested.is_set()
    assert "not reloaded, the previous keys stay" in capsys.readouterr().err


def test_export_c_refuses_a_crafted_sha_and_escapes_every_string(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ncm = NCM().fit(rng.normal(size=(6, 4)).astype(np.float32), np.arange(6) % 2)
    with pytest.raises(InputError, match="64 lowercase hex"):
        export_c(ncm, tmp_path / "a", classes=["a", "b"], model_sha256='"; int evil = 1; //')
    names = ['a"; int evil = 1; //', "b\\\n*/ #include </etc/passwd> /*"]
    result = export_c(ncm, tmp_path / "b", classes=names, model_sha256="ab" * 32, source="x*/ int evil; /*.npz")
    text = result.header.read_text()
    assert "int evil" not in text.replace(_c_string(names[0]), "").replace(_c_comment("x*/ int evil; /*.npz"), "")
    assert text.count("*/") == text.count("/*")
    if subprocess.run(["which", "cc"], capture_output=True).returncode == 0:
        probe = tmp_path / "probe.c"
        probe.write_text('#include "edgert_memory.h"\nint main(void) { return edgert_class_names[0][0] != 97; }\n')
        run = subprocess.run(
            ["cc", "-std=c99", "-fsyntax-only", f"-I{result.header.parent}", str(probe)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
