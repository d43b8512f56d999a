"""Attacks on the bridge that load it (issue #24): strangers holding sockets while peers flood
STATE_EXPORT, and fuzzed fleet payloads and HELLOs. ``bench/attacks.py`` runs them with the rest."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bridge_server import ServerProcess, connect, memory_file

STRANGERS = 256
# A flooder: write the same pipelined requests on an inherited socket for ever, never read (bounded by
# the server closing it, or by the bench killing it after the measurement).
POUR = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
sock.settimeout(60)
data = open(sys.argv[2], "rb").read()
try:
    for _ in range(100000):
        sock.sendall(data)
except OSError:
    pass
"""


def _paced_rtts(client: Any, rows: np.ndarray, n: int, rate: float) -> list[float]:
    out = []
    due = time.perf_counter()
    for i in range(n):
        due += 1.0 / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter()
        client.classify(rows[i % len(rows)], read_only=True)
        out.append(time.perf_counter() - t0)
    return out


def flood(work: Path, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    from edge_runtime.adapters.ncm import NCM
    from firmware_bridge.auth import write_key_file
    from firmware_bridge.messages import StateExportRequest

    key = os.urandom(32)
    key_file = write_key_file(work / "flood.key", [key])
    dim = 1280
    memory = memory_file(work / "flood-memory.npz", NCM(), dim)
    args = [
        "--key-file",
        str(key_file),
        "--adapter",
        "ncm",
        "--memory",
        str(memory),
        "--max-connections",
        "64",
        "--idle-timeout",
        "60",
    ]
    rows = np.random.default_rng(1).normal(size=(50, dim)).astype(np.float32)
    started = time.monotonic()
    with ServerProcess(*args) as server:
        url = server.wait_listening()
        host, port = url[len("tcp://") :].rsplit(":", 1)
        victim = connect(url, key)
        victim.hello()
        alone = _paced_rtts(victim, rows, n, 25.0)
        rss_before = server.rss_kb()
        strangers = []
        for _ in range(STRANGERS):
            try:
                strangers.append(socket.create_connection((host, int(port)), timeout=5))
            except OSError:
                break
        flooders = []
        for _ in range(2):
            f = connect(url, key)
            f.hello()
            wire = b"".join(f.frame(StateExportRequest(0, 1 << 20))[1] for _ in range(4000))
            flooders.append((f, wire))
        # Each flooder pours from a process of its own (its socket handed over), so that its loop
        # never competes with the measured client for this process's GIL.
        pourers = []
        for i, (f, wire) in enumerate(flooders):
            blob = work / f"flood-{i}.bin"
            blob.write_bytes(wire)
            fd = f.transport._sock.fileno()
            pourers.append(
                subprocess.Popen(
                    [sys.executable, "-c", POUR, str(fd), str(blob)],
                    pass_fds=[fd],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)
        victim.transport.close()
        victim = connect(url, key)  # a key holder connecting while the strangers hold their sockets
        victim.hello()
        loaded = _paced_rtts(victim, rows, n, 25.0)
        rss_peak = server.rss_kb()
        alive = server.proc.poll() is None
        for proc in pourers:
            proc.kill()
            proc.wait(10)
        for sock in strangers:
            sock.close()
        for f, _ in flooders:
            f.transport.close()
        victim.transport.close()
        server.send(15)
        code = server.wait()
        evicted = sum("evicted" in line for line in server.lines)
    p_alone, p_loaded = float(np.percentile(alone, 99)) * 1e3, float(np.percentile(loaded, 99)) * 1e3
    return {
        "requests": n,
        "strangers": len(strangers),
        "flooders": len(flooders),
        "p99_alone_ms": p_alone,
        "p50_alone_ms": float(np.percentile(alone, 50)) * 1e3,
        "p50_flooded_ms": float(np.percentile(loaded, 50)) * 1e3,
        "p99_flooded_ms": p_loaded,
        "p99_ratio": p_loaded / p_alone,
        "rss_growth_mb": (rss_peak - rss_before) / 1024,
        "alive": alive,
        "exit_code": code,
        "evicted": evicted,
        "seconds": time.monotonic() - started,
    }


# -- payload fuzz -----------------------------------------------------------------------------------------
def payload_fuzz(n: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    import hashlib
    import hmac
    import json
    from types import SimpleNamespace

    from edge_runtime.adapters.ncm import NCM
    from edge_runtime.errors import PayloadError
    from edge_runtime.fleet.payload import PREFIX, encode
    from edge_runtime.fleet.sync import FleetSync
    from firmware_bridge.device import BridgeDevice
    from firmware_bridge.framing import Framing, McuFraming, Packet
    from firmware_bridge.messages import Hello, HelloReply

    rng = random.Random(seed)
    key = os.urandom(32)
    ncm = NCM().fit(np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32), np.arange(12) % 3)
    sync = FleetSync(ncm, "mqtt://127.0.0.1:1/shop", "cam1", [key], "ab" * 32, log=lambda line: None)
    topic = sync.topic("delta", "cam2")
    before = {k: v.copy() for k, v in ncm.statistics().items()}
    good = {"kind": "delta", "device": "cam2", "model": sync.model_sha256, "memory": sync.fingerprint}
    deaths = accepted = 0
    started = time.monotonic()

    def hostile_header() -> bytes:
        choice = rng.randrange(6)
        if choice == 0:
            return b"[" * rng.choice([1, 100, 10_000, 60_000])
        if choice == 1:
            shape = [rng.choice([0, 1, 2**31, 2**32, 2**62, -1, 10**30]) for _ in range(rng.randint(0, 12))]
            return json.dumps({**good, "seq": rng.randint(-2, 3), "arrays": [["source.values", "<f8", shape]]}).encode()
        if choice == 2:
            return json.dumps({**good, "seq": rng.choice([True, 1.5, "1", None, 2**70]), "arrays": []}).encode()
        if choice == 3:
            return rng.randbytes(rng.randint(0, 300))
        if choice == 4:
            return json.dumps(
                {
                    **good,
                    "seq": 1,
                    "arrays": [
                        [rng.choice(["a", "", 5, None]), rng.choice(["<f8", "O", "<U4", 3]), [rng.randint(0, 5)]]
                        for _ in range(rng.randint(1, 100))
                    ],
                }
            ).encode()
        arrays = {
            "source.classes": np.array([rng.randint(-5, 5)], np.int64),
            "source.values": np.full(
                (rng.randint(0, 3), 1, rng.randint(0, 12)), rng.choice([np.nan, np.inf, 1e308, 1.0])
            ),
        }
        return encode({**good, "seq": 1}, arrays, None)[PREFIX.size :]

    for i in range(n):
        header = hostile_header()
        body = rng.randbytes(rng.randint(0, 64))
        raw = PREFIX.pack(b"EGFL", 1, 1, 0, len(header)) + header + body
        mode = rng.randrange(3)
        if mode == 0:
            payload = raw + hmac.new(key, raw, hashlib.sha256).digest()  # signed with the fleet key
        elif mode == 1:
            payload = raw + hmac.new(os.urandom(32), raw, hashlib.sha256).digest()
        else:
            payload = PREFIX.pack(b"EGFL", 1, 0, 0, len(header)) + header + body
        try:
            sync._on_message(None, None, SimpleNamespace(topic=topic, payload=payload))
            sync._apply_inbox()
        except Exception:
            deaths += 1
    after = ncm.statistics()
    changed = not all(np.array_equal(before[k], after[k]) for k in before)
    accepted = sum(sync.counts.values())

    # HELLO: hostile payloads decoded by a host, hostile class names packed by a device
    hello_crashes = 0
    device = BridgeDevice(NCM().fit(np.eye(4, dtype=np.float32), np.arange(4) % 2), classes=["a", "b"])
    alphabet = [
        chr(c)
        for c in [*range(32, 127), *range(0x80, 0x800, 7), *range(0x800, 0xD800, 97), *range(0x10000, 0x10FFFF, 4099)]
    ]
    pool = [
        "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 84, 85, 86, 127, 128, 255, 300])))
        for _ in range(400)
    ]
    for i in range(n):
        payload = rng.randbytes(rng.randint(0, 120))
        try:
            Hello.unpack(payload)
        except PayloadError:
            pass
        except Exception:
            hello_crashes += 1
        names = rng.choices(pool, k=rng.choice([1, 2, 50, 3000]))
        device.classes = names
        framing = McuFraming if rng.random() < 0.5 else Framing
        device.framing = framing
        try:
            (reply,) = device.handle_batch([Packet(1, Hello(8192))])[0]
            packet = framing().feed(framing().pack(1, reply.body))[0]
            assert isinstance(packet.body, HelloReply)
        except Exception:
            hello_crashes += 1
        if (i + 1) % max(1, n // 4) == 0:
            log(f"faults: payload fuzz {i + 1}/{n}: {deaths} thread deaths, {hello_crashes} HELLO crashes")
    return {
        "fleet_payloads": n,
        "thread_deaths": deaths,
        "memory_changed": changed,
        "accepted": accepted,
        "rejected": dict(sync.rejected),
        "hellos": n,
        "hello_crashes": hello_crashes,
        "seconds": time.monotonic() - started,
    }


# -- base change ------------------------------------------------------------------------------------------
