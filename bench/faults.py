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
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.bench.bridge_server import (
    CLASSES,
    KILL_DIM,
    ServerProcess,
    connect,
    memory_file,
    numbered,
    numbers_of,
    percentiles_ms,
)
from edge_runtime.bench.durability import auth_overhead, journal_cost
from edge_runtime.bench.fuzz import Fuzzer, fuzz
from edge_runtime.bench.sections import publish, write_section
from edge_runtime.defaults import DEFAULT_MODEL

SECTION_TITLE = "## Faults and load (bridge)"
ATTACKS_TITLE = "## Attacks on the bridge (issue #24)"


# -- kills ------------------------------------------------------------------------------------------------
class Acknowledged:
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


def _stream(url: str, ledger: Acknowledged, targets: list[tuple[int, int]], seed: int, stop: threading.Event) -> None:
    """One client: TEACH new numbered vectors, FORGET ``targets`` (number, id) now and then, until the link dies."""
    from firmware_bridge.client import BridgeError
    from firmware_bridge.codes import ForgetScope

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
    from firmware_bridge.codes import ErrorCode

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
        "40",
        "--checkpoint-every",
        "0.5",
    ]
    rng = random.Random(seed)
    plan = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT] * per_signal
    rng.shuffle(plan)
    ledger = Acknowledged()
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
            unloadable += sum(
                1 for line in server.lines if "skipped state file" in line or "skipped" in line and "journal:" in line
            )
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
            clients = [
                threading.Thread(
                    target=_stream, args=(url, ledger, targets[k::2], seed * 1000 + trial * 2 + k, stop), daemon=True
                )
                for k in range(2)
            ]
            for c in clients:
                c.start()
            time.sleep(rng.uniform(0.02, 0.5))  # the random moment of the fault, while the clients stream
            server.send(signum)
            code = server.wait()
            stop.set()
            for c in clients:
                c.join(30)
            per[signum.name]["trials"] += 1
            if signum != signal.SIGKILL and (
                code != 0 or not any(line.startswith("edgert bridge: stopped by") for line in server.lines)
            ):
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
    return {
        "trials": len(plan),
        "by_signal": per,
        "acknowledged_ops": ledger.ops_acked,
        "acknowledged_lost": lost,
        "unexpected_items": unknown,
        "unloadable_states": unloadable,
        "unclean_exits": unclean,
        "recovery_s_mean": float(np.mean(recovery)) if recovery else 0.0,
        "recovery_s_max": float(np.max(recovery)) if recovery else 0.0,
        "seconds": time.monotonic() - started,
    }


# -- load -------------------------------------------------------------------------------------------------
def _paced(
    url: str,
    rows: np.ndarray,
    n: int,
    rate: float,
    seed: int,
    out: list[float],
    failures: list[str],
    ready: threading.Barrier,
) -> None:
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
    threads = [
        threading.Thread(target=_paced, args=(url, rows, n, rate, k, times, failures, ready), daemon=True)
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, failures


def load_test(
    work: Path, connections: int, per_client: int, alone: int, rate: float, log: Callable[[str], None]
) -> dict[str, Any]:
    import socket

    from edge_runtime.adapters.ncm import NCM
    from firmware_bridge.codes import ErrorCode
    from firmware_bridge.framing import Framing
    from firmware_bridge.samples import Features

    memory = memory_file(work / "load-memory.npz", NCM(), 1280)
    rows = np.random.default_rng(1).normal(size=(64, 1280)).astype(np.float32)
    half = connections // 2
    with ServerProcess(
        "--memory",
        str(memory),
        "--adapter",
        "ncm",
        "--no-adapt",
        "--max-connections",
        str(connections),
        "--idle-timeout",
        "600",
        "--frame-timeout",
        "600",
        # the idle peers stay (no eviction: this part measures serving beside them)
        "--max-unproven",
        str(connections),
        "--max-per-address",
        str(connections),
    ) as server:
        url = server.wait_listening()
        log(f"faults: load: one client alone, {alone} requests at {rate:g}/s")
        alone_times, failures = _working(url, 1, alone, rate, rows)
        log(f"faults: load: {half} working clients, no idle peers")
        busy_times, more = _working(url, half, per_client, rate, rows)
        failures += more
        host, port = url[len("tcp://") :].rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(connections - half)]
        partial = Framing().pack(1, Features.quantize(rows[0]))
        for sock in idle[: len(idle) // 2]:
            sock.sendall(b"\x00" + partial[: len(partial) // 2])  # half a frame, then silence
        log(
            f"faults: load: {half} working clients beside {len(idle)} idle peers "
            f"({len(idle) // 2} stopped mid-frame)"
        )
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
    a, b, c = percentiles_ms(alone_times), percentiles_ms(busy_times), percentiles_ms(loaded_times)
    return {
        "connections": connections,
        "working_clients": half,
        "idle_peers": connections - half,
        "rate_per_client": rate,
        "alone": a,
        "working_only": b,
        "with_idle_peers": c,
        "requests_sent": alone + 2 * half * per_client,
        "replies": len(alone_times) + len(busy_times) + len(loaded_times),
        "failures": failures[:5],
        "p99_ratio_vs_alone": c["p99_ms"] / a["p99_ms"],
        "p99_ratio_vs_working_only": c["p99_ms"] / b["p99_ms"],
        "refused_beyond_cap": busy_refusal,
        "refusal": refused,
    }


# -- report ------------------------------------------------------------------------------------------------
def faults_markdown(r: dict[str, Any]) -> str:
    """The "Faults and load (bridge)" section: one table of goals and measurements, and how they were taken."""
    if "kills" not in r:  # --attacks-only: the attack scenarios of bench/attacks.py alone
        from .attacks import attacks_markdown

        return (
            "\n".join(
                [
                    ATTACKS_TITLE,
                    "",
                    f"`edgert bench faults --attacks-only{' --quick' if r.get('quick') else ''}` "
                    f"({r['host']}, {r['time_utc']}; {r['seconds']:.0f} s).",
                    "",
                    "| what | measured | goal |",
                    "|---|---:|---:|",
                    *(f"| {a} | {b} | {c} |" for a, b, c in attacks_markdown(r.get("attacks", {}))),
                ]
            )
            + "\n"
        )
    k, ld, fz, au, jr = r["kills"], r["load"], r["fuzz"], r["auth"], r["journal"]
    by = ", ".join(f"{name} {v['trials']}" for name, v in sorted(k["by_signal"].items()))
    gc = jr.get("fsyncs_per_concurrent_teach")
    rows = [
        ("acknowledged TEACH/FORGET lost after a kill", f"{k['acknowledged_lost']} of {k['acknowledged_ops']}", "0"),
        ("restarts or checkpoints that fail to load", str(k["unloadable_states"]), "0"),
        ("SIGTERM/SIGINT exits that were not clean (exit 0, summary)", str(k["unclean_exits"]), "0"),
        (
            "mean time from process start to serving (replay included)",
            f"{k['recovery_s_mean']:.2f} s (max {k['recovery_s_max']:.2f} s)",
            "report",
        ),
        (
            f"replies to the working clients ({ld['working_clients']} working + {ld['idle_peers']} idle)",
            f"{ld['replies']} of {ld['requests_sent']}",
            "all",
        ),
        (
            "working clients' p99 beside idle peers / same client alone",
            f"{ld['p99_ratio_vs_alone']:.2f}x ({ld['with_idle_peers']['p99_ms']:.2f} / {ld['alone']['p99_ms']:.2f} ms)",
            "<= 2x",
        ),
        ("... / the working clients without the idle peers", f"{ld['p99_ratio_vs_working_only']:.2f}x", "report"),
        (f"connection {ld['connections'] + 1} refused with BUSY", "yes" if ld["refused_beyond_cap"] else "no", "yes"),
        ("fuzzed frames: crashes + hangs", f"{fz['crashes']} + {fz['hangs']} in {fz['frames']}", "0"),
        ("fuzzed frames answered INTERNAL", str(fz["internal"]), "0"),
        (
            "server RSS growth, first tenth -> end of the fuzz",
            f"{100 * fz['rss_growth']:+.1f}% ({fz['rss_kb_after_tenth'] / 1024:.0f} -> {fz['rss_kb_end'] / 1024:.0f} MB)",
            "< 5%",
        ),
        (
            "FEATURES p50, keyed (HMAC) / keyless",
            f"{au['p50_ratio']:.3f}x ({au['keyed']['p50_ms']:.3f} / {au['keyless']['p50_ms']:.3f} ms)",
            "<= 1.1x",
        ),
        (
            "TEACH p50, journal (fsync before ACK) / none",
            f"{jr['p50_ratio']:.1f}x ({jr['journal']['p50_ms']:.2f} / {jr['no_journal']['p50_ms']:.2f} ms)",
            "report",
        ),
        (
            f"fsyncs per TEACH, {jr['concurrent_teachers']} teachers at once (group commit)",
            f"{gc:.2f} ({jr['concurrent_teaches_per_s']:.0f} TEACH/s)" if gc is not None else "n/a",
            "report",
        ),
    ]
    if r.get("attacks"):
        from .attacks import attacks_markdown

        rows += attacks_markdown(r["attacks"])
    replies = ", ".join(f"{name} {n}" for name, n in sorted(fz["replies"].items(), key=lambda kv: -kv[1]))
    lines = [
        SECTION_TITLE,
        "",
        f"`edgert bench faults{' --quick' if r.get('quick') else ''}` against real `edgert bridge serve` "
        f"processes on loopback TCP ({r['host']}, {r['time_utc']}; {r['seconds']:.0f} s).",
        "",
        "| what | measured | goal |",
        "|---|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += [
        "",
        f"- Kills: {k['trials']} trials ({by}), at a uniform random moment 20-500 ms into two clients "
        f"streaming TEACH and FORGET at a kNN device journaled with compaction every 40 records; after each "
        f"restart the exported memory is checked against every acknowledgement.",
        f"- Load: {ld['working_clients']} clients each sending FEATURES (1280 x int8) at {ld['rate_per_client']:g}/s "
        f"(Poisson); p99 alone {ld['alone']['p99_ms']:.2f} ms ({ld['alone']['n']} requests), working only "
        f"{ld['working_only']['p99_ms']:.2f} ms, beside the idle peers {ld['with_idle_peers']['p99_ms']:.2f} ms.",
        f"- Fuzz ({'with' if fz['with_backbone'] else 'without'} a backbone for FRAME, key required, journal on): "
        f"replies {replies}."
        + (
            f" Server RSS after each tenth: {', '.join(f'{kb / 1024:.0f}' for kb in fz['rss_kb_by_tenth'])} MB."
            if fz.get("rss_kb_by_tenth")
            else ""
        ),
        f"- Keyed vs keyless and journal vs none: {au['requests']} and {jr['requests']} interleaved round trips.",
    ]
    return "\n".join(lines) + "\n"


# -- CLI ---------------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smaller run for CI (under two minutes)")
    parser.add_argument("--trials", type=int, help="kill trials per signal (default: 100; quick: 5)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections in the load test")
    parser.add_argument("--fuzz", type=int, help="fuzzed frames (default: 100000; quick: 3000)")
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help=f"backbone for FRAME requests in the fuzz (default: {DEFAULT_MODEL}; skipped if absent)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attacks-only",
        action="store_true",
        help="run only the attack scenarios (bench/attacks.py: disk full, junk link, flood, fuzzed "
        "payloads, base change)",
    )
    parser.add_argument("--no-attacks", action="store_true", help="skip the attack scenarios")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument(
        "--report", type=Path, metavar="FILE", help="write the Markdown section into this report (e.g. bench/REPORT.md)"
    )
    parser.set_defaults(main=main)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    quick = args.quick
    trials = args.trials or (5 if quick else 100)
    frames = args.fuzz or (3000 if quick else 100_000)
    started = time.monotonic()
    results: dict[str, Any] = {
        "quick": quick,
        "host": os.uname().nodename,
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="edgert-faults-") as tmp:
        work = Path(tmp)
        if not getattr(args, "no_attacks", False):
            from .attacks import run as attacks

            results["attacks"] = attacks(work, quick, args.seed, log)
        if getattr(args, "attacks_only", False):
            results["seconds"] = time.monotonic() - started
            return results
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
    title = ATTACKS_TITLE if getattr(args, "attacks_only", False) else SECTION_TITLE
    publish(args, results, faults_markdown(results), title)
    return 0


__all__ = [
    "Acknowledged",
    "Fuzzer",
    "ServerProcess",
    "configure",
    "connect",
    "faults_markdown",
    "main",
    "numbered",
    "numbers_of",
    "run",
    "write_section",
]
