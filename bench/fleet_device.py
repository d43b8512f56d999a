"""One device of the fleet bench: a separate process (``python -m edge_runtime.bench.fleet device ...``)
that streams its shard, adapts, is taught now and then, checkpoints and shares through the broker;
``DeviceProcess``, the parent's handle on it; ``Arm``, N of them in one run; ``prepare``, their
source memory and shards."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SHA = "f" * 64  # the features come from the cache: a fixed model id names the topics


def device_main(argv: list[str]) -> int:
    """A device process: stream its shard, teach, share, checkpoint; report on stdout (JSON lines)."""
    from edge_runtime.fleet.payload import fleet_keys
    from edge_runtime.fleet.sync import FleetSync
    from edge_runtime.runtime.shutdown import Shutdown
    from edge_runtime.state import Checkpoints, read_state

    p = argparse.ArgumentParser(prog="edge_runtime.bench.fleet device")
    p.add_argument("--memory", type=Path, required=True)
    p.add_argument("--shard", type=Path, required=True, help="npz: x (n, d) float32, y (n,), teach (n,) bool")
    p.add_argument("--device", required=True)
    p.add_argument("--url", help="mqtt://HOST:PORT/FLEET; without it the device is isolated")
    p.add_argument("--key-file", type=Path)
    p.add_argument("--password-file", type=Path)
    p.add_argument("--state", type=Path)
    p.add_argument("--out", type=Path, required=True, help="per-frame results (JSONL) and, at the end, <out>.npz")
    p.add_argument("--frames", type=int, help="frames to stream (default: the shard once; more cycles through it)")
    p.add_argument("--fps", type=float, default=0.0, help="pace like a camera (0: as fast as it goes)")
    p.add_argument("--offline-at", type=int, default=-1)
    p.add_argument("--offline-frames", type=int, default=1000)
    p.add_argument(
        "--reteach", action="store_true", help="teach the scheduled frames on every pass, not the first only"
    )
    args = p.parse_args(argv)
    with Shutdown() as shutdown:
        memory = read_state(args.memory)
        adapter, classes, frame = memory.adapter, memory.classes, 0
        shard = np.load(args.shard, allow_pickle=False)
        x, y, teach = shard["x"], shard["y"], shard["teach"]
        total = args.frames or len(x)
        checkpoints = Checkpoints(args.state, SHA, memory.header["name"]) if args.state else None
        resumed = checkpoints.load() if checkpoints else None
        if resumed is not None:
            adapter, frame = resumed.adapter, int(resumed.meta["frames"])
        fleet = None
        if args.url:
            fleet = FleetSync(
                adapter,
                args.url,
                args.device,
                fleet_keys(args.key_file),
                SHA,
                password=args.password_file.read_text().strip() if args.password_file else None,
                log=lambda line: emit({"log": line}),
            )
            if resumed is not None and "fleet" in resumed.meta:
                fleet.restore(resumed.meta["fleet"], resumed.extra)

        def save() -> None:
            if checkpoints is None:
                return
            meta: dict[str, Any] = {"frames": frame}
            extra = None
            if fleet is not None:
                meta["fleet"], extra = fleet.state()
            checkpoints.save(adapter, classes, meta, extra=extra)

        if fleet is not None:
            fleet.persist = save if checkpoints is not None else None
            fleet.start()
        adapter.prepare()
        out = open(args.out, "a", buffering=1)
        report = Reporter(args.device, fleet, lambda: frame)
        report.emit(event="start", resumed=resumed is not None)
        last_checkpoint = started = time.monotonic()
        offline_until = -1
        while frame < total and not shutdown.requested.is_set():
            if frame == args.offline_at and fleet is not None:
                fleet.close()
                offline_until = frame + args.offline_frames
                report.emit(event="offline")
            if frame == offline_until and fleet is not None:
                fleet.start()
                report.emit(event="online")
            r = frame % len(x)
            predicted = int(adapter.adapt(x[r : r + 1]).argmax())
            if teach[r] and (args.reteach or frame < len(x)):  # by default a label is given once
                (fleet.teach if fleet is not None else adapter.teach)(x[r : r + 1], y[r : r + 1])
            out.write(f"{frame} {int(predicted == y[r])}\n")
            frame += 1  # the frame's effects are in the state: a checkpoint from here on counts it
            if fleet is not None:
                fleet.step()
            if checkpoints is not None and time.monotonic() - last_checkpoint >= 1.0:
                save()
                last_checkpoint = time.monotonic()
            report.maybe()
            if args.fps > 0:
                time.sleep(max(0.0, started + frame / args.fps - time.monotonic()))  # pacing, like a camera
        # The shard is done: keep merging until told to stop (SIGTERM), as a camera would.
        while not shutdown.requested.is_set():
            if fleet is not None:
                fleet.flush(0.2)
            report.maybe(done=True)
            shutdown.requested.wait(0.05)
        if fleet is not None:
            fleet.flush(2.0)
        save()
        stats = adapter.statistics()
        own = fleet.ledger.own if fleet is not None else {k: np.zeros_like(v) for k, v in stats.items()}
        np.savez(
            f"{args.out}.npz",
            **{f"stats.{k}": v for k, v in stats.items()},
            **{f"own.{k}": v for k, v in own.items()},
            merge_ms=fleet.merge_ms.values() if fleet is not None else np.zeros(0),
        )
        report.emit(event="end", done=True)
        if fleet is not None:
            fleet.close(2.0)
        out.close()
        if checkpoints is not None:
            checkpoints.close()
    return 0


_STDOUT = threading.Lock()


def emit(row: dict[str, Any]) -> None:
    """One JSON line on stdout, whole (paho's thread logs too)."""
    with _STDOUT:
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()


class Reporter:
    """JSON status lines on stdout, at most every 0.2 s (and on events)."""

    def __init__(self, device: str, fleet: Any, frame: Callable[[], int]) -> None:
        self.device, self.fleet, self.frame = device, fleet, frame
        self._next = 0.0

    def maybe(self, done: bool = False) -> None:
        if time.monotonic() >= self._next:
            self.emit(done=done)

    def emit(self, **fields: Any) -> None:
        self._next = time.monotonic() + 0.2
        row: dict[str, Any] = {"device": self.device, "frame": self.frame(), **fields}
        if self.fleet is not None:
            status = self.fleet.status()
            row.update(
                seq=status["seq"],
                peers=status["peers"],
                outbox=status["outbox"],
                pending=self.fleet.ledger.has_pending,
                rejected=status["rejected"],
                bytes_sent=status["bytes_sent"],
                updates=status["updates"],
            )
        emit(row)


class DeviceProcess:
    """A device process and the last status line it printed."""

    def __init__(self, command: list[str], log: Callable[[str], None]) -> None:
        self.command = command
        self.log = log
        self.status: dict[str, Any] = {}
        self.frames_seen: list[tuple[float, int]] = []
        self.changed = threading.Condition()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr: list[str] = []
        self.killed = False
        threading.Thread(target=self._drain, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            row = json.loads(line)
            with self.changed:
                if "log" in row:
                    self.log(f"  {row['log']}")
                else:
                    self.status = row
                    self.frames_seen.append((time.monotonic(), int(row["frame"])))
                self.changed.notify_all()

    def kill(self) -> None:
        self.killed = True
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise RuntimeError(f"device did not stop on SIGTERM: {''.join(self.stderr[-20:])}") from None
        if code:
            raise RuntimeError(f"device exited {code}: {''.join(self.stderr[-20:])}")
        return code


class Arm:
    """N device processes over the shards, isolated (no broker) or as a fleet."""

    def __init__(
        self,
        work: Path,
        memory: Path,
        shards: list[Path],
        *,
        broker: Any = None,
        key_file: Path | None = None,
        state: bool = False,
        frames: int | None = None,
        fps: float = 0.0,
        extra: dict[int, list[str]] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.work = work
        self.devices: list[DeviceProcess] = []
        self.names = [f"cam{i}" for i in range(len(shards))]
        work.mkdir(parents=True, exist_ok=True)
        for i, (name, shard) in enumerate(zip(self.names, shards)):
            command = [
                sys.executable,
                "-m",
                "edge_runtime.bench.fleet",
                "device",
                "--memory",
                str(memory),
                "--shard",
                str(shard),
                "--device",
                name,
                "--out",
                str(work / f"{name}.jsonl"),
                "--fps",
                str(fps),
            ]
            if frames:
                command += ["--frames", str(frames)]
            if broker is not None:
                # A fleet of its own per run: a run must not catch up from another's retained updates.
                command += [
                    "--url",
                    broker.url_for(re.sub(r"[^A-Za-z0-9]+", "-", work.name)),
                    "--key-file",
                    str(key_file),
                    "--password-file",
                    str(broker.password_file(name)),
                ]
            if state:
                command += ["--state", str(work / f"{name}.state")]
            self.devices.append(DeviceProcess(command + (extra or {}).get(i, []), log))

    def wait(self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 300.0) -> bool:
        """Block until ``condition`` holds on the devices' latest status lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition([d.status for d in self.devices]):
                return True
            for d in self.devices:
                if not d.killed and d.proc.poll() not in (None, 0):
                    raise RuntimeError(f"device exited {d.proc.returncode}: {''.join(d.stderr[-20:])}")
            with self.devices[0].changed:
                self.devices[0].changed.wait(0.2)
        return False

    def converged(self, statuses: list[dict[str, Any]]) -> bool:
        """Every device is done, has published everything, and has applied every peer's last update."""
        if not all(s.get("done") for s in statuses) or "seq" not in statuses[0]:
            return all(s.get("done") for s in statuses) and "seq" not in statuses[0]
        seqs = {s["device"]: s["seq"] for s in statuses}
        return all(
            not s["pending"]
            and s["outbox"] == 0
            and all(s["peers"].get(p, 0) == q for p, q in seqs.items() if p != s["device"] and q)
            for s in statuses
        )

    def finish(self, timeout: float = 300.0) -> dict[str, Any]:
        converged = self.wait(self.converged, timeout)
        for d in self.devices:
            d.stop()
        finals = [dict(np.load(self.work / f"{name}.jsonl.npz", allow_pickle=False)) for name in self.names]
        accuracy = [np.loadtxt(self.work / f"{name}.jsonl", dtype=np.int64, ndmin=2) for name in self.names]
        return {
            "converged": converged,
            "finals": finals,
            "accuracy": accuracy,
            "statuses": [d.status for d in self.devices],
        }


def check_exact(base: dict[str, np.ndarray], finals: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every device's statistics vs. the source memory plus every device's own published
    contribution: counts exactly, sums to rtol 1e-9."""
    expected = {k: v + sum(f[f"own.{k}"] for f in finals) for k, v in base.items()}
    worst, counts_equal = 0.0, True
    for f in finals:
        for k, v in expected.items():
            got = f[f"stats.{k}"]
            counts_equal &= bool(np.array_equal(got[0], v[0]))
            # relative to each entry, or to 1e-9 of the largest for sums that cancel to ~1e-17
            scale = np.maximum(np.abs(v[1:]), 1e-9 * np.abs(v[1:]).max())
            worst = max(worst, float(np.max(np.abs(got[1:] - v[1:]) / scale)))
    return {
        "counts_equal": counts_equal,
        "max_relative_error": worst,
        "exact": counts_equal and worst <= 1e-9,
        "taught_total": float(sum(f[f"own.{k}"][0, :, 0].sum() for f in finals for k in base)),
    }


def prepare(
    work: Path, adapter: str, task: str, devices: int, teach_every: int, order: int, limit: int | None
) -> tuple[Path, list[Path], Any]:
    """The source memory (fitted once per adapter and task) and the shards of one stream order."""
    from edge_runtime.adapters import make_adapter
    from edge_runtime.bench.tasks import load_task
    from edge_runtime.state import read_state, write_state

    t = load_task(task)
    fold = t.folds[0]
    memory = work / f"memory-{adapter}-{re.sub(r'[^a-z0-9]+', '_', task)}.npz"
    if not memory.is_file():
        fitted = make_adapter(adapter).fit(fold.source_x, fold.source_y, t.n_classes)
        write_state(memory, fitted, kind="memory", model_sha256=SHA, classes=list(t.classes), name=adapter)
    rows = fold.order(order, "iid")[:limit]
    shards = []
    for i in range(devices):
        mine = rows[i::devices]
        path = work / f"shard-{re.sub(r'[^a-z0-9]+', '_', task)}-{order}-{i}.npz"
        np.savez(path, x=fold.target_x[mine], y=fold.target_y[mine], teach=(np.arange(len(mine)) % teach_every) == 0)
        shards.append(path)
    return memory, shards, read_state(memory).adapter
