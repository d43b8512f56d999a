"""``edgert bench fleet``: N devices as separate processes on one real Mosquitto, isolated vs fleet.

Every device is a process of its own (``python -m edge_runtime.bench.fleet device ...``): it
loads the source memory (MemFlow or NCM, default parameters, fitted on the task's source), streams its
shard of the task's shifted target (features from the real backbone, cached; frame i of the
stream goes to device i mod N), adapts on every frame and is taught the true label of one frame
in ``--teach-every`` (a person labelling now and then). It checkpoints every second and before
each update it publishes, like ``edgert run --state``. Measured, in one run:

- **gain**: online accuracy (the prediction made before the frame's own update) of the same
  shards with devices isolated and in a fleet, per tenth of the stream and overall, over
  ``--orders`` stream orders;
- **cost**: bytes per update (delta payloads, and the retained snapshot that follows them), the
  delta of one taught frame and of all 9 classes at once for the default MemFlow, merge latency
  per applied delta (p50/p99, inside the running devices and on an idle core), updates per second
  the broker sustains (4 publishers, 4 subscribers, QoS 1, signed one-class deltas);
- **faults**, each a fleet run with checkpoints: the broker SIGKILLed mid-run and restarted;
  a device SIGKILLed mid-run and restarted from its checkpoint; a device offline for 1,000
  frames. After each, every device's statistics must equal the source memory's plus every
  device's own published contribution (nothing lost, nothing applied twice: counts exactly, sums
  to rtol 1e-9), every device must have applied every peer's last update, and every device's
  frame count must have kept rising while the fault lasted.

``--quick`` runs a smaller version (CI). ``--report FILE`` writes the section into a Markdown
report.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.bench.fleet_device import SHA, Arm, check_exact, device_main, prepare
from edge_runtime.bench.sections import publish

SECTION_TITLE = "## Fleet memory (MQTT)"
FLEET = "bench"
PARTS = "gain,cost,throughput,faults"
GAIN = "memflow:photo->clipart,memflow:mnist->uci-digits,ncm:photo->clipart,ncm:mnist->uci-digits"


# -- the figures ---------------------------------------------------------------------------------------------
def curve(accuracy: list[np.ndarray], bins: int = 10) -> list[float]:
    """Mean online accuracy of all devices per tenth of their stream (percent)."""
    n = min(len(a) for a in accuracy)
    hits = np.stack([a[:n, 1] for a in accuracy]).mean(axis=0)
    return [round(100 * float(part.mean()), 1) for part in np.array_split(hits, bins)]


def gain(
    work: Path,
    broker: Any,
    key: Path,
    adapter: str,
    task: str,
    devices: int,
    teach_every: int,
    orders: int,
    limit: int | None,
    fps: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    runs = []
    for order in range(orders):
        memory, shards, base = prepare(work, adapter, task, devices, teach_every, order, limit)
        row: dict[str, Any] = {"order": order}
        for mode in ("isolated", "fleet"):
            log(f"fleet: gain, {adapter} on {task}, order {order}: {devices} {mode} devices")
            run = f"{mode}-{adapter}-{re.sub(r'[^a-z0-9]+', '-', task)}-{order}"
            arm = Arm(
                work / run, memory, shards, broker=broker if mode == "fleet" else None, key_file=key, fps=fps, log=log
            )
            done = arm.finish()
            row[mode] = {
                "mean": round(100 * float(np.mean([a[:, 1].mean() for a in done["accuracy"]])), 2),
                "curve": curve(done["accuracy"]),
                "converged": done["converged"],
            }
            if mode == "fleet":
                row["fleet"]["exact"] = check_exact(base.statistics(), done["finals"])
                row["fleet"]["merge_ms"] = np.concatenate([f["merge_ms"] for f in done["finals"]]).tolist()
                row["fleet"]["bytes_sent"] = sum(s.get("bytes_sent", 0) for s in done["statuses"])
                row["fleet"]["updates"] = sum(s.get("seq", 0) for s in done["statuses"])
        runs.append(row)
    iso = [r["isolated"]["mean"] for r in runs]
    fl = [r["fleet"]["mean"] for r in runs]
    merge = np.concatenate([r["fleet"]["merge_ms"] for r in runs]) if runs else np.zeros(0)
    for r in runs:
        r["fleet"].pop("merge_ms")
    return {
        "adapter": adapter,
        "task": task,
        "devices": devices,
        "teach_every": teach_every,
        "runs": runs,
        "isolated_mean": round(float(np.mean(iso)), 2),
        "fleet_mean": round(float(np.mean(fl)), 2),
        "isolated_curve": [round(float(v), 1) for v in np.mean([r["isolated"]["curve"] for r in runs], axis=0)],
        "fleet_curve": [round(float(v), 1) for v in np.mean([r["fleet"]["curve"] for r in runs], axis=0)],
        "merge_in_run_ms": {
            "p50": float(np.percentile(merge, 50)),
            "p99": float(np.percentile(merge, 99)),
            "n": int(len(merge)),
        }
        if len(merge)
        else None,
        "all_exact": all(r["fleet"]["exact"]["exact"] and r["fleet"]["converged"] for r in runs),
    }


def cost(n_classes: int, merges: int) -> dict[str, Any]:
    """Payload sizes and merge latency of the default MemFlow (1280-d features, ``n_classes``)."""
    from edge_runtime.adapters.memflow import MemFlow
    from edge_runtime.fleet.ledger import Ledger
    from edge_runtime.fleet.payload import encode

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30 * n_classes, 1280)).astype(np.float32) + 2.0
    y = np.arange(len(x)) % n_classes
    adapter = MemFlow().fit(x, y, n_classes)
    key = bytes(32)
    zeros = {k: np.zeros_like(v) for k, v in adapter.statistics().items()}
    header = {"kind": "delta", "device": "cam0", "seq": 1, "model": SHA, "memory": SHA, "t": 0.0}

    def sizes(labels: np.ndarray) -> list[int]:
        ledger = Ledger("cam0", zeros)
        ledger.record(adapter.taught_statistics(x[: len(labels)], labels))
        return [len(encode(header, arrays, key)) for _, arrays in ledger.take(64 * 1024)]

    one, every = sizes(np.array([0])), sizes(np.arange(n_classes))
    ledger = Ledger("cam0", zeros)
    ledger.record(adapter.taught_statistics(x[:n_classes], np.arange(n_classes)))
    ledger.take(64 * 1024)
    snapshot = len(encode({**header, "kind": "snapshot"}, ledger.snapshot()[1], key))
    receiver = Ledger("cam1", zeros)
    deltas = []
    for i in range(merges):
        sender_delta = adapter.taught_statistics(x[i % len(x) : i % len(x) + 1], y[i % len(x) : i % len(x) + 1])
        sender = Ledger("cam0", zeros)
        sender.seq = i
        sender.record(sender_delta)
        deltas.append(sender.take(64 * 1024)[0])
    times = []
    for seq, arrays in deltas:  # what FleetSync does per delta: bookkeeping, then the memory
        t0 = time.perf_counter()
        outcome, change = receiver.receive("delta", "cam0", seq, arrays)
        adapter.add_statistics(change)
        times.append(1000 * (time.perf_counter() - t0))
    t = np.array(times[min(50, len(times) // 10) :])  # the first calls warm caches
    return {
        "classes": n_classes,
        "neurons": adapter.n_neurons,
        "delta_one_frame_bytes": one,
        "delta_all_classes_bytes": every,
        "snapshot_all_classes_bytes": snapshot,
        "merge_ms": {"p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)), "n": int(len(t))},
    }


def throughput(broker: Any, key: bytes, messages: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Signed one-class deltas through the broker: 4 publishers (QoS 1) to 4 subscribers."""
    import paho.mqtt.client as mqtt

    from edge_runtime.fleet.payload import encode
    from edge_runtime.fleet.topics import topic

    payload = encode({"kind": "delta", "device": "x", "seq": 1}, {"v": np.zeros((2, 640))}, key)
    users = broker.devices[:4]
    received = [0] * len(users)
    last = [0.0]
    done = threading.Event()
    expected = messages * len(users)

    def client(name: str, role: str) -> Any:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-{role}-{name}", protocol=mqtt.MQTTv5)
        c.username_pw_set(name, broker.passwords[name])
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", broker.port)
        return c

    subscribers, subscribed = [], threading.Semaphore(0)
    for i, name in enumerate(users):
        c = client(name, "sub")

        def on_message(cl: Any, ud: Any, msg: Any, i: int = i) -> None:
            received[i] += 1
            last[0] = time.monotonic()
            if sum(received) >= expected * len(users):
                done.set()

        c.on_message = on_message
        c.on_subscribe = lambda *_: subscribed.release()
        c.subscribe(topic(FLEET, SHA, "load"), 1)
        c.loop_start()
        subscribers.append(c)
    for _ in users:
        subscribed.acquire(timeout=30)
    log(f"fleet: broker throughput: {expected} signed deltas of {len(payload)} bytes to {len(users)} subscribers")
    started = time.monotonic()
    publishers = []
    for name in users:
        c = client(name, "pub")
        c.loop_start()
        publishers.append(c)
    infos = [
        c.publish(topic(FLEET, SHA, "load", name), payload, qos=1)
        for _ in range(messages)
        for c, name in zip(publishers, users)
    ]
    for info in infos:
        info.wait_for_publish(60)
    published = time.monotonic() - started
    done.wait(120)
    delivered = max(last[0] - started, 1e-9)
    for c in publishers + subscribers:
        c.loop_stop()
        c.disconnect()
    return {
        "payload_bytes": len(payload),
        "published": expected,
        "publish_per_s": expected / published,
        "delivered": sum(received),
        "expected": expected * len(users),
        "delivered_per_s": sum(received) / delivered,
    }


def faults(
    work: Path,
    broker: Any,
    key: Path,
    task: str,
    devices: int,
    teach_every: int,
    frames: int,
    fps: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from edge_runtime.fleet.broker import Broker

    memory, shards, base = prepare(work, "memflow", task, devices, teach_every, 0, None)
    out: dict[str, Any] = {}

    def keep_running(arm: Arm, which: list[int], frames_more: int = 50) -> bool:
        """Every device in ``which`` streams ``frames_more`` further frames (within 60 s)."""
        start = {i: arm.devices[i].status.get("frame", 0) for i in which}
        return arm.wait(lambda s: all(s[i].get("frame", 0) >= start[i] + frames_more for i in which), timeout=60)

    def result(arm: Arm, **figures: Any) -> dict[str, Any]:
        done = arm.finish()
        exact = check_exact(base.statistics(), done["finals"])
        updates: dict[str, int] = {}
        for status in done["statuses"]:
            for outcome, n in status.get("updates", {}).items():
                updates[outcome] = updates.get(outcome, 0) + n
        return {
            "converged": done["converged"],
            **exact,
            **figures,
            "updates": updates,
            "rejected": sum(sum(s.get("rejected", {}).values()) for s in done["statuses"]),
            "ok": bool(done["converged"] and exact["exact"] and all(figures.values())),
        }

    # The broker is SIGKILLed while every device streams, and restarted 2 s later on the same port.
    log("fleet: faults: broker SIGKILL and restart")
    everyone = list(range(devices))
    own = Broker(work / "broker-kill", FLEET, broker.devices).start()

    def checkpointed_run(name: str, on: Any, length: int, first: tuple[str, ...] = ()) -> Arm:
        """Every device re-teaches after a restart and checkpoints; ``first`` are device 0's extra flags."""
        extra = {i: ["--reteach", *(first if i == 0 else ())] for i in everyone}
        return Arm(
            work / name,
            memory,
            shards,
            broker=on,
            key_file=key,
            state=True,
            frames=length,
            fps=fps,
            extra=extra,
            log=log,
        )

    arm = checkpointed_run("broker-kill-run", own, frames)
    arm.wait(lambda s: all(st.get("frame", 0) >= frames // 3 for st in s))
    own.kill()
    running = keep_running(arm, everyone)  # the broker stays down while every stream goes on
    own.start()
    out["broker_killed"] = result(arm, streams_kept_running=running)
    own.stop()

    # A device is SIGKILLed mid-run and restarted from its checkpoint.
    log("fleet: faults: a device SIGKILLed and restarted from its checkpoint")
    arm = checkpointed_run("device-kill-run", broker, frames)
    arm.wait(lambda s: s[0].get("frame", 0) >= frames // 2)
    arm.devices[0].kill()
    running = keep_running(arm, everyone[1:])  # the others go on while it is down
    arm.devices[0].start()
    out["device_killed"] = result(arm, others_kept_running=running)

    # A device goes offline for 1,000 frames (its stream goes on, teaching locally), then back.
    log("fleet: faults: a device offline for 1,000 frames")
    arm = checkpointed_run(
        "offline-run", broker, max(frames, 1400), ["--offline-at", "200", "--offline-frames", "1000"]
    )
    out["device_offline"] = result(arm)
    return out


# -- report ------------------------------------------------------------------------------------------------
def markdown(r: dict[str, Any]) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"`edgert bench fleet{' --quick' if r['quick'] else ''}` on {r['host']}, {r['time_utc']}: "
        f"device processes on one Mosquitto ({r['mosquitto']}), MemFlow with its default parameters.",
        "",
    ]
    if r.get("gain"):
        g0 = r["gain"][0]
        lines += [
            f"Gain: {g0['devices']} devices, each on its shard of the task's target stream, one frame in "
            f"{g0['teach_every']} taught its label; online accuracy (%), mean over {len(g0['runs'])} stream "
            f"order(s), and per tenth of the stream:",
            "",
            "| adapter | task | isolated | fleet | per order (fleet - isolated) | isolated per tenth | "
            "fleet per tenth |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in r["gain"]:
            diffs = ", ".join(f"{x['fleet']['mean'] - x['isolated']['mean']:+.1f}" for x in g["runs"])
            lines.append(
                f"| {g['adapter']} | {g['task']} | {g['isolated_mean']:.1f} | {g['fleet_mean']:.1f} | {diffs} | "
                f"{' '.join(f'{v:.0f}' for v in g['isolated_curve'])} | "
                f"{' '.join(f'{v:.0f}' for v in g['fleet_curve'])} |"
            )
        lines += [
            "",
            f"- Fleet statistics exact after every run (source memory + every device's contribution; counts "
            f"equal, sums to rtol 1e-9): {'yes' if all(g['all_exact'] for g in r['gain']) else 'NO'}.",
        ]
        for g in r["gain"]:
            sent = sum(x["fleet"]["bytes_sent"] for x in g["runs"])
            updates = sum(x["fleet"]["updates"] for x in g["runs"])
            lines.append(
                f"- {g['adapter']} on {g['task']}: {updates} updates published, {sent / max(updates, 1):,.0f} "
                f"bytes sent per update (deltas, and the snapshots at most every 5 s)."
            )
            if g.get("merge_in_run_ms"):
                m = g["merge_in_run_ms"]
                lines.append(
                    f"- Merge of a peer's update inside the running {g['adapter']} devices ({g['task']}): p50 "
                    f"{m['p50']:.3f} ms, p99 {m['p99']:.3f} ms over {m['n']} updates."
                )
    if "cost" in r:
        c = r["cost"]
        lines += [
            f"- Delta of one taught frame: {c['delta_one_frame_bytes'][0]:,} bytes; all {c['classes']} classes at "
            f"once: {' + '.join(f'{b:,}' for b in c['delta_all_classes_bytes'])} bytes (split under 64 KiB); "
            f"retained snapshot of all classes {c['snapshot_all_classes_bytes']:,} bytes.",
            f"- Merge of one peer's delta at {c['classes']} classes ({c['neurons']} neurons, 1280-d): p50 "
            f"{c['merge_ms']['p50']:.3f} ms, p99 {c['merge_ms']['p99']:.3f} ms over {c['merge_ms']['n']} deltas.",
        ]
    if "throughput" in r:
        t = r["throughput"]
        lines.append(
            f"- Broker: {t['delivered_per_s']:,.0f} updates/s delivered to subscribers ({t['delivered']:,} of "
            f"{t['expected']:,}; {t['publish_per_s']:,.0f}/s accepted from publishers), QoS 1, "
            f"{t['payload_bytes']:,}-byte signed deltas, 4 publishers to 4 subscribers, Python clients on the "
            f"same 2 cores."
        )
    if r.get("split") or r.get("exactness"):
        from edge_runtime.bench import fleet_split

        lines += fleet_split.markdown(r)
    if "scale" in r:
        from edge_runtime.bench import fleet_scale

        lines += fleet_scale.markdown(r["scale"])
    if "faults" in r:
        lines += [
            "",
            "| fault | converged | statistics exact | max rel. error | streams kept running | updates applied, "
            "duplicates ignored, gaps, resyncs | rejected |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in r["faults"].items():
            running = row.get("streams_kept_running", row.get("others_kept_running", True))
            lines.append(
                f"| {name.replace('_', ' ')} | {'yes' if row['converged'] else 'NO'} | "
                f"{'yes' if row['exact'] else 'NO'} | {row['max_relative_error']:.1e} | "
                f"{'yes' if running else 'NO'} | "
                + ", ".join(str(row["updates"].get(k, 0)) for k in ("applied", "duplicate", "gap", "resynced"))
                + f" | {row['rejected']} |"
            )
    return "\n".join(lines) + "\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smaller run for CI")
    parser.add_argument(
        "--devices",
        default="4",
        metavar="N[,N...]",
        help="devices of the gain and fault runs (default: 4); with --parts scale, the fleet sizes "
        "to simulate, e.g. 10,100,1000 (edge_runtime.bench.fleet_scale)",
    )
    parser.add_argument(
        "--split",
        default="ncm:photo-c,memflow:photo-c",
        metavar="ADAPTER:TASK,...",
        help="split-world runs of --parts split, photo-c: a corruption per device, another task: "
        "its classes dealt out (edge_runtime.bench.fleet_split)",
    )
    parser.add_argument("--split-teach-every", type=int, default=2, help="one frame in N taught in --parts split")
    parser.add_argument(
        "--exactness",
        default="memflow:photo->clipart,ncm:photo->clipart",
        metavar="ADAPTER:TASK,...",
        help="fleet vs one device that saw every stream, --parts exactness",
    )
    parser.add_argument("--scale-workers", type=int, default=2, help="processes of the scale part (default: 2)")
    parser.add_argument("--scale-dim", type=int, default=128, help="feature size of its NCM statistics (default: 128)")
    parser.add_argument("--scale-window", type=float, default=20.0, help="seconds of teaching (default: 20)")
    parser.add_argument(
        "--scale-rate", type=float, default=2.0, help="taught frames per second, fleet-wide (default: 2)"
    )
    parser.add_argument(
        "--gain",
        default=GAIN,
        metavar="ADAPTER:TASK,...",
        help=f"isolated-vs-fleet runs (default: {GAIN}; quick: the first, shortened)",
    )
    parser.add_argument("--task", default="photo->clipart", help="task of the fault runs (default: photo->clipart)")
    parser.add_argument("--teach-every", type=int, default=5, help="one frame in N is taught its label (default: 5)")
    parser.add_argument("--orders", type=int, help="stream orders (default: 3; quick: 1)")
    parser.add_argument("--fps", type=float, default=100.0, help="device frame rate (default: 100, like a fast camera)")
    parser.add_argument("--parts", default=PARTS, help=f"comma-separated parts to run (default: {PARTS})")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the Markdown section into this report")
    parser.set_defaults(main=main)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from edge_runtime.fleet.broker import Broker, find_mosquitto, write_private

    quick = args.quick
    sizes = [int(n) for n in str(args.devices).split(",")]
    devices = sizes[0]
    started = time.monotonic()
    version = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    results: dict[str, Any] = {
        "quick": quick,
        "host": os.uname().nodename,
        "mosquitto": version.replace("mosquitto ", ""),
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="edgert-fleet-") as tmp:
        work = Path(tmp)
        key = os.urandom(32)
        key_file = write_private(work / "fleet.key", key.hex() + "\n")
        names = [f"cam{i}" for i in range(max(devices, 4))]
        parts = set(args.parts.split(","))
        with Broker(work / "broker", FLEET, names) as broker:
            if "gain" in parts:
                combos = [spec.split(":", 1) for spec in args.gain.split(",")][: 1 if quick else None]
                results["gain"] = [
                    gain(
                        work,
                        broker,
                        key_file,
                        adapter,
                        task,
                        devices,
                        args.teach_every,
                        args.orders or (1 if quick else 3),
                        120 if quick else None,
                        args.fps,
                        log,
                    )
                    for adapter, task in combos
                ]
            if "cost" in parts:
                log("fleet: cost of payloads and merges")
                results["cost"] = cost(9, 300 if quick else 2000)
            if "throughput" in parts:
                results["throughput"] = throughput(broker, key, 250 if quick else 1000, log)
            if "faults" in parts:
                results["faults"] = faults(
                    work, broker, key_file, args.task, devices, args.teach_every, 300 if quick else 1200, args.fps, log
                )
            if parts & {"split", "exactness"}:
                from edge_runtime.bench import fleet_split

                limit, orders = 120 if quick else None, args.orders or (1 if quick else 3)
                results["split"] = [
                    fleet_split.split(
                        work, broker, key_file, a, t, devices, args.split_teach_every, orders, limit, args.fps, log
                    )
                    for a, t in (spec.split(":", 1) for spec in args.split.split(","))
                    if "split" in parts
                ]
                results["exactness"] = [
                    fleet_split.exactness(work, broker, key_file, a, t, limit, args.fps, log)
                    for a, t in (spec.split(":", 1) for spec in args.exactness.split(","))
                    if "exactness" in parts
                ]
        if "scale" in parts:
            from edge_runtime.bench import fleet_scale

            results["scale"] = fleet_scale.run(
                sizes, args.scale_workers, args.scale_dim, args.scale_window, args.scale_rate, work, log
            )
    results["seconds"] = time.monotonic() - started
    return results


def main(args: argparse.Namespace) -> int:
    results = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    if "scale" in results and (args.report is not None or args.json is not None):
        from edge_runtime.bench import fleet_scale

        where = (args.report or args.json).parent / "plots" / "fleet_scale.png"
        results["scale"]["plot"] = str(fleet_scale.plot(results["scale"], where))
    publish(args, results, markdown(results), SECTION_TITLE)
    ok = all(g["all_exact"] for g in results.get("gain", [])) and all(
        row["ok"] for row in results.get("faults", {}).values()
    )
    ok &= all(row["converged"] and row["exact"] for row in results.get("scale", {}).get("rows", []))
    ok &= all(s["all_exact"] for s in results.get("split", []))
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["device"]:
        sys.exit(device_main(sys.argv[2:]))
    sys.exit("usage: python -m edge_runtime.bench.fleet device ... (the bench itself is `edgert bench fleet`)")
