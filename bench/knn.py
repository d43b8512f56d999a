"""``edgert bench knn``: visual-memory search and unlearning cost, and DMN's per-sample adapt cost.

In one run, side by side under the same load:

- exact (numpy matmul + fixed-order rescoring) vs. ANN (faiss IVF-Flat) search at each size
  (default 10k and 100k entries x 1280): recall@10 of the ANN against the exact answer, single-query
  latency p50/p90/p99 of both (queries interleaved, so both see the same contention), the speed
  ratio, and the exact search's ms/query when queries come in a batch;
- ``remove`` of one entry from a durable memory of the largest size, including the SQLite delete
  and its commit (fsync), and the one-off ``compact()`` that purges the bytes from the files;
- DMN ``adapt`` per sample (9 classes, L = 50, d = 1280, rings as 1000 admitted frames fill them, linear-head prior).

Every latency is reported as wall time and as this process's CPU time (see ``Clock``): on a
shared machine the second is the one that measures the work. BLAS and faiss run one thread.

The entries are synthetic: a seeded mixture of Gaussian clusters (cluster sizes and spreads vary,
plus a shared mean direction, as pooled CNN features have), because no real data set here has
10^5 images; recall on real features may differ and the report says which data was used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.numerics import percentiles

D = 1280


def mixture(n: int, n_queries: int, seed: int, d: int = D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(entries (n, d) float32, labels (n,), queries (n_queries, d)) from one seeded cluster mixture."""
    rng = np.random.default_rng(seed)
    n_clusters = max(10, n // 100)
    common = rng.normal(size=d).astype(np.float32)
    centres = (rng.normal(size=(n_clusters, d)) + 1.5 * common).astype(np.float32)
    spread = rng.uniform(0.5, 1.5, n_clusters).astype(np.float32)
    popularity = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    cluster = rng.choice(n_clusters, n + n_queries, p=popularity / popularity.sum())
    points = np.empty((n + n_queries, d), dtype=np.float32)
    for start in range(0, len(points), 8192):
        c = cluster[start : start + 8192]
        points[start : start + len(c)] = centres[c] + spread[c, None] * rng.standard_normal(
            (len(c), d), dtype=np.float32
        )
    return points[:n], (cluster[:n] % 10).astype(np.int64), points[n:]


class Clock:
    """Wall time and this process's CPU time of each timed call.

    On a shared machine a call longer than a scheduler slice waits behind every other runnable
    process, so wall time measures the queue as much as the work; CPU time (``process_time``,
    all threads of this process; BLAS and faiss run one thread here) measures the work. Both are
    reported, and ratios are taken from the same run.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)

    def summary(self) -> dict[str, Any]:
        return {"wall": percentiles(self.wall, scale=1e3), "cpu": percentiles(self.cpu, scale=1e3)}


def search_sizes(sizes: list[int], n_queries: int, k: int, nprobe: int, seed: int) -> dict[str, Any]:
    from edge_runtime.memory.visual_memory import VisualMemory

    out: dict[str, Any] = {}
    for n in sizes:
        entries, labels, queries = mixture(n, n_queries, seed)
        exact = VisualMemory(D)
        exact.add(entries, labels)
        ann = VisualMemory(D, backend="faiss", nprobe=nprobe)
        start = time.perf_counter()
        ann.add(entries, labels)
        build_s = time.perf_counter() - start
        del entries
        for q in queries[:5]:  # warm-up
            exact.search(q, k)
            ann.search(q, k)
        t_exact, t_ann, hits = Clock(), Clock(), 0
        for q in queries:
            with t_exact:
                _, truth = exact.search(q, k)
            with t_ann:
                _, approx = ann.search(q, k)
            hits += len(set(truth[0].tolist()) & set(approx[0].tolist()))
        batched = Clock()
        with batched:
            exact.search(queries, k)
        exact_p, ann_p = t_exact.summary(), t_ann.summary()
        row = {
            "entries": n,
            "queries": len(queries),
            "k": k,
            "nprobe": nprobe,
            "recall_at_k": hits / (k * len(queries)),
            "exact": exact_p,
            "ann": ann_p,
            "speed_ratio_exact_over_ann_cpu_p50": exact_p["cpu"]["p50_ms"] / max(ann_p["cpu"]["p50_ms"], 1e-6),
            "speed_ratio_exact_over_ann_wall_p50": exact_p["wall"]["p50_ms"] / ann_p["wall"]["p50_ms"],
            "exact_batched_ms_per_query": {
                "wall": 1e3 * batched.wall[0] / len(queries),
                "cpu": 1e3 * batched.cpu[0] / len(queries),
            },
            "ann_build_s": build_s,
        }
        out[str(n)] = row
        print(
            f"  {n:>7} entries: recall@{k} {row['recall_at_k']:.3f}; p50 cpu/wall ms: exact "
            f"{exact_p['cpu']['p50_ms']:.2f}/{exact_p['wall']['p50_ms']:.2f}, ann {ann_p['cpu']['p50_ms']:.3f}/"
            f"{ann_p['wall']['p50_ms']:.3f} (x{row['speed_ratio_exact_over_ann_cpu_p50']:.0f} cpu); exact batched "
            f"{row['exact_batched_ms_per_query']['cpu']:.2f} ms/query cpu; ann build {build_s:.1f} s",
            file=sys.stderr,
        )
        del exact, ann
    return out


def removal(n: int, removes: int, seed: int, workdir: Path) -> dict[str, Any]:
    from edge_runtime.memory.visual_memory import VisualMemory

    entries, labels, _ = mixture(n, 0, seed)
    path = workdir / "bench-knn.db"
    memory = VisualMemory(D, path)
    start = time.perf_counter()
    for first in range(0, n, 10_000):  # one committed transaction per 10k entries
        memory.add(entries[first : first + 10_000], labels[first : first + 10_000])
    fill_s = time.perf_counter() - start
    victims = np.random.default_rng(seed).choice(n, removes, replace=False)
    clock = Clock()
    for victim in victims:
        with clock:
            memory.remove_ids([int(victim)])
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    start = time.perf_counter()
    memory.compact()
    compact_s = time.perf_counter() - start
    memory.close()
    result = {
        "entries": n,
        "removes": removes,
        "durable_remove": clock.summary(),
        "fill_s": fill_s,
        "compact_s": compact_s,
        "database_bytes": size,
        "how": "VisualMemory.remove_ids of one id: SQLite DELETE + COMMIT (WAL, synchronous=FULL, "
        "secure_delete) then the RAM swap-remove",
    }
    print(
        f"  remove one of {n}: p50 {result['durable_remove']['wall']['p50_ms']:.2f} ms wall (durable: "
        f"includes the fsync), {result['durable_remove']['cpu']['p50_ms']:.2f} ms cpu; "
        f"compact {compact_s:.1f} s for {size / 1e6:.0f} MB",
        file=sys.stderr,
    )
    return result


def dmn_adapt(samples: int, seed: int) -> dict[str, Any]:
    from edge_runtime.adapters.dmn import DMN

    entries, _, stream = mixture(900, 1000 + samples, seed)
    labels = np.repeat(np.arange(9), 100)  # 9 classes of 100 labelled rows
    # write_gate 1 admits every frame: the default gate refuses these synthetic frames and the rings
    # would stay empty, which times a read-out of nothing. ``ring_fill`` reports what they hold.
    dmn = DMN(prior="linear", memory_length=50, write_gate=1.0).fit(entries, labels, n_classes=9)
    dmn.prepare()
    dmn.adapt(stream[:1000])
    adapt, prior = Clock(), Clock()
    for row in stream[1000:]:
        one = row[None]
        with adapt:
            dmn.adapt(one)
    for row in stream[1000:]:
        one = row[None]
        with prior:
            dmn.prior_proba(one)
    result = {
        "classes": 9,
        "memory_length": 50,
        "dim": D,
        "ring_fill": dmn.memory_fill.tolist(),
        "adapt_us": {
            kind: {k.replace("_ms", "_us"): 1e3 * v for k, v in p.items()} for kind, p in adapt.summary().items()
        },
        "prior_and_shift_only_us_p50": {kind: 1e3 * p["p50_ms"] for kind, p in prior.summary().items()},
    }
    print(
        f"  dmn adapt p50 {result['adapt_us']['cpu']['p50_us']:.0f} us cpu, {result['adapt_us']['wall']['p50_us']:.0f} us "
        f"wall (prior + shift alone {result['prior_and_shift_only_us_p50']['cpu']:.0f} us cpu)",
        file=sys.stderr,
    )
    return result


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated memory sizes (entries of width 1280)")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per size")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    parser.add_argument("--removes", type=int, default=50, help="single-entry removals timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the durable memory is written (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    # One BLAS thread, as on a device and as faiss runs here: on a shared machine extra BLAS
    # threads spin against other processes and make both the timing and the ratio noise.
    with threadpool_limits(limits=1):
        return run(args)


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report: dict[str, Any] = {"data": "synthetic seeded Gaussian-cluster mixture (see module docstring)"}
    print("search: exact vs faiss IVF-Flat", file=sys.stderr)
    report["search"] = search_sizes(sizes, args.queries, args.k, args.nprobe, args.seed)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        report["remove"] = removal(max(sizes), args.removes, args.seed, Path(tmp))
    report["dmn"] = dmn_adapt(1000, args.seed)
    lines = [
        "| entries | recall@%d | exact p50 ms (cpu / wall) | ANN p50 ms (cpu / wall) | exact/ANN (cpu) | "
        "exact batched ms/query (cpu) |" % args.k,
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["search"].values():
        e, a = row["exact"], row["ann"]
        lines.append(
            f"| {row['entries']} | {row['recall_at_k']:.3f} | {e['cpu']['p50_ms']:.2f} / {e['wall']['p50_ms']:.2f} | "
            f"{a['cpu']['p50_ms']:.3f} / {a['wall']['p50_ms']:.3f} | {row['speed_ratio_exact_over_ann_cpu_p50']:.1f} | "
            f"{row['exact_batched_ms_per_query']['cpu']:.2f} |"
        )
    r, m = report["remove"], report["dmn"]
    lines.append(
        f"\nremove one entry of {r['entries']} (durable): p50 {r['durable_remove']['wall']['p50_ms']:.2f} ms wall, "
        f"p99 {r['durable_remove']['wall']['p99_ms']:.2f} ms wall; compact {r['compact_s']:.1f} s"
    )
    lines.append(
        f"dmn adapt (9 classes, L=50, d=1280): p50 {m['adapt_us']['cpu']['p50_us']:.0f} us cpu / "
        f"{m['adapt_us']['wall']['p50_us']:.0f} us wall (prior + shift alone {m['prior_and_shift_only_us_p50']['cpu']:.0f} us cpu)"
    )
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
