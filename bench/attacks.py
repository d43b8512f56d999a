"""The attacks of issue #24 against real ``edgert bridge serve`` processes (``edgert bench faults``).

Every network byte stays on loopback (127.0.0.1) and every loop is bounded.

- **disk full**: the state folder on a real tmpfs of ``DISK_MB`` MiB (mounted when root; skipped
  with the reason otherwise). Each cycle fills the tmpfs, teaches (the device must answer STORAGE,
  and the client sends each refused TEACH again with its request id), frees the space, teaches
  more and kills the device with SIGKILL while it is being taught. After each restart the memory
  is compared with what was acknowledged: every number taught carries its number, so an ACKed
  TEACH missing is *lost* and a number present twice was *applied twice*.
- **junk link**: TEACHes through a loopback proxy that injects junk into both directions and drops
  the connection now and then; the client reconnects and resends with the same request id until
  it has the ACK. Then applied (items in the memory) must equal ACKed exactly.
- **flood**: ``STRANGERS`` unauthenticated sockets held open, plus authenticated clients that
  pipeline thousands of STATE_EXPORT requests and read nothing; an authenticated client's p99
  round trip against its p99 alone, and the server's RSS growth.
- **payload fuzz**: fuzzed fleet payloads (signed with the fleet key, signed with another key,
  unsigned) through ``FleetSync``'s MQTT callback and the stream's apply step, and fuzzed HELLO
  payloads (decoded by a host, and built by a device from hostile class names): exceptions that
  would end a thread, and memory changed by a rejected payload.
- **base change**: restarts with another ``--dim``, ``--classes``, ``--adapter``: refused, state intact.
"""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .attacks_load import flood, payload_fuzz
from .bridge_server import CLASSES, KILL_DIM, ServerProcess, connect, numbered, numbers_of

DISK_MB = 4


def _present_counts(url: str) -> dict[int, int]:
    """number -> how many items carry it, in the device's kNN memory (STATE_EXPORT)."""
    import tempfile

    from edge_runtime.state import read_state
    from firmware_bridge.client import BridgeError
    from firmware_bridge.codes import ErrorCode

    client = connect(url)
    try:
        blob = client.export_state()
    except BridgeError as err:
        if err.code == ErrorCode.BAD_INPUT:
            return {}
        raise
    finally:
        client.transport.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.npz"
        path.write_bytes(blob)
        entries = read_state(path).adapter.memory.entries()
    numbers, counts = np.unique(numbers_of(entries["features"]), return_counts=True)
    return dict(zip(numbers.tolist(), counts.tolist()))


# -- disk full ---------------------------------------------------------------------------------------------
def _mount_tmpfs(where: Path, mb: int) -> Optional[str]:
    """Mount a tmpfs of ``mb`` MiB at ``where``; the reason it cannot be, or None."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    where.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0700", "tmpfs", str(where)], capture_output=True, text=True
    )
    return None if run.returncode == 0 else f"mount failed: {run.stderr.strip() or run.returncode}"


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte with one file."""
    filler = folder.parent / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1 << 10, 1):
            chunk = b"\xa5" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def disk_full(work: Path, cycles: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from firmware_bridge.client import BridgeError
    from firmware_bridge.codes import ErrorCode

    mount = work / "tmpfs"
    why = _mount_tmpfs(mount, DISK_MB)
    if why is not None:
        log(f"faults: disk full: skipped ({why})")
        return {"skipped": why}
    rng = random.Random(seed)
    state = mount / "state"
    args = [
        "--adapter",
        "knn",
        "--classes",
        ",".join(CLASSES),
        "--dim",
        str(KILL_DIM),
        "--state",
        str(state),
        "--compact-every",
        "200",
        "--checkpoint-every",
        "2",
    ]
    acked: set[int] = set()
    unsure: set[int] = set()
    next_number = 1
    lost = twice = storage_errors = refused_then_acked = restarts_failed = 0
    started = time.monotonic()
    vectors = np.random.default_rng(seed)
    try:
        for cycle in range(cycles + 1):
            with ServerProcess(*args) as server:
                try:
                    url = server.wait_listening()
                except RuntimeError as err:
                    restarts_failed += 1
                    log(f"faults: disk full: cycle {cycle}: restart failed: {err}")
                    break
                present = _present_counts(url)
                lost += len([t for t in acked if t not in present])
                twice += sum(1 for t, n in present.items() if n > 1)
                acked |= {t for t in unsure if t in present}
                unsure.clear()
                if cycle == cycles:
                    break
                client = connect(url, timeout=10)
                filler = _fill(state)
                pending: list[tuple[int, int, np.ndarray]] = []  # refused while full: (number, request id, x)
                for _ in range(rng.randint(20, 60)):  # teach into a full disk
                    number, next_number = next_number, next_number + 1
                    x = numbered(number, vectors)
                    try:
                        client.teach(int(number % len(CLASSES)), x)
                        acked.add(number)
                    except BridgeError as err:
                        storage_errors += err.code == ErrorCode.STORAGE
                        pending.append((number, err.request_id, x))
                filler.unlink()  # space is back
                for number, rid, x in pending:  # the refused ones again, with their request ids
                    try:
                        client.teach(int(number % len(CLASSES)), x, request_id=rid or None)
                        acked.add(number)
                        refused_then_acked += 1
                    except BridgeError:
                        unsure.add(number)
                stop = threading.Event()

                def teach_until_killed() -> None:
                    nonlocal next_number
                    while not stop.is_set():
                        number, next_number = next_number, next_number + 1
                        unsure.add(number)
                        try:
                            client.teach(int(number % len(CLASSES)), numbered(number, vectors))
                        except (BridgeError, OSError, EOFError):
                            return
                        unsure.discard(number)
                        acked.add(number)

                teacher = threading.Thread(target=teach_until_killed, daemon=True)
                teacher.start()
                time.sleep(rng.uniform(0.05, 0.4))
                server.send(9)
                server.wait()
                stop.set()
                teacher.join(30)
                client.transport.close()
            if cycle % 5 == 4:
                log(
                    f"faults: disk full: cycle {cycle + 1}/{cycles}: {len(acked)} acknowledged, {lost} lost, "
                    f"{twice} applied twice, {storage_errors} STORAGE replies"
                )
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return {
        "cycles": cycles,
        "tmpfs_mb": DISK_MB,
        "acknowledged": len(acked),
        "lost": lost,
        "applied_twice": twice,
        "storage_errors": storage_errors,
        "refused_then_acked": refused_then_acked,
        "restarts_failed": restarts_failed,
        "seconds": time.monotonic() - started,
    }


# -- junk link --------------------------------------------------------------------------------------------
class JunkProxy:
    """A loopback TCP proxy that injects junk and drops connections: ``junk`` is the chance per
    forwarded chunk of a burst of random bytes (zeros included) before it, ``drop`` the chance per
    chunk that both sides are closed right after it."""

    def __init__(self, target: tuple[str, int], junk: float, drop: float, seed: int) -> None:
        self.target, self.junk, self.drop = target, junk, drop
        self.rng = random.Random(seed)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.injected = self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        peers = {client: server, server: client}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.rng.random() < self.junk:
                        self.injected += 1
                        burst = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 40)))
                        data = (
                            burst + data
                            if self.rng.random() < 0.5
                            else data[: len(data) // 2] + burst + data[len(data) // 2 :]
                        )
                    peers[sock].sendall(data)
                    if self.rng.random() < self.drop:
                        self.dropped += 1
                        return
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def junk_link(work: Path, teaches: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from firmware_bridge.client import BridgeError

    args = [
        "--adapter",
        "knn",
        "--classes",
        ",".join(CLASSES),
        "--dim",
        str(KILL_DIM),
        "--state",
        str(work / "junk-state"),
        "--compact-every",
        "2000",
    ]
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    acked = reconnects = resends = 0
    with ServerProcess(*args) as server:
        url = server.wait_listening()
        host, port = url[len("tcp://") :].rsplit(":", 1)
        proxy = JunkProxy((host, int(port)), junk=0.05, drop=0.01, seed=seed)
        via = f"tcp://127.0.0.1:{proxy.port}"
        client = None
        for number in range(1, teaches + 1):
            x = numbered(number, rng)
            rid = 0
            for attempt in range(50):
                try:
                    if client is None:
                        client = connect(via, timeout=2)
                        client.hello()
                    client.teach(int(number % len(CLASSES)), x, request_id=rid or None)
                    acked += 1
                    break
                except (BridgeError, OSError, EOFError) as err:
                    rid = getattr(err, "request_id", 0) or rid or (client.last_request_id if client else 0)
                    resends += 1
                    if client is not None:
                        client.transport.close()
                    client, reconnects = None, reconnects + 1
            if number % max(1, teaches // 5) == 0:
                log(
                    f"faults: junk link: {number}/{teaches} acknowledged {acked}, {proxy.injected} junk bursts, "
                    f"{proxy.dropped} drops"
                )
        if client is not None:
            client.transport.close()
        proxy.close()
        present = _present_counts(url)
        stats_client = connect(url)
        teach_count = stats_client.stats().teaches
        stats_client.transport.close()
    applied = sum(present.values())
    return {
        "teaches": teaches,
        "acknowledged": acked,
        "applied": applied,
        "applied_stats": teach_count,
        "distinct": len(present),
        "applied_twice": sum(1 for n in present.values() if n > 1),
        "junk_bursts": proxy.injected,
        "drops": proxy.dropped,
        "reconnects": reconnects,
        "resends": resends,
        "seconds": time.monotonic() - started,
    }


# -- flood ------------------------------------------------------------------------------------------------
def base_change(work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    state = work / "base-state"
    base = ["--adapter", "knn", "--classes", ",".join(CLASSES), "--dim", str(KILL_DIM), "--state", str(state)]
    rng = np.random.default_rng(3)
    with ServerProcess(*base) as server:
        client = connect(server.wait_listening())
        for number in range(1, 21):
            client.teach(number % len(CLASSES), numbered(number, rng))
        client.transport.close()
        server.send(9)
        server.wait()
    listing = {p.name: p.read_bytes() for p in state.iterdir() if p.name != ".lock"}
    changes = {"dim": ["--dim", "32"], "classes": ["--classes", "a,b,c"], "adapter": ["--adapter", "ncm"]}
    refused, lines = {}, {}
    for what, change in changes.items():
        argv = list(base)
        i = argv.index(change[0])
        argv[i + 1] = change[1]
        with ServerProcess(*argv) as server:
            code = server.wait(120)
        refused[what] = code != 0 and not server.listening.is_set()
        lines[what] = next((line for line in server.lines if "asks for" in line or "nothing was changed" in line), "")
    intact = listing == {p.name: p.read_bytes() for p in state.iterdir() if p.name != ".lock"}
    with ServerProcess(*base) as server:
        present = _present_counts(server.wait_listening())
        server.send(15)
        server.wait()
    return {
        "refused": refused,
        "intact": intact,
        "items_after": sum(present.values()),
        "items_taught": 20,
        "messages": lines,
    }


# -- all of them ------------------------------------------------------------------------------------------
def run(work: Path, quick: bool, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log("faults: attacks: restart with another base")
    out["base"] = base_change(work, log)
    log("faults: attacks: fuzzed fleet payloads and HELLOs")
    out["payloads"] = payload_fuzz(2000 if quick else 100_000, seed, log)
    log("faults: attacks: junk, drops and reconnects")
    out["junk"] = junk_link(work, 1000 if quick else 10_000, seed, log)
    log("faults: attacks: strangers and a STATE_EXPORT flood")
    out["flood"] = flood(work, 150 if quick else 500, log)
    log("faults: attacks: disk full")
    out["disk"] = disk_full(work, 3 if quick else 20, seed, log)
    return out


def attacks_markdown(a: dict[str, Any]) -> list[str]:
    """Rows (what, measured, goal) of the attack scenarios for the faults table."""
    rows = []
    d = a.get("disk", {})
    if "skipped" in d:
        rows.append(("disk full on a tmpfs", f"skipped: {d['skipped']}", "0 lost, 0 twice"))
    elif d:
        rows.append(
            (
                f"disk full: {d['cycles']} fill/free cycles on a {d['tmpfs_mb']} MiB tmpfs, SIGKILL after each: "
                f"ACKed TEACH lost; applied twice",
                f"{d['lost']}; {d['applied_twice']} of {d['acknowledged']} "
                f"({d['storage_errors']} STORAGE replies, {d['restarts_failed']} failed restarts)",
                "0; 0",
            )
        )
    j = a.get("junk")
    if j:
        rows.append(
            (
                f"{j['teaches']:,} TEACH through junk ({j['junk_bursts']} bursts) and {j['drops']} drops: "
                f"applied / ACKed; twice",
                f"{j['applied']:,} / {j['acknowledged']:,}; {j['applied_twice']}",
                "equal; 0",
            )
        )
    f = a.get("flood")
    if f:
        rows.append(
            (
                f"{f['strangers']} unauthenticated sockets + {f['flooders']} STATE_EXPORT flooders: key holder's "
                f"p99 / alone",
                f"{f['p99_ratio']:.2f}x ({f['p99_flooded_ms']:.2f} / {f['p99_alone_ms']:.2f} ms)",
                "<= 2x",
            )
        )
        rows.append(
            (
                "... server RSS growth; crashed",
                f"{f['rss_growth_mb']:+.1f} MB; {'no' if f['alive'] else 'YES'}",
                "< 64 MB; no",
            )
        )
    p = a.get("payloads")
    if p:
        rows.append(
            (
                f"{p['fleet_payloads']:,} fuzzed fleet payloads (signed, wrong key, unsigned): thread deaths; "
                f"memory changed",
                f"{p['thread_deaths']}; {'yes' if p['memory_changed'] else 'no'}",
                "0; no",
            )
        )
        rows.append(
            (f"{p['hellos']:,} fuzzed HELLO payloads and class-name lists: crashes", str(p["hello_crashes"]), "0")
        )
    b = a.get("base")
    if b:
        refused = ", ".join(f"{k} {'refused' if v else 'SERVED'}" for k, v in b["refused"].items())
        rows.append(
            (
                "restart with another --dim / --classes / --adapter",
                f"{refused}; state {'intact' if b['intact'] else 'CHANGED'} ({b['items_after']} of "
                f"{b['items_taught']} items)",
                "refused; intact",
            )
        )
    return rows


__all__ = ["JunkProxy", "attacks_markdown", "base_change", "disk_full", "flood", "junk_link", "payload_fuzz", "run"]
