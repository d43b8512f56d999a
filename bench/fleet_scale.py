"""``edgert bench fleet --parts scale --devices 10,100,1000``: many devices on one Mosquitto.

Every simulated device is a real ``FleetSync`` (its own paho MQTT v5 client, broker login,
signed payloads, ledger) on NCM statistics: a source memory fitted on synthetic ``--scale-dim``-d
features of 8 classes (default 128-d: a one-class delta is about 1.4 KB against about 10 KB for
the real backbone's 1280-d, and 1,000 devices' per-peer ledgers fit this machine's memory).
Devices run in ``--scale-workers`` processes (default 2, one per core), each driving its devices'
clients from one thread with a selector (``FleetSync.start(loop=False)``), so a merge is never
preempted by another device's thread holding the GIL: 1,000 devices are 2 processes and 1,000
sockets, with ``RLIMIT_NOFILE`` raised to its hard limit for them and for the broker (Mosquitto
has no ``max_connections`` limit by default; each client costs it one descriptor).

Load: devices step like 10 fps cameras; during a window of ``--scale-window`` seconds the fleet is
taught ``--scale-rate`` frames per second in all, each on a random device at a random time (a
person labelling now and then, whatever the fleet's size). Measured per fleet size:

- convergence: from the last update published (any device) until every device has applied the
  last update of every peer (its ledger's sequence numbers equal every peer's final one);
- merge of one peer's update (``FleetSync.merge_ms``: ledger bookkeeping and adding to the
  memory), p50 / p99 over every device;
- broker CPU (``/proc/<pid>/stat`` utime + stime) over the run, per device bytes sent and received
  per minute;
- exactness: every device's statistics equal the source memory plus every device's own published
  contribution (counts exactly, sums to rtol 1e-9), and the ledger's outcome counts (an update
  applied twice would break the counts, one lost the sequence numbers).

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import selectors
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

SHA = "e" * 64
CLASSES = 8
FPS = 10.0


def broker_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_memory(dim: int) -> tuple[Any, np.ndarray]:
    from edge_runtime.adapters import make_adapter

    rng = np.random.default_rng(0)
    means = rng.normal(size=(CLASSES, dim))
    y = np.arange(20 * CLASSES) % CLASSES
    x = (means[y] + 0.5 * rng.normal(size=(len(y), dim))).astype(np.float32)
    return make_adapter("ncm").fit(x, y, CLASSES), means


def worker(index: int, names: list[str], url: str, key: bytes, passwords: dict[str, str], dim: int, conn: Any) -> None:
    """One process: its devices' clients on one selector; follows the coordinator's messages."""
    if os.environ.get("EDGERT_SCALE_PROFILE"):
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(_worker, index, names, url, key, passwords, dim, conn)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        return
    _worker(index, names, url, key, passwords, dim, conn)


def _worker(index: int, names: list[str], url: str, key: bytes, passwords: dict[str, str], dim: int, conn: Any) -> None:
    import copy

    from edge_runtime.fleet.sync import FleetSync

    base, means = source_memory(dim)
    syncs = [
        FleetSync(copy.deepcopy(base), url, name, [key], SHA, password=passwords[name], log=lambda line: None)
        for name in names
    ]
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + 120
    for i, sync in enumerate(syncs):  # connect in small batches: no storm of 1,000 handshakes at once
        sync.start(loop=False)
        sync._client.reconnect()
        sync._sock = sync._client.socket()
        selector.register(sync._sock, selectors.EVENT_READ, sync)
        if i % 20 == 19:
            pump(selector, syncs[: i + 1], 0.0)

    def ready() -> bool:
        return all(s.ready.is_set() for s in syncs)

    while not ready() and time.monotonic() < deadline:
        pump(selector, syncs, 0.01)
    conn.send(("ready", sum(s.ready.is_set() for s in syncs)))
    _, t0, window, schedule = conn.recv()  # schedule: (local device, seconds after t0, class, seed)
    schedule = sorted(schedule, key=lambda row: row[1])
    last_applied = [0.0] * len(syncs)
    last_publish, seqs = 0.0, [0] * len(syncs)
    next_step = [t0 + (i % 100) / 100 / FPS for i in range(len(syncs))]
    expect: dict[str, int] | None = None
    stop_at = t0 + window + 120.0  # the bound of the whole run
    reported = done_sent = False
    loops, busy = 0, [False] * len(syncs)
    cpu0 = time.process_time()
    while time.monotonic() < stop_at:
        loops += 1
        pump(selector, syncs, 0.002)
        now = time.monotonic()
        while schedule and now >= t0 + schedule[0][1]:
            i, _, label, seed = schedule.pop(0)
            x = (means[label] + 0.5 * np.random.default_rng(seed).normal(size=dim)).astype(np.float32)[None]
            syncs[i].teach(x, np.array([label]))
            busy[i] = True
        for i, sync in enumerate(syncs):
            if now < next_step[i]:
                continue
            next_step[i] += 1 / FPS
            # A frame with nothing to apply or publish is skipped: what step() would do then is
            # nothing, and 1,000 devices' empty steps would cost this process more than their merges.
            if not (busy[i] or sync._resend or not sync._inbox.empty() or sync.ledger.seq > sync._snapshot[0]):
                continue
            busy[i] = sync.ledger.has_pending
            if sync.step():
                last_applied[i] = time.monotonic()
            if sync.ledger.seq != seqs[i]:
                seqs[i], last_publish = sync.ledger.seq, time.monotonic()
        if (
            not reported
            and now > t0 + window + 1.0
            and not schedule
            and not any(s.ledger.has_pending or s._outbox for s in syncs)
        ):
            own = {k: sum(s.ledger.own[k] for s in syncs) for k in syncs[0].ledger.own}
            conn.send(("published", {s.device: s.ledger.seq for s in syncs}, last_publish, own))
            reported = True
        if reported and expect is None and conn.poll():
            _, expect, total_own = conn.recv()
        if expect is not None and not done_sent and all(converged(s, expect) for s in syncs):
            conn.send(("converged", max(last_applied), time.process_time() - cpu0))
            done_sent = True
        if done_sent and conn.poll():
            break
    if os.environ.get("EDGERT_SCALE_DEBUG"):
        print(
            f"worker {index}: loops {loops}, connected {sum(s._client.is_connected() for s in syncs)}, "
            f"inbox {sum(s._inbox.qsize() for s in syncs)}, counts {sum((s.counts for s in syncs), Counter())}",
            file=sys.stderr,
            flush=True,
        )
    if not done_sent:
        missing = sum(not converged(s, expect or {}) for s in syncs)
        conn.send(("timeout", missing, time.process_time() - cpu0))
        conn.recv()
    # exactness and figures
    worst, counts_equal = 0.0, True
    for sync in syncs:
        stats = sync.adapter.statistics()
        for k, v in base.statistics().items():
            want = v + total_own[k] if expect is not None else v
            counts_equal &= bool(np.array_equal(stats[k][0], want[0]))
            scale = np.maximum(np.abs(want[1:]), 1e-9 * np.abs(want[1:]).max())
            worst = max(worst, float(np.max(np.abs(stats[k][1:] - want[1:]) / scale)))
    outcomes: dict[str, int] = {}
    for sync in syncs:
        for name, count in sync.counts.items():
            outcomes[name] = outcomes.get(name, 0) + count
    conn.send(
        {
            "merge_ms": np.concatenate([s.merge_ms.values() for s in syncs]),
            "merge_cpu_ms": np.concatenate([s.merge_cpu_ms.values() for s in syncs]),
            "bytes_sent": [s.bytes_sent for s in syncs],
            "bytes_received": [s.bytes_received for s in syncs],
            "counts_equal": counts_equal,
            "max_relative_error": worst,
            "outcomes": outcomes,
            "rejected": sum(sum(s.rejected.values()) for s in syncs),
        }
    )
    for sync in syncs:
        sync._client.disconnect()
    pump(selector, syncs, 0.05)


def converged(sync: Any, expect: dict[str, int]) -> bool:
    peers = sync.ledger.peers
    return all(peers[p].seq == q if p in peers else False for p, q in expect.items() if p != sync.device and q)


def pump(selector: selectors.BaseSelector, syncs: list[Any], timeout: float) -> None:
    """One round of network I/O for every client of this process; a client that lost its
    connection (a starved process can miss its keepalive) reconnects, as paho's own loop would."""
    for key, _ in selector.select(timeout):
        if key.data._client.loop_read(64):
            selector.unregister(key.fileobj)
    now = time.monotonic()
    for sync in syncs:
        client = sync._client
        if client.socket() is not None and client.want_write():
            client.loop_write()
        if now - getattr(sync, "_misc", 0.0) > 1.0:
            sync._misc = now
            client.loop_misc()
            if client.socket() is None:
                try:
                    selector.unregister(sync._sock)
                except (KeyError, ValueError):
                    pass
                try:
                    client.reconnect()
                except OSError:
                    continue
                sync._sock = client.socket()
                selector.register(sync._sock, selectors.EVENT_READ, sync)


def scale_run(
    devices: int, workers: int, dim: int, window: float, rate: float, key: bytes, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    from edge_runtime.fleet.broker import Broker

    names = [f"s{i:04d}" for i in range(devices)]
    limit = raise_fd_limit()
    log(f"fleet scale: {devices} devices in {workers} processes (RLIMIT_NOFILE {limit})")
    with Broker(work / f"broker-{devices}", "scale", names) as broker:
        ctx = mp.get_context("fork")
        parts = [names[w::workers] for w in range(workers)]
        pipes, procs = [], []
        for w, part in enumerate(parts):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker,
                args=(w, part, broker.url_for("scale"), key, {n: broker.passwords[n] for n in part}, dim, theirs),
                daemon=True,
            )
            proc.start()
            pipes.append(ours)
            procs.append(proc)
        try:
            started = time.monotonic()
            connected = sum(recv(p, 180)[1] for p in pipes)
            connect_s = time.monotonic() - started
            log(f"fleet scale: {connected}/{devices} connected and ready in {connect_s:.1f} s")
            rng = np.random.default_rng(devices)
            taught = int(round(rate * window))
            who = rng.integers(0, devices, taught)
            t0 = time.monotonic() + 1.0
            cpu0 = broker_cpu(broker.pid)
            for w, pipe in enumerate(pipes):
                mine = [
                    (
                        int(d) // workers,
                        float(rng.uniform(0, window)),
                        int(rng.integers(0, CLASSES)),
                        int(rng.integers(1 << 30)),
                    )
                    for d in who
                    if int(d) % workers == w
                ]
                pipe.send(("go", t0, window, mine))
            published = [recv(p, window + 150) for p in pipes]
            expect = {k: v for msg in published for k, v in msg[1].items()}
            last_publish = max(msg[2] for msg in published)
            total_own = {k: sum(msg[3][k] for msg in published) for k in published[0][3]}
            for pipe in pipes:
                pipe.send(("expect", expect, total_own))
            ends = [recv(p, 150) for p in pipes]
            ok = all(e[0] == "converged" for e in ends)
            ended = time.monotonic()
            cpu1 = broker_cpu(broker.pid)
            for pipe in pipes:
                pipe.send("report")
            reports = [recv(p, 60) for p in pipes]
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
    minutes = window / 60  # the traffic the teaching window makes, however long the simulation took to take it in
    merge = np.concatenate([r["merge_ms"] for r in reports])
    merge_cpu = np.concatenate([r["merge_cpu_ms"] for r in reports])
    sent = np.concatenate([r["bytes_sent"] for r in reports]) / minutes
    received = np.concatenate([r["bytes_received"] for r in reports]) / minutes
    outcomes: dict[str, int] = {}
    for r in reports:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    convergence = max(0.0, max(e[1] for e in ends) - last_publish) if ok else None
    load = os.getloadavg()[0]
    row = {
        "devices": devices,
        "workers": workers,
        "dim": dim,
        "window_s": window,
        "taught": taught,
        "updates_published": int(sum(expect.values())),
        "connected": connected,
        "connect_s": round(connect_s, 2),
        "converged": ok,
        "convergence_s": convergence,
        "not_converged_devices": sum(e[1] for e in ends if e[0] == "timeout"),
        "merge_ms": {
            "p50": float(np.percentile(merge, 50)),
            "p99": float(np.percentile(merge, 99)),
            "n": int(len(merge)),
        }
        if len(merge)
        else None,
        "merge_cpu_ms": {"p50": float(np.percentile(merge_cpu, 50)), "p99": float(np.percentile(merge_cpu, 99))}
        if len(merge)
        else None,
        "devices_cpu_s": round(sum(e[2] for e in ends), 2),
        "broker_cpu_s": round(cpu1 - cpu0, 2),
        "broker_cpu_percent": round(100 * (cpu1 - cpu0) / (ended - t0), 1),
        "run_s": round(ended - t0, 1),
        "load_average": round(load, 1),
        "bytes_sent_per_device_minute": {"mean": float(sent.mean()), "max": float(sent.max())},
        "bytes_received_per_device_minute": {"mean": float(received.mean()), "max": float(received.max())},
        "exact": all(r["counts_equal"] for r in reports) and max(r["max_relative_error"] for r in reports) <= 1e-9,
        "counts_equal": all(r["counts_equal"] for r in reports),
        "max_relative_error": max(r["max_relative_error"] for r in reports),
        "outcomes": outcomes,
        "rejected": sum(r["rejected"] for r in reports),
    }
    log(
        f"fleet scale: {devices} devices: converged {ok} in {convergence} s after the last publish, merge p50/p99 "
        f"{row['merge_ms'] and round(row['merge_ms']['p50'], 3)}/{row['merge_ms'] and round(row['merge_ms']['p99'], 3)} "
        f"ms, broker {row['broker_cpu_percent']}% CPU, exact {row['exact']}"
    )
    return row


def recv(pipe: Any, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a fleet scale worker said nothing for {timeout:.0f} s")
    return pipe.recv()


def run(
    sizes: list[int], workers: int, dim: int, window: float, rate: float, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    key = os.urandom(32)
    rows = [scale_run(n, workers, dim, window, rate, key, work, log) for n in sizes]
    return {"rows": rows, "dim": dim, "window_s": window, "rate": rate, "workers": workers}


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["merge_ms"]]
    n = [r["devices"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(n, [r["convergence_s"] if r["convergence_s"] is not None else np.nan for r in rows], "o-")
    axes[0].axhline(10, color="grey", ls="--", lw=0.8)
    axes[0].set(title="convergence after the last publish", ylabel="s")
    axes[1].plot(n, [r["merge_ms"]["p50"] for r in rows], "o-", label="p50")
    axes[1].plot(n, [r["merge_ms"]["p99"] for r in rows], "s-", label="p99")
    axes[1].plot(n, [r["merge_cpu_ms"]["p99"] for r in rows], "s--", label="p99, thread CPU time")
    axes[1].axhline(5, color="grey", ls="--", lw=0.8)
    axes[1].set(title="merge of one peer update", ylabel="ms")
    axes[1].legend()
    axes[2].plot(n, [r["bytes_received_per_device_minute"]["mean"] / 1e3 for r in rows], "o-", label="received")
    axes[2].plot(n, [r["bytes_sent_per_device_minute"]["mean"] / 1e3 for r in rows], "s-", label="sent")
    axes[2].set(title="per device, per minute of teaching", ylabel="KB per minute")
    axes[2].legend()
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("devices on one Mosquitto")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Scale: simulated devices (real paho clients and `FleetSync`s, NCM statistics of {result['dim']}-d "
        f"features, 8 classes, 10 fps steps) in {result['workers']} processes on one Mosquitto; "
        f"{result['rate']:g} taught frames per second in all over {result['window_s']:g} s, each on a random "
        f"device:",
        "",
        "| devices | converged after the last publish | merge p50 / p99 (wall; thread CPU) | broker CPU | "
        "simulated devices' CPU | load average | bytes/min per device sent / received | exact (counts, rel. "
        "error) | applied, duplicates, gaps, resyncs |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        m, o = r["merge_ms"], r["outcomes"]
        conv = f"{r['convergence_s']:.2f} s" if r["converged"] else f"NO ({r['not_converged_devices']} devices)"
        c = r["merge_cpu_ms"]
        lines.append(
            f"| {r['devices']:,} | {conv} | {m['p50']:.3f} / {m['p99']:.2f} ms; {c['p50']:.3f} / {c['p99']:.2f} "
            f"ms | {r['broker_cpu_percent']:.0f}% of a core ({r['broker_cpu_s']:.1f} s) | "
            f"{r['devices_cpu_s']:.1f} s in {r['run_s']:.0f} s | {r['load_average']:.0f} | "
            f"{r['bytes_sent_per_device_minute']['mean'] / 1e3:,.1f} / "
            f"{r['bytes_received_per_device_minute']['mean'] / 1e3:,.0f} KB | "
            f"{'yes' if r['exact'] else 'NO'} ({r['max_relative_error']:.0e}) | "
            + ", ".join(str(o.get(k, 0)) for k in ("applied", "duplicate", "gap", "resynced"))
            + " |"
        )
    if result.get("plot"):
        lines += ["", f"![fleet scale](plots/{Path(result['plot']).name})"]
    return lines
