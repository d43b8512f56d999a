"""``edgert bridge serve`` as a real process on real sockets: durability under signals, many peers,
keys, and bad requests that change nothing.

Every wait is on an event (a line on the server's stderr, a reply, a closed socket), never a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.adapters.ncm import NCM
from edge_runtime.bench.faults import CLASSES, ServerProcess, connect
from edge_runtime.state import read_state, write_state
from firmware_bridge import cobs
from firmware_bridge.auth import write_key_file
from firmware_bridge.client import BridgeError
from firmware_bridge.codes import Capability, ErrorCode, FeatureDtype, PixelFormat
from firmware_bridge.crc import crc32
from firmware_bridge.framing import CRC, Framing
from firmware_bridge.messages import Stats, StatsRequest
from firmware_bridge.samples import Features, Frame, Teach

DIM = 32


def _memory(tmp_path: Path, sha: str = "") -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, DIM)).astype(np.float32) + np.repeat(np.eye(4, DIM, dtype=np.float32) * 4, 10, axis=0)
    return write_state(
        tmp_path / "memory.npz",
        NCM().fit(x, np.repeat(np.arange(4), 10)),
        kind="memory",
        model_sha256=sha,
        classes=CLASSES,
    )


def _counts(client) -> np.ndarray:
    """The device's per-class counts (NCM), from its exported state."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.npz"
        path.write_bytes(client.export_state())
        return read_state(path).adapter._counts.copy()


def _row(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


# -- durability ----------------------------------------------------------------------------------------
def test_kill_9_right_after_an_ack_keeps_that_teach(tmp_path: Path) -> None:
    args = ("--memory", str(_memory(tmp_path)), "--state", str(tmp_path / "state"))
    with ServerProcess(*args) as server:
        client = connect(server.wait_listening())
        assert client.hello().capabilities & Capability.DURABLE
        before = _counts(client)
        assert client.teach(2, _row(1)) == 1
        server.send(signal.SIGKILL)  # the instant the ACK is in: nothing after it may matter
        assert server.wait() == -signal.SIGKILL
    with ServerProcess(*args) as server:
        client = connect(server.wait_listening())
        after = _counts(client)
        assert after[2] == before[2] + 1 and after.sum() == before.sum() + 1
        assert any("replayed 1 journal records" in line for line in server.lines)


def test_sigterm_finishes_cleanly_with_a_checkpoint_and_a_summary(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ServerProcess("--memory", str(_memory(tmp_path)), "--state", str(state)) as server:
        client = connect(server.wait_listening())
        client.teach(1, _row(2))
        idle = connect(server.url)  # a second peer waiting for bytes does not hold the shutdown up
        server.send(signal.SIGTERM)
        assert server.wait() == 0
        idle.transport.close()
    summary = server.lines[-1]
    assert summary.startswith("edgert bridge: stopped by SIGTERM") and "1 teaches" in summary
    (checkpoint,) = state.glob("checkpoint-*.npz")
    assert read_state(checkpoint).adapter._counts.sum() == 41


def test_sigint_right_after_start_exits_cleanly(tmp_path: Path, exported) -> None:
    with ServerProcess(
        "--model", str(exported["int8.tflite"]), "--classes", ",".join(CLASSES), "--state", str(tmp_path / "state")
    ) as server:
        server.wait_for("loading")  # the first line: the handlers are in place, the model is loading
        server.send(signal.SIGINT)
        assert server.wait() == 0
    assert server.lines[-1].startswith("edgert bridge: stopped by SIGINT")


# -- many peers ----------------------------------------------------------------------------------------
def test_an_idle_peer_does_not_block_a_second_one(tmp_path: Path) -> None:
    with ServerProcess("--memory", str(_memory(tmp_path))) as server:
        url = server.wait_listening()
        host, port = url[len("tcp://") :].rsplit(":", 1)
        silent = socket.create_connection((host, int(port)))
        half = socket.create_connection((host, int(port)))
        wire = Framing().pack(1, Features.quantize(_row(3)))
        half.sendall(wire[: len(wire) // 2])
        client = connect(url, timeout=10)
        assert client.hello().classes == tuple(CLASSES)
        assert client.classify(_row(4)).label in range(4)
        silent.close()
        half.close()


def test_idle_and_half_frame_peers_are_closed_with_timeout(tmp_path: Path) -> None:
    with ServerProcess("--memory", str(_memory(tmp_path)), "--idle-timeout", "0.5", "--frame-timeout", "0.5") as server:
        url = server.wait_listening()
        idle = connect(url, timeout=30)
        reply = idle.receive(timeout=30)  # the device speaks first: TIMEOUT, then it closes
        assert reply.body.code == ErrorCode.TIMEOUT and "idle for 0.5 s" in reply.body.message
        with pytest.raises(BridgeError, match="closed the link"):
            idle.receive(timeout=30)
        half = connect(url, timeout=30)
        half.transport.write(Framing().pack(1, Features.quantize(_row(5)))[:40])
        reply = half.receive(timeout=30)
        assert reply.body.code == ErrorCode.TIMEOUT and "frame took over" in reply.body.message


def test_a_peer_beyond_the_cap_is_refused_with_busy(tmp_path: Path) -> None:
    with ServerProcess("--memory", str(_memory(tmp_path)), "--max-connections", "2") as server:
        url = server.wait_listening()
        first, second = connect(url), connect(url)
        first.hello()
        second.hello()
        third = connect(url)
        with pytest.raises(BridgeError) as err:
            third.hello()
        assert err.value.code == ErrorCode.BUSY
        second.transport.close()  # a slot frees up: the next peer is served
        assert first.stats().features == 0


# -- keys ----------------------------------------------------------------------------------------------
def _raw_request(client, body, *, sign: bool = True) -> bytes:
    return client.frame(body)[1] if sign else Framing().pack(9, body)


def _reply_code(client, wire: bytes) -> int:
    client.transport.write(wire)
    event = client.receive(timeout=30)
    return event.body.code


def test_wrong_key_missing_mac_replay_and_tampering_are_refused_and_change_nothing(tmp_path: Path) -> None:
    key, other = os.urandom(32), os.urandom(32)
    key_file = write_key_file(tmp_path / "device.key", [key])
    with ServerProcess("--memory", str(_memory(tmp_path)), "--key-file", str(key_file)) as server:
        url = server.wait_listening()
        with pytest.raises(BridgeError) as err:
            connect(url, other).hello()
        assert err.value.code == ErrorCode.AUTH_FAILED
        with pytest.raises(BridgeError) as err:
            connect(url).teach(0, _row(6))  # no key at all
        assert err.value.code == ErrorCode.AUTH_REQUIRED
        client = connect(url, key)
        assert client.hello().capabilities & Capability.AUTH
        before = _counts(client)
        teach = Teach(3, Features.quantize(_row(7), FeatureDtype.FLOAT32))
        assert _reply_code(client, _raw_request(client, teach, sign=False)) == ErrorCode.AUTH_REQUIRED
        signed = _raw_request(client, teach)
        client.transport.write(signed)
        assert client.receive(timeout=30).body.count == 1  # the genuine one is taught once ...
        assert _reply_code(client, signed) == ErrorCode.REPLAYED  # ... and its replay refused
        raw = bytearray(cobs.decode(_raw_request(client, teach)[:-1]))
        raw[10] ^= 0x04  # the label: 3 -> 7, a BAD_INPUT if the MAC went unchecked; the CRC made right again
        body = bytes(raw[: -CRC.size])
        assert _reply_code(client, cobs.encode(body + CRC.pack(crc32(body))) + b"\x00") == ErrorCode.BAD_MAC
        after = _counts(client)
        assert after[3] == before[3] + 1 and after.sum() == before.sum() + 1
        assert client.stats().teaches == 1


def test_key_rotation_with_sighup(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    key_file = tmp_path / "device.key"
    write_key_file(key_file, [old])
    with ServerProcess("--memory", str(_memory(tmp_path)), "--key-file", str(key_file)) as server:
        url = server.wait_listening()
        connect(url, old).hello()
        staged = tmp_path / "next.key"
        assert (
            subprocess.run(
                [sys.executable, "-m", "edge_runtime.cli", "bridge", "keygen", str(staged), "--keep", str(key_file)],
                capture_output=True,
            ).returncode
            == 0
        )
        staged.write_text(new.hex() + "\n" + old.hex() + "\n")  # the key keygen drew, replaced by one we know
        os.replace(staged, key_file)

        def reloaded(n: int) -> None:
            server.send(signal.SIGHUP)
            server.wait_for("SIGHUP", count=n)

        reloaded(1)
        connect(url, new).hello()
        connect(url, old).hello()  # both accepted while hosts move over
        staged.write_text(new.hex() + "\n")
        staged.chmod(0o600)
        os.replace(staged, key_file)
        reloaded(2)
        connect(url, new).hello()
        with pytest.raises(BridgeError) as err:
            connect(url, old).hello()
        assert err.value.code == ErrorCode.AUTH_FAILED


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_exposed_without_a_key_or_with_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    memory = str(_memory(tmp_path))
    done = _cli("bridge", "serve", "--port", "tcp://0.0.0.0:0", "--memory", memory)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "refusing to serve tcp://0.0.0.0:0 without a key" in line and "--insecure" in line
    key_file = tmp_path / "open.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o644)
    done = _cli("bridge", "serve", "--port", "tcp://127.0.0.1:0", "--memory", memory, "--key-file", str(key_file))
    assert done.returncode == 2 and "has mode 0644" in done.stderr and "chmod 600" in done.stderr


def test_insecure_serves_all_interfaces_with_a_warning(tmp_path: Path) -> None:
    with ServerProcess("--memory", str(_memory(tmp_path)), "--insecure", port="tcp://0.0.0.0:0") as server:
        url = server.wait_listening()
        assert any("WARNING: serving tcp://0.0.0.0:0 without a key" in line for line in server.lines)
        assert connect(url.replace("0.0.0.0", "127.0.0.1")).hello().classes == tuple(CLASSES)


# -- bad requests change nothing -----------------------------------------------------------------------
def test_bad_requests_get_bad_input_and_the_server_keeps_serving(tmp_path: Path, exported) -> None:
    from edge_runtime.model.card import load_card

    model = exported["int8.tflite"]
    sha = load_card(model).sha256
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 1280)).astype(np.float32)
    memory = write_state(
        tmp_path / "m.npz", NCM().fit(x, np.arange(8) % 4), kind="memory", model_sha256=sha, classes=CLASSES
    )
    with ServerProcess("--memory", str(memory), "--model", str(model), "--threads", "1") as server:
        client = connect(server.wait_listening())
        before = _counts(client)
        huge = x[0].copy()
        huge[5] = 3e38
        bad = [
            Teach(0, Features.quantize(np.ones(5, np.float32))),  # the wrong width
            Teach(9, Features.quantize(x[0])),  # a label outside the classes
            Teach(0, Features(huge, FeatureDtype.FLOAT32)),  # out of range
            Teach(0, Features(np.full(1280, np.nan, np.float32), FeatureDtype.FLOAT32)),
            Teach(0, Frame(PixelFormat.JPEG, 0, 0, b"")),  # an empty image
            Frame(PixelFormat.JPEG, 0, 0, b""),
            Frame(PixelFormat.GRAY8, 0, 0, b""),
            Frame(PixelFormat.JPEG, 0, 0, b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff"),  # 4 gigapixels
            Frame(PixelFormat.JPEG, 0, 0, b"\xff\xd8 not a jpeg"),
        ]
        messages = []
        for body in bad:
            with pytest.raises(BridgeError) as err:
                client.request(body)
            assert err.value.code == ErrorCode.BAD_INPUT, err.value
            messages.append(str(err.value))
        assert "width 5, this device expects 1280" in messages[0] and "label 9 is outside" in messages[1]
        assert "3e+38" in messages[2] and "NaN" in messages[3] and "empty JPEG" in messages[4]
        assert "0x0 pixels" in messages[6] and "65535x65535" in messages[7]
        np.testing.assert_array_equal(_counts(client), before)
        assert client.teach(1, x[1]) == 1 and client.classify(x[2]).label in range(4)
        stats = client.request(StatsRequest())
        assert isinstance(stats, Stats) and stats.teaches == 1 and stats.errors == len(bad)
