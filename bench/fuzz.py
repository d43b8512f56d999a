"""The faults bench's fuzz: frames of every kind of damage at a keyed, journaled device (``edgert bench faults``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_runtime.bench.bridge_server import ServerProcess, connect, memory_file


class RawBody:
    """A message of any type and reply flag with a given payload: lets the fuzzer sign what no layout allows."""

    def __init__(self, kind: int, reply: bool, payload: bytes) -> None:
        self.TYPE, self.REPLY, self._payload = kind, reply, payload

    def pack(self) -> bytes:
        return self._payload


class Fuzzer:
    """Builds one hostile frame at a time for a keyed device, over an authenticated client that probes it."""

    def __init__(self, url: str, key: bytes, dim: int, seed: int) -> None:
        self.url = url
        self.key = key
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.history: list[bytes] = []  # signed frames sent, for replays
        self.client: Any = None
        self.reconnects = 0
        self.jpeg = self._jpeg()

    @staticmethod
    def _jpeg() -> bytes:
        import cv2

        image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        return cv2.imencode(".jpg", image)[1].tobytes()

    def open(self) -> None:
        """A fresh connection, authenticated."""
        if self.client is not None:
            self.client.transport.close()
            self.reconnects += 1
        self.client = connect(self.url, self.key)
        self.client.hello()

    def signed(self, body: Any) -> bytes:
        wire = self.client.frame(body)[1]
        self.history = (self.history + [wire])[-50:]
        return wire

    def unsigned(self, body: Any) -> bytes:
        from firmware_bridge.framing import Framing

        return Framing().pack(0, body)  # seq 0: never the seq of a probe

    def _features(self) -> Any:
        from firmware_bridge.codes import FeatureDtype
        from firmware_bridge.samples import Features

        rng = self.rng
        dim = self.dim if rng.random() < 0.6 else int(rng.choice([0, 1, 5, self.dim - 1, self.dim + 1, 4000]))
        x = rng.normal(size=dim).astype(np.float32)
        if dim and rng.random() < 0.3:
            x[int(rng.integers(dim))] = rng.choice([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e13])
        if rng.random() < 0.05:
            x[:] = 0
        dtype = FeatureDtype(int(rng.integers(3)))
        options, top_k = int(rng.integers(2)), int(rng.integers(0, 256))
        if dtype == FeatureDtype.INT8:
            q = rng.integers(-128, 128, dim).astype(np.int8)
            scale = float(rng.choice([1.0, 0.01, 0.0, -1.0, np.nan, np.inf, 1e30]))
            return Features(q, dtype, scale, options=options, top_k=top_k)
        with np.errstate(over="ignore"):  # 3e38 as float16 is inf: one more bad value to send
            values = x.astype(np.float16 if dtype == FeatureDtype.FLOAT16 else np.float32)
        return Features(values, dtype, options=options, top_k=top_k)

    def _frame(self) -> Any:
        from firmware_bridge.codes import PixelFormat
        from firmware_bridge.samples import Frame

        rng = self.rng
        r = rng.random()
        if r < 0.25:
            return Frame(PixelFormat.JPEG, 0, 0, b"", int(rng.integers(2)))
        if r < 0.45:
            data = bytearray(self.jpeg)
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            return Frame(PixelFormat.JPEG, 0, 0, bytes(data[: int(rng.integers(2, len(data) + 1))]))
        if r < 0.55:
            return Frame(
                PixelFormat.JPEG, 0, 0, bytes(rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8))
            )
        if r < 0.6:
            return Frame(PixelFormat.JPEG, 0, 0, self.jpeg, options=1)
        fmt = PixelFormat(int(rng.integers(1, 4)))
        w, h = (int(v) for v in rng.choice([0, 1, 2, 3, 17, 64], size=2))
        channels = 1 if fmt == PixelFormat.GRAY8 else 3
        return Frame(fmt, w, h, bytes(rng.integers(0, 256, w * h * channels, dtype=np.uint8)), options=1)

    KINDS = {
        "random": 0.08,
        "flip": 0.08,
        "truncate": 0.06,
        "oversize": 0.005,
        "random_payload": 0.15,
        "features": 0.18,
        "frame": 0.08,
        "teach": 0.12,
        "forget": 0.04,
        "export": 0.03,
        "wrong_key": 0.03,
        "unsigned": 0.045,
        "replay": 0.04,
        "tamper": 0.045,
        "hello": 0.01,
    }

    def case(self) -> tuple[str, bytes]:
        """(kind, bytes to write) for one fuzzed frame."""
        from firmware_bridge import cobs
        from firmware_bridge.codes import ForgetScope
        from firmware_bridge.crc import crc32
        from firmware_bridge.framing import CRC, TRAILER, Framing
        from firmware_bridge.messages import BODIES, Auth, Hello, StateExportRequest, StatsRequest
        from firmware_bridge.samples import Forget, Teach

        rng = self.rng
        kind = str(rng.choice(list(self.KINDS), p=np.array(list(self.KINDS.values())) / sum(self.KINDS.values())))
        if kind == "random":
            return kind, bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8)) + b"\x00"
        if kind == "oversize":
            return kind, bytes(rng.integers(1, 256, Framing.max_frame_size() + 100, dtype=np.uint8)) + b"\x00"
        if kind == "random_payload":  # every message type, either direction, random payload, correctly signed
            msg_type, reply = list(BODIES)[int(rng.integers(len(BODIES)))]
            payload = bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
            return kind, self.signed(RawBody(msg_type, reply, payload))
        if kind == "features":
            return kind, self.signed(self._features())
        if kind == "frame":
            return kind, self.signed(self._frame())
        if kind == "teach":
            label = int(rng.choice([0, 1, 3, 4, 255, 65535]))
            return kind, self.signed(Teach(label, self._features() if rng.random() < 0.7 else self._frame()))
        if kind == "forget":
            return kind, self.signed(Forget(ForgetScope(int(rng.integers(2))), int(rng.integers(0, 2**32))))
        if kind == "export":
            return kind, self.signed(StateExportRequest(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))))
        if kind == "wrong_key":
            return kind, self.unsigned(Auth(bytes(16), bytes(rng.integers(0, 256, 32, dtype=np.uint8))))
        if kind == "unsigned":
            return kind, self.unsigned(StatsRequest() if rng.random() < 0.5 else Teach(0, self._features()))
        if kind == "replay" and self.history:
            return kind, self.history[int(rng.integers(len(self.history)))]
        if kind == "hello":
            return kind, self.unsigned(Hello(int(rng.integers(0, 2**32))))
        wire = self.signed(Teach(0, self._features()) if rng.random() < 0.5 else StatsRequest())
        if kind == "tamper":  # one bit of header or payload changed, the CRC made right: only the MAC can tell
            raw = bytearray(cobs.decode(wire[:-1]))
            # Not the seq (bytes 4-5): the MAC covers it too, but a flipped seq can equal the probe's,
            # and the refusal would then read as the probe's own.
            at = int(rng.choice([i for i in range(len(raw) - CRC.size - TRAILER.size) if i not in (4, 5)]))
            raw[at] ^= 1 << int(rng.integers(8))
            body = bytes(raw[: -CRC.size])
            return kind, cobs.encode(body + CRC.pack(crc32(body))) + b"\x00"
        if kind == "truncate":
            return kind, wire[: int(rng.integers(1, len(wire)))] + b"\x00"
        data = bytearray(wire[:-1])  # flip bits of the encoded frame
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        return "flip", bytes(data) + b"\x00"

    def probe(self, wire: bytes, tally: Callable[[Any], None]) -> None:
        """Write one case, then a signed STATS; wait for the STATS reply, tallying every other reply.

        Raises ``BridgeError``: with the probe refused (the case reset the session), or when no
        reply comes (a hang) or the device closed the link.
        """
        from firmware_bridge.client import BridgeError
        from firmware_bridge.framing import FrameError
        from firmware_bridge.messages import Error, StatsRequest

        client = self.client
        seq, probe = client.frame(StatsRequest())
        client.transport.write(b"\x00" + wire + b"\x00" + probe)
        while True:
            event = client.receive(timeout=30)
            if isinstance(event, FrameError):
                continue
            if event.seq == seq and isinstance(event.body, Error):
                raise BridgeError(f"probe refused: {event.body.message}", event.body.code)
            if event.seq == seq:
                return
            tally(event.body)


def fuzz(work: Path, frames: int, model: Optional[Path], seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from edge_runtime.adapters.knn import KNN
    from firmware_bridge.auth import write_key_file
    from firmware_bridge.client import BridgeError
    from firmware_bridge.codes import ErrorCode
    from firmware_bridge.messages import Error

    key = os.urandom(32)
    key_file = write_key_file(work / "fuzz.key", [key])
    args = ["--key-file", str(key_file), "--adapter", "knn", "--state", str(work / "fuzz-state")]
    sha, dim = "", 1280
    if model is not None and model.is_file():
        from edge_runtime.model.card import load_card

        card = load_card(model)
        sha, dim = card.sha256, card.feature_dim
        args += ["--model", str(model), "--threads", "1"]
    args += ["--memory", str(memory_file(work / "fuzz-memory.npz", KNN(capacity=500), dim, model_sha256=sha))]
    replies: dict[str, int] = {}
    kinds: dict[str, int] = {}
    internal: list[str] = []
    hangs = crashes = 0
    rss: list[int] = []
    started = time.monotonic()

    def tally(body: Any) -> None:
        name = type(body).__name__
        if isinstance(body, Error):
            name = ErrorCode(body.code).name if body.code in ErrorCode._value2member_map_ else str(body.code)
            if body.code == ErrorCode.INTERNAL:
                internal.append(f"{kind}: {body.message}")
        replies[name] = replies.get(name, 0) + 1

    with ServerProcess(*args) as server:
        fuzzer = Fuzzer(server.wait_listening(), key, dim, seed)
        fuzzer.open()
        for i in range(frames):
            kind, wire = fuzzer.case()
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                fuzzer.probe(wire, tally)
            except BridgeError as err:
                if server.proc.poll() is not None:
                    crashes += 1
                    log(f"faults: fuzz: the server exited ({server.proc.returncode}) after a {kind} case")
                    break
                if err.code == ErrorCode.AUTH_REQUIRED:
                    fuzzer.client.hello()  # the case reset the session (HELLO, a wrong AUTH): prove the key again
                else:
                    hangs += "no reply" in str(err)
                    log(f"faults: fuzz: {err} after a {kind} case")
                    fuzzer.open()
            if (i + 1) % max(1, frames // 10) == 0:
                rss.append(server.rss_kb())
                log(f"faults: fuzz {i + 1}/{frames}: {len(internal)} INTERNAL, {hangs} hangs, RSS {rss[-1]} kB")
        fuzzer.client.transport.close()
        alive = server.proc.poll() is None
        server.send(signal.SIGTERM)
        code = server.wait()
    growth = (rss[-1] - rss[0]) / rss[0] if len(rss) >= 2 and rss[0] else 0.0
    return {
        "frames": frames,
        "with_backbone": bool(sha),
        "kinds": kinds,
        "replies": replies,
        "crashes": crashes + (0 if alive or crashes else 1),
        "hangs": hangs,
        "internal": len(internal),
        "internal_examples": internal[:5],
        "reconnects": fuzzer.reconnects,
        "rss_kb_after_tenth": rss[0] if rss else 0,
        "rss_kb_end": rss[-1] if rss else 0,
        "rss_kb_by_tenth": rss,
        "rss_growth": growth,
        "exit_code": code,
        "seconds": time.monotonic() - started,
    }
