"""The price of safety on the bridge: HMAC authentication and the journal's fsyncs, interleaved (``edgert bench faults``)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.bench.bridge_server import ServerProcess, connect, memory_file, percentiles_ms


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
    memory = memory_file(work / "auth-memory.npz", NCM(), 1280)
    rows = np.random.default_rng(2).normal(size=(32, 1280)).astype(np.float32)
    base = ["--memory", str(memory), "--adapter", "ncm"]
    with ExitStack() as stack:
        servers = [
            stack.enter_context(ServerProcess(*base, *(["--key-file", str(key_file)] if keyed else [])))
            for _ in range(pairs)
            for keyed in (False, True)
        ]
        urls = [server.wait_listening() for server in servers]  # all started before any connects: a
        clients = [connect(url, key if i % 2 else None) for i, url in enumerate(urls)]  # keyed peer must AUTH in 10 s
        for c in clients:
            c.hello()
        i = iter(range(10**9))
        calls = [lambda c=c: c.classify(rows[next(i) % 32]) for c in clients]
        _interleaved(calls, 50)  # warm-up
        times = _interleaved(calls, requests)
        for c in clients:
            c.transport.close()
    p = percentiles_ms([t for k in range(0, len(times), 2) for t in times[k]])
    k = percentiles_ms([t for k in range(1, len(times), 2) for t in times[k]])
    return {
        "requests": requests * pairs,
        "processes_per_kind": pairs,
        "keyless": p,
        "keyed": k,
        "p50_ratio": k["p50_ms"] / p["p50_ms"],
    }


def journal_cost(work: Path, requests: int, teachers: int = 8) -> dict[str, Any]:
    from edge_runtime.adapters.ncm import NCM

    memory = memory_file(work / "journal-memory.npz", NCM(), 1280)
    rows = np.random.default_rng(3).normal(size=(32, 1280)).astype(np.float32)
    base = ["--memory", str(memory), "--adapter", "ncm"]
    with (
        ServerProcess(*base) as plain,
        ServerProcess(*base, "--state", str(work / "journal-state"), "--compact-every", "100000") as durable,
    ):
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
    p, j = percentiles_ms(t_plain), percentiles_ms(t_journal)
    concurrent = teachers * per
    return {
        "requests": requests,
        "no_journal": p,
        "journal": j,
        "p50_ratio": j["p50_ms"] / p["p50_ms"],
        "concurrent_teachers": teachers,
        "concurrent_teaches": concurrent,
        "fsyncs_per_concurrent_teach": (fsyncs - sequential) / concurrent if found else None,
        "concurrent_teaches_per_s": concurrent / concurrent_s,
        "journal_records": records,
    }
