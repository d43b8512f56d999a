"""``edgert bench faults``: kill, load and fuzz a real ``edgert bridge serve`` process, and price its safety.

Every figure comes from real processes on loopback TCP in one run:

- **kills**: a kNN device journals into a state folder (compacted every 40 records, so kills land
  in checkpoint writes too) while two clients stream TEACH and FORGET; at a random moment it gets
  SIGKILL, SIGTERM or SIGINT (``--trials`` of each, shuffled). After each restart the state is
  exported and every acknowledged operation is checked: an acknowledged TEACH must be in the
  memory, an acknowledged FORGET must have removed its item (each taught vector carries its own
  number, so the check is exact). Operations in flight at the kill may go either way. Reported:
  acknowledged operations lost, restarts or checkpoint files that fail to load, unclean exits on
  SIGTERM/SIGINT, and the mean time from process start to serving (journal replay included).
- **load**: ``--connections`` peers at once, half of them idle (half of those stopped in the middle
  of a frame); the others send paced FEATURES requests. Their p99 round trip is compared with the
  same client alone, and with the working clients without the idle peers; one connection past the
  cap must be refused with BUSY.
- **fuzz**: ``--fuzz`` frames at a keyed device with a backbone and a journal: random bytes,
  bit-flipped and truncated frames, oversized input, every message type with random payloads,
  well-formed requests with bad content (widths, NaN, 3e38, labels, empty and bogus images),
  wrong keys, missing MACs, replayed counters, tampered payloads. After each frame a signed STATS
  probe must be answered (else: a hang). Reported: crashes, hangs, INTERNAL replies, resident
  memory growth after the first tenth.
- **auth**: FEATURES round trips to a keyed and a keyless device, interleaved: p50 ratio.
- **journal**: TEACH round trips to a journaled and an unjournaled device, interleaved: p50 ratio;
  and eight concurrent teachers on the journaled one: fsyncs per TEACH (group commit).

``--quick`` shrinks every part (CI: under two minutes). ``--report FILE`` writes the section
"Faults and load (bridge)" into a Markdown report (replacing the one there).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "efficientnet-lite0" / "int8.tflite"
SECTION_TITLE = "## Faults and load (bridge)"
CLASSES = ["north", "east", "south", "west"]
KILL_DIM = 64


# -- a real server process ------------------------------------------------------------------------------
class ServerProcess:
    """``edgert bridge serve`` on a free loopback port, its stderr drained into ``lines`` by a thread.

    ``started`` is when the process was spawned; ``listening`` is set (and ``url`` known) once it
    prints the line saying it serves.
    """

    def __init__(self, *args: str, port: str = "tcp://127.0.0.1:0") -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "bridge", "serve", "--port", port,
                                      *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = ""
        self.serving_after = 0.0
        self.listening = threading.Event()
        self.ended = threading.Event()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"listening on (tcp://\S+)", line)
            if found and not self.listening.is_set():
                self.serving_after = time.monotonic() - self.started
                self.url = found.group(1)
                self.listening.set()
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended.set()
            self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 120.0) -> str:
        """Block until ``count`` stderr lines contain ``text``; returns the last. RuntimeError if the process ends first."""
        def seen() -> list[str]:
            return [line for line in self.lines if text in line]

        with self._changed:
            self._changed.wait_for(lambda: len(seen()) >= count or self.ended.is_set(), timeout)
            if len(seen()) < count:
                raise RuntimeError(f"no line with {text!r} from edgert bridge serve:\n" + "\n".join(self.lines[-20:]))
            return seen()[count - 1]

    def wait_listening(self, timeout: float = 120.0) -> str:
        """The server's URL once it serves; RuntimeError with its stderr if it exits or stalls first."""
        while not self.listening.wait(0.05):
            if self.ended.is_set() or time.monotonic() - self.started > timeout:
                self.ended.wait(5)
                raise RuntimeError("edgert bridge serve did not start:\n" + "\n".join(self.lines[-20:]))
        return self.url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self.ended.wait(timeout)
        return code

    def rss_kb(self) -> int:
        """Resident memory of the server process (VmRSS), kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)


def connect(url: str, key: Optional[bytes] = None, timeout: float = 30.0) -> Any:
    from firmware_bridge.client import BridgeClient
    from firmware_bridge.transport import open_transport

    return BridgeClient(open_transport(url, timeout=0.5), timeout=timeout, key=key)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def _memory_file(path: Path, adapter: Any, dim: int, seed: int = 0, model_sha256: str = "") -> Path:
    """A source memory of four separated classes in ``dim`` dimensions, written as a state file."""
    from edge_runtime.state import write_state

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), dim)).astype(np.float32) * 3
    y = np.repeat(np.arange(len(CLASSES)), 10)
    x = (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    return write_state(path, adapter.fit(x, y, n_classes=len(CLASSES)), kind="memory", model_sha256=model_sha256,
                       classes=CLASSES)


# -- kills ------------------------------------------------------------------------------------------------
def numbered(t: int, rng: np.random.Generator) -> np.ndarray:
    """A feature vector that carries its number t exactly through normalisation: x[1] / x[0] = t / 1024."""
    x = rng.uniform(-1, 1, KILL_DIM).astype(np.float32)
    x[0], x[1] = 1.0, t / 1024.0
    return x


def numbers_of(features: np.ndarray) -> np.ndarray:
    return np.rint(features[:, 1] / features[:, 0] * 1024.0).astype(np.int64)


class Ledger:
    """What the clients were told: acknowledged TEACHes and FORGETs, and operations whose fate is unknown."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_number = 1
        self.acked: set[int] = set()  # taught numbers acknowledged (or seen in the memory after a restart)
        self.forgotten: set[int] = set()  # numbers whose FORGET was acknowledged (or seen gone)
        self.unsure_teach: set[int] = set()
        self.unsure_forget: set[int] = set()
        self.ops_acked = 0

    def reconcile(self, present: dict[int, int]) -> tuple[int, int]:
        """Check a restarted memory (number -> id); returns (acknowledged ops lost, unknown items)."""
        missing = {t for t in self.acked - self.forgotten - self.unsure_forget if t not in present}
        resurrected = {t for t in self.forgotten if t in present}
        lost = len(missing) + len(resurrected)
        unknown = len([t for t in present if t not in self.acked | self.unsure_teach])
        # Operations in flight at the kill went one way or the other: take the memory's word.
        self.acked |= {t for t in self.unsure_teach if t in present}
        self.forgotten |= {t for t in self.unsure_forget if t not in present}
        self.unsure_teach.clear()
        self.unsure_forget.clear()
        return lost, unknown


def _stream(url: str, ledger: Ledger, targets: list[tuple[int, int]], seed: int, stop: threading.Event) -> None:
    """One client: TEACH new numbered vectors, FORGET ``targets`` (number, id) now and then, until the link dies."""
    from firmware_bridge.client import BridgeError
    from firmware_bridge.messages import ForgetScope

    rng = np.random.default_rng(seed)
    try:
        client = connect(url, timeout=10)
    except Exception:  # the server may already be gone
        return
    try:
        while not stop.is_set():
            if targets and rng.random() < 0.3:
                number, item = targets.pop()
                with ledger.lock:
                    ledger.unsure_forget.add(number)
                client.forget(ForgetScope.ITEM, item)
                with ledger.lock:
                    ledger.unsure_forget.discard(number)
                    ledger.forgotten.add(number)
                    ledger.ops_acked += 1
            else:
                with ledger.lock:
                    number = ledger.next_number
                    ledger.next_number += 1
                    ledger.unsure_teach.add(number)
                client.teach(int(rng.integers(len(CLASSES))), numbered(number, rng))
                with ledger.lock:
                    ledger.unsure_teach.discard(number)
                    ledger.acked.add(number)
                    ledger.ops_acked += 1
    except (BridgeError, EOFError, OSError):
        pass
    finally:
        client.transport.close()


def _present(url: str) -> dict[int, int]:
    """number -> item id of every item in the device's kNN memory (via STATE_EXPORT)."""
    from edge_runtime.state import read_state
    from firmware_bridge.client import BridgeError
    from firmware_bridge.messages import ErrorCode

    client = connect(url)
    try:
        blob = client.export_state()
    except BridgeError as err:
        if err.code == ErrorCode.BAD_INPUT:  # the device holds no memory yet
            return {}
        raise
    finally:
        client.transport.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.npz"
        path.write_bytes(blob)
        entries = read_state(path).adapter.memory.entries()
    return dict(zip(numbers_of(entries["features"]).tolist(), entries["ids"].tolist()))


def kill_trials(work: Path, per_signal: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from edge_runtime.state import StateError, read_state

    state = work / "kill-state"
    args = ["--adapter", "knn", "--classes", ",".join(CLASSES), "--dim", str(KILL_DIM), "--state", str(state),
            "--compact-every", "40", "--checkpoint-every", "0.5"]
    rng = random.Random(seed)
    plan = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT] * per_signal
    rng.shuffle(plan)
    ledger = Ledger()
    lost = unknown = unloadable = unclean = 0
    recovery: list[float] = []
    per: dict[str, dict[str, int]] = {s.name: {"trials": 0, "lost": 0, "unclean": 0} for s in set(plan)}
    started = time.monotonic()
    for trial, signum in enumerate([*plan, None]):
        with ServerProcess(*args) as server:
            try:
                url = server.wait_listening()
            except RuntimeError as err:
                unloadable += 1
                log(f"faults: trial {trial}: restart failed: {err}")
                break
            if trial:
                recovery.append(server.serving_after)
            unloadable += sum(1 for line in server.lines if "skipped state file" in line or "skipped" in line
                              and "journal:" in line)
            present = _present(url)
            trial_lost, trial_unknown = ledger.reconcile(present)
            lost += trial_lost
            unknown += trial_unknown
            if trial and trial_lost:
                per[plan[trial - 1].name]["lost"] += trial_lost
            if signum is None:  # the last restart only checks the previous trial
                server.send(signal.SIGTERM)
                server.wait()
                break
            targets = [(t, i) for t, i in present.items() if t in ledger.acked and t not in ledger.forgotten]
            rng.shuffle(targets)
            stop = threading.Event()
            clients = [threading.Thread(target=_stream, args=(url, ledger, targets[k::2], seed * 1000 + trial * 2 + k,
                                                              stop), daemon=True) for k in range(2)]
            for c in clients:
                c.start()
            time.sleep(rng.uniform(0.02, 0.5))  # the random moment of the fault, while the clients stream
            server.send(signum)
            code = server.wait()
            stop.set()
            for c in clients:
                c.join(30)
            per[signum.name]["trials"] += 1
            if signum != signal.SIGKILL and (code != 0 or not any(line.startswith("edgert bridge: stopped by")
                                                                  for line in server.lines)):
                unclean += 1
                per[signum.name]["unclean"] += 1
                log(f"faults: trial {trial}: {signum.name} exit {code}: " + " | ".join(server.lines[-3:]))
        for checkpoint in sorted(state.glob("checkpoint-*.npz")):
            try:
                read_state(checkpoint)
            except StateError as err:
                unloadable += 1
                log(f"faults: trial {trial}: {err}")
        if trial % 25 == 24:
            log(f"faults: kills {trial + 1}/{len(plan)}: {ledger.ops_acked} acknowledged ops, {lost} lost")
    return {"trials": len(plan), "by_signal": per, "acknowledged_ops": ledger.ops_acked, "acknowledged_lost": lost,
            "unexpected_items": unknown, "unloadable_states": unloadable, "unclean_exits": unclean,
            "recovery_s_mean": float(np.mean(recovery)) if recovery else 0.0,
            "recovery_s_max": float(np.max(recovery)) if recovery else 0.0, "seconds": time.monotonic() - started}


# -- load -------------------------------------------------------------------------------------------------
def _paced(url: str, rows: np.ndarray, n: int, rate: float, seed: int, out: list[float], failures: list[str],
           ready: threading.Barrier) -> None:
    from firmware_bridge.client import BridgeError

    rng = np.random.default_rng(seed)
    client = connect(url)
    client.hello()
    ready.wait()
    due = time.perf_counter()
    try:
        for i in range(n):
            due += rng.exponential(1.0 / rate)
            time.sleep(max(0.0, due - time.perf_counter()))  # pacing a camera, not a timing assumption
            start = time.perf_counter()
            client.classify(rows[i % len(rows)], read_only=True)
            out.append(time.perf_counter() - start)
    except BridgeError as err:
        failures.append(str(err))
    finally:
        client.transport.close()


def _working(url: str, clients: int, n: int, rate: float, rows: np.ndarray) -> tuple[list[float], list[str]]:
    times: list[float] = []
    failures: list[str] = []
    ready = threading.Barrier(clients)
    threads = [threading.Thread(target=_paced, args=(url, rows, n, rate, k, times, failures, ready), daemon=True)
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, failures


def load_test(work: Path, connections: int, per_client: int, alone: int, rate: float,
              log: Callable[[str], None]) -> dict[str, Any]:
    import socket

    from edge_runtime.adapters.ncm import NCM
    from firmware_bridge.framing import Framing
    from firmware_bridge.messages import ErrorCode, Features

    memory = _memory_file(work / "load-memory.npz", NCM(), 1280)
    rows = np.random.default_rng(1).normal(size=(64, 1280)).astype(np.float32)
    half = connections // 2
    with ServerProcess("--memory", str(memory), "--adapter", "ncm", "--no-adapt", "--max-connections",
                       str(connections), "--idle-timeout", "600", "--frame-timeout", "600") as server:
        url = server.wait_listening()
        log(f"faults: load: one client alone, {alone} requests at {rate:g}/s")
        alone_times, failures = _working(url, 1, alone, rate, rows)
        log(f"faults: load: {half} working clients, no idle peers")
        busy_times, more = _working(url, half, per_client, rate, rows)
        failures += more
        host, port = url[len("tcp://"):].rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(connections - half)]
        partial = Framing().pack(1, Features.quantize(rows[0]))
        for sock in idle[: len(idle) // 2]:
            sock.sendall(b"\x00" + partial[: len(partial) // 2])  # half a frame, then silence
        log(f"faults: load: {half} working clients beside {len(idle)} idle peers "
            f"({len(idle) // 2} stopped mid-frame)")
        loaded_times, more = _working(url, half, per_client, rate, rows)
        failures += more
        # Every slot is taken by the idle peers and one working client: one more is refused at once.
        extra_clients = [connect(url) for _ in range(half)]
        beyond = connect(url, timeout=10)
        refused = ""
        try:
            beyond.hello()
        except Exception as err:  # noqa: BLE001 - the refusal is the point
            refused = f"{getattr(err, 'code', '')} {err}"
        busy_refusal = str(int(ErrorCode.BUSY)) in refused.split()[:1] or "BUSY" in refused
        for c in [*extra_clients, beyond]:
            c.transport.close()
        for sock in idle:
            sock.close()
        server.send(signal.SIGTERM)
        server.wait()
    a, b, c = _percentiles(alone_times), _percentiles(busy_times), _percentiles(loaded_times)
    return {"connections": connections, "working_clients": half, "idle_peers": connections - half,
            "rate_per_client": rate, "alone": a, "working_only": b, "with_idle_peers": c,
            "requests_sent": alone + 2 * half * per_client, "replies": len(alone_times) + len(busy_times) + len(loaded_times),
            "failures": failures[:5], "p99_ratio_vs_alone": c["p99_ms"] / a["p99_ms"],
            "p99_ratio_vs_working_only": c["p99_ms"] / b["p99_ms"], "refused_beyond_cap": busy_refusal,
            "refusal": refused}


# -- fuzz -------------------------------------------------------------------------------------------------
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
        from firmware_bridge.messages import FeatureDtype, Features

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
        from firmware_bridge.messages import Frame, PixelFormat

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
            return Frame(PixelFormat.JPEG, 0, 0, bytes(rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8)))
        if r < 0.6:
            return Frame(PixelFormat.JPEG, 0, 0, self.jpeg, options=1)
        fmt = PixelFormat(int(rng.integers(1, 4)))
        w, h = (int(v) for v in rng.choice([0, 1, 2, 3, 17, 64], size=2))
        channels = 1 if fmt == PixelFormat.GRAY8 else 3
        return Frame(fmt, w, h, bytes(rng.integers(0, 256, w * h * channels, dtype=np.uint8)), options=1)

    KINDS = {"random": .08, "flip": .08, "truncate": .06, "oversize": .005, "random_payload": .15, "features": .18,
             "frame": .08, "teach": .12, "forget": .04, "export": .03, "wrong_key": .03, "unsigned": .045,
             "replay": .04, "tamper": .045, "hello": .01}

    def case(self) -> tuple[str, bytes]:
        """(kind, bytes to write) for one fuzzed frame."""
        from firmware_bridge import cobs
        from firmware_bridge.crc import crc32
        from firmware_bridge.framing import CRC, TRAILER, Framing
        from firmware_bridge.messages import (BODIES, Auth, Forget, ForgetScope, Hello, StateExportRequest,
                                              StatsRequest, Teach)

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
            body = bytes(raw[:-CRC.size])
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
    from firmware_bridge.messages import Error, ErrorCode

    key = os.urandom(32)
    key_file = write_key_file(work / "fuzz.key", [key])
    args = ["--key-file", str(key_file), "--adapter", "knn", "--state", str(work / "fuzz-state")]
    sha, dim = "", 1280
    if model is not None and model.is_file():
        from edge_runtime.card import load_card

        card = load_card(model)
        sha, dim = card.sha256, card.feature_dim
        args += ["--model", str(model), "--threads", "1"]
    args += ["--memory", str(_memory_file(work / "fuzz-memory.npz", KNN(capacity=500), dim, model_sha256=sha))]
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
    return {"frames": frames, "with_backbone": bool(sha), "kinds": kinds, "replies": replies,
            "crashes": crashes + (0 if alive or crashes else 1), "hangs": hangs, "internal": len(internal),
            "internal_examples": internal[:5], "reconnects": fuzzer.reconnects, "rss_kb_after_tenth": rss[0] if rss else 0,
            "rss_kb_end": rss[-1] if rss else 0, "rss_kb_by_tenth": rss, "rss_growth": growth, "exit_code": code,
            "seconds": time.monotonic() - started}


# -- the price of authentication and durability ------------------------------------------------------------
def _interleaved(calls: list[Callable[[], Any]], n: int) -> list[list[float]]:
    """Time ``n`` rounds of every call, alternating their order each round (drift hits all alike)."""
    times: list[list[float]] = [[] for _ in calls]
    for i in range(n):
        order = range(len(calls)) if i % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            start = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - start)
    return times


def auth_overhead(work: Path, requests: int, pairs: int = 2) -> dict[str, Any]:
    """FEATURES round trips, keyed vs keyless, over ``pairs`` servers of each kind, interleaved.

    Several processes of each kind, because on a shared machine one process can sit on a busier
    core for a whole run: that would read as the key's cost.
    """
    from contextlib import ExitStack

    from edge_runtime.adapters.ncm import NCM
    from firmware_bridge.auth import write_key_file

    key = os.urandom(32)
    key_file = write_key_file(work / "auth.key", [key])
    memory = _memory_file(work / "auth-memory.npz", NCM(), 1280)
    rows = np.random.default_rng(2).normal(size=(32, 1280)).astype(np.float32)
    base = ["--memory", str(memory), "--adapter", "ncm"]
    with ExitStack() as stack:
        servers = [stack.enter_context(ServerProcess(*base, *(["--key-file", str(key_file)] if keyed else [])))
                   for _ in range(pairs) for keyed in (False, True)]
        clients = [connect(server.wait_listening(), key if i % 2 else None) for i, server in enumerate(servers)]
        for c in clients:
            c.hello()
        i = iter(range(10**9))
        calls = [lambda c=c: c.classify(rows[next(i) % 32]) for c in clients]
        _interleaved(calls, 50)  # warm-up
        times = _interleaved(calls, requests)
        for c in clients:
            c.transport.close()
    p = _percentiles([t for k in range(0, len(times), 2) for t in times[k]])
    k = _percentiles([t for k in range(1, len(times), 2) for t in times[k]])
    return {"requests": requests * pairs, "processes_per_kind": pairs, "keyless": p, "keyed": k,
            "p50_ratio": k["p50_ms"] / p["p50_ms"]}


def journal_cost(work: Path, requests: int, teachers: int = 8) -> dict[str, Any]:
    from edge_runtime.adapters.ncm import NCM

    memory = _memory_file(work / "journal-memory.npz", NCM(), 1280)
    rows = np.random.default_rng(3).normal(size=(32, 1280)).astype(np.float32)
    base = ["--memory", str(memory), "--adapter", "ncm"]
    with ServerProcess(*base) as plain, ServerProcess(*base, "--state", str(work / "journal-state"),
                                                      "--compact-every", "100000") as durable:
        a, b = connect(plain.wait_listening()), connect(durable.wait_listening())
        i = iter(range(10**9))
        calls = [lambda: a.teach(next(i) % 4, rows[next(i) % 32]), lambda: b.teach(next(i) % 4, rows[next(i) % 32])]
        _interleaved(calls, 10)
        t_plain, t_journal = _interleaved(calls, requests)
        for c in (a, b):
            c.transport.close()
        # Group commit: several teachers at once share fsyncs.
        url = durable.url
        per = max(10, requests // teachers)

        def teach_many(k: int) -> None:
            client = connect(url)
            for j in range(per):
                client.teach(j % 4, rows[(j + k) % 32])
            client.transport.close()

        start = time.perf_counter()
        threads = [threading.Thread(target=teach_many, args=(k,)) for k in range(teachers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent_s = time.perf_counter() - start
        durable.send(signal.SIGTERM)
        durable.wait()
        summary = next((line for line in durable.lines if "journal:" in line and "fsyncs" in line), "")
    found = re.search(r"journal: (\d+) records, (\d+) fsyncs", summary)
    records, fsyncs = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    sequential = 10 + requests  # the interleaved TEACHes were one per batch: one fsync each
    p, j = _percentiles(t_plain), _percentiles(t_journal)
    concurrent = teachers * per
    return {"requests": requests, "no_journal": p, "journal": j, "p50_ratio": j["p50_ms"] / p["p50_ms"],
            "concurrent_teachers": teachers, "concurrent_teaches": concurrent,
            "fsyncs_per_concurrent_teach": (fsyncs - sequential) / concurrent if found else None,
            "concurrent_teaches_per_s": concurrent / concurrent_s, "journal_records": records}


# -- report ------------------------------------------------------------------------------------------------
def faults_markdown(r: dict[str, Any]) -> str:
    """The "Faults and load (bridge)" section: one table of goals and measurements, and how they were taken."""
    k, ld, fz, au, jr = r["kills"], r["load"], r["fuzz"], r["auth"], r["journal"]
    by = ", ".join(f"{name} {v['trials']}" for name, v in sorted(k["by_signal"].items()))
    gc = jr.get("fsyncs_per_concurrent_teach")
    rows = [
        ("acknowledged TEACH/FORGET lost after a kill", f"{k['acknowledged_lost']} of {k['acknowledged_ops']}", "0"),
        ("restarts or checkpoints that fail to load", str(k["unloadable_states"]), "0"),
        ("SIGTERM/SIGINT exits that were not clean (exit 0, summary)", str(k["unclean_exits"]), "0"),
        ("mean time from process start to serving (replay included)",
         f"{k['recovery_s_mean']:.2f} s (max {k['recovery_s_max']:.2f} s)", "report"),
        (f"replies to the working clients ({ld['working_clients']} working + {ld['idle_peers']} idle)",
         f"{ld['replies']} of {ld['requests_sent']}", "all"),
        ("working clients' p99 beside idle peers / same client alone",
         f"{ld['p99_ratio_vs_alone']:.2f}x ({ld['with_idle_peers']['p99_ms']:.2f} / {ld['alone']['p99_ms']:.2f} ms)",
         "<= 2x"),
        ("... / the working clients without the idle peers", f"{ld['p99_ratio_vs_working_only']:.2f}x", "report"),
        (f"connection {ld['connections'] + 1} refused with BUSY", "yes" if ld["refused_beyond_cap"] else "no", "yes"),
        (f"fuzzed frames: crashes + hangs", f"{fz['crashes']} + {fz['hangs']} in {fz['frames']}", "0"),
        ("fuzzed frames answered INTERNAL", str(fz["internal"]), "0"),
        ("server RSS growth, first tenth -> end of the fuzz",
         f"{100 * fz['rss_growth']:+.1f}% ({fz['rss_kb_after_tenth'] / 1024:.0f} -> {fz['rss_kb_end'] / 1024:.0f} MB)",
         "< 5%"),
        ("FEATURES p50, keyed (HMAC) / keyless",
         f"{au['p50_ratio']:.3f}x ({au['keyed']['p50_ms']:.3f} / {au['keyless']['p50_ms']:.3f} ms)", "<= 1.1x"),
        ("TEACH p50, journal (fsync before ACK) / none",
         f"{jr['p50_ratio']:.1f}x ({jr['journal']['p50_ms']:.2f} / {jr['no_journal']['p50_ms']:.2f} ms)", "report"),
        (f"fsyncs per TEACH, {jr['concurrent_teachers']} teachers at once (group commit)",
         f"{gc:.2f} ({jr['concurrent_teaches_per_s']:.0f} TEACH/s)" if gc is not None else "n/a", "report"),
    ]
    replies = ", ".join(f"{name} {n}" for name, n in sorted(fz["replies"].items(), key=lambda kv: -kv[1]))
    lines = [SECTION_TITLE, "",
             f"`edgert bench faults{' --quick' if r.get('quick') else ''}` against real `edgert bridge serve` "
             f"processes on loopback TCP ({r['host']}, {r['time_utc']}; {r['seconds']:.0f} s).", "",
             "| what | measured | goal |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["",
              f"- Kills: {k['trials']} trials ({by}), at a uniform random moment 20-500 ms into two clients "
              f"streaming TEACH and FORGET at a kNN device journaled with compaction every 40 records; after each "
              f"restart the exported memory is checked against every acknowledgement.",
              f"- Load: {ld['working_clients']} clients each sending FEATURES (1280 x int8) at {ld['rate_per_client']:g}/s "
              f"(Poisson); p99 alone {ld['alone']['p99_ms']:.2f} ms ({ld['alone']['n']} requests), working only "
              f"{ld['working_only']['p99_ms']:.2f} ms, beside the idle peers {ld['with_idle_peers']['p99_ms']:.2f} ms.",
              f"- Fuzz ({'with' if fz['with_backbone'] else 'without'} a backbone for FRAME, key required, journal on): "
              f"replies {replies}."
              + (f" Server RSS after each tenth: {', '.join(f'{kb / 1024:.0f}' for kb in fz['rss_kb_by_tenth'])} MB."
                 if fz.get("rss_kb_by_tenth") else ""),
              f"- Keyed vs keyless and journal vs none: {au['requests']} and {jr['requests']} interleaved round trips."]
    return "\n".join(lines) + "\n"


def write_section(report: Path, section: str, title: str = SECTION_TITLE) -> Path:
    """Put ``section`` into ``report`` in place of its previous section ``title`` (by default
    "Faults and load (bridge)")."""
    text = report.read_text() if report.is_file() else ""
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text)
    elif "\n## Other benchmarks" in text:  # where `edgert bench all` puts it
        text = text.replace("\n## Other benchmarks", "\n" + section + "\n## Other benchmarks", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)
    return report


# -- CLI ---------------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smaller run for CI (under two minutes)")
    parser.add_argument("--trials", type=int, help="kill trials per signal (default: 100; quick: 5)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections in the load test")
    parser.add_argument("--fuzz", type=int, help="fuzzed frames (default: 100000; quick: 3000)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"backbone for FRAME requests in the fuzz (default: {DEFAULT_MODEL}; skipped if absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="write the Markdown section into this report (e.g. bench/REPORT.md)")
    parser.set_defaults(main=main)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    quick = args.quick
    trials = args.trials or (5 if quick else 100)
    frames = args.fuzz or (3000 if quick else 100_000)
    started = time.monotonic()
    results: dict[str, Any] = {"quick": quick, "host": os.uname().nodename,
                               "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="edgert-faults-") as tmp:
        work = Path(tmp)
        log(f"faults: kills: {3 * trials} trials")
        results["kills"] = kill_trials(work, trials, args.seed, log)
        log("faults: load")
        results["load"] = load_test(work, args.connections, 40 if quick else 100, 150 if quick else 500, 25.0, log)
        log(f"faults: fuzz: {frames} frames")
        results["fuzz"] = fuzz(work, frames, args.model, args.seed, log)
        log("faults: authentication and journal cost")
        results["auth"] = auth_overhead(work, 300 if quick else 2000)
        results["journal"] = journal_cost(work, 100 if quick else 500)
    results["seconds"] = time.monotonic() - started
    return results


def main(args: argparse.Namespace) -> int:
    results = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    section = faults_markdown(results)
    print(section)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    if args.report is not None:
        write_section(args.report, section)
    return 0


__all__ = ["Fuzzer", "Ledger", "ServerProcess", "configure", "connect", "faults_markdown", "main", "numbered",
           "numbers_of", "run", "write_section"]
