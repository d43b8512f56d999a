"""``edgert bench fleet --parts split,exactness``: a fleet whose devices see different parts of the world.

**split**, task ``photo-c``: each device sees its own corruption of the photo target (gaussian
noise, fog, pixelate, contrast: one per device, every class), all devices from the same photo
source memory, one frame in ``teach_every`` taught; what a device learns from its peers' labels
is the classes under corruptions it never sees. Online accuracy per device, isolated vs fleet.

**split**, any other task: the task's classes are dealt out among the devices (device d owns group d). Each
device's stream has two halves: first only frames of its own classes (a camera over its own
aisle), then frames of every class (the rest of the shop passes by). A person labels one frame
in ``--teach-every`` at each camera, always of that camera's own classes. Isolated, a device
has labels only for its own classes; in a fleet it has every device's. Online accuracy (the
prediction made before the frame's own update) per device, isolated vs fleet, over the whole
stream and over its second half, with the same device processes, source memory and shards as
``gain`` (``edge_runtime.bench.fleet_device``).

**exactness**: what the issue's table measures, on the bench features: three devices, each on a
third of the target stream, one frame in three taught its label, as a fleet; and one isolated
device on the three thirds one after the other. The largest difference of the fleet's taught
statistics (a device's statistics minus the source memory's) from the one device's, relative
to the largest taught statistic of each array; counts compared exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

CORRUPTIONS = ("gaussian_noise", "fog", "pixelate", "contrast")


def corruption_shards(work: Path, teach_every: int, order: int, limit: int | None) -> tuple[list[Path], list[int]]:
    """One shard per corruption (device d streams photo->photo-c/CORRUPTIONS[d])."""
    from edge_runtime.bench.tasks import load_task

    paths = []
    for name in CORRUPTIONS:
        fold = load_task(f"photo->photo-c/{name}").folds[0]
        rows = fold.order(order, "iid")[:limit]
        path = work / f"corrupt-{name}-{order}.npz"
        np.savez(path, x=fold.target_x[rows], y=fold.target_y[rows], teach=(np.arange(len(rows)) % teach_every) == 0)
        paths.append(path)
    return paths, [0] * len(paths)


def split_shards(
    work: Path, task: str, devices: int, teach_every: int, order: int, limit: int | None
) -> tuple[list[Path], list[list[int]], list[int]]:
    """Shards of the split world; returns (paths, class groups, first-half length per device)."""
    from edge_runtime.bench.tasks import load_task

    t = load_task(task)
    fold = t.folds[0]
    rows = fold.order(order, "iid")[:limit]
    y = fold.target_y
    rng = np.random.default_rng(1000 + order)
    groups = [sorted(g.tolist()) for g in np.array_split(rng.permutation(t.n_classes), devices)]
    owner = np.empty(t.n_classes, np.int64)
    for d, group in enumerate(groups):
        owner[group] = d
    first, second = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    paths, halves = [], []
    for d in range(devices):
        own_rows = first[owner[y[first]] == d]
        world = second[d::devices]
        mine = np.concatenate([own_rows, world])
        # labels only for the device's own classes, one such frame in teach_every
        own = owner[y[mine]] == d
        teach = np.zeros(len(mine), bool)
        teach[np.flatnonzero(own)[::teach_every]] = True
        path = work / f"split-{re.sub(r'[^a-z0-9]+', '_', task)}-{order}-{d}.npz"
        np.savez(path, x=fold.target_x[mine], y=y[mine], teach=teach)
        paths.append(path)
        halves.append(len(own_rows))
    return paths, groups, halves


def split(
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
    from edge_runtime.bench.fleet_device import Arm, check_exact, prepare

    per_order = []
    for order in range(orders):
        if task == "photo-c":  # the corruptions share the photo source: one source memory for all
            memory, _, base = prepare(work, adapter, f"photo->photo-c/{CORRUPTIONS[0]}", 1, teach_every, order, limit)
            shards, halves = corruption_shards(work, teach_every, order, limit)
            groups: Any = list(CORRUPTIONS)
        else:
            memory, _, base = prepare(work, adapter, task, devices, teach_every, order, limit)
            shards, groups, halves = split_shards(work, task, devices, teach_every, order, limit)
        row: dict[str, Any] = {"order": order, "groups": groups}
        for mode in ("isolated", "fleet"):
            log(f"fleet: split world, {adapter} on {task}, order {order}: {devices} {mode} devices")
            run = f"split-{mode}-{adapter}-{re.sub(r'[^a-z0-9]+', '-', task)}-{order}"
            done = Arm(
                work / run, memory, shards, broker=broker if mode == "fleet" else None, key_file=key, fps=fps, log=log
            ).finish()
            row[mode] = {
                "all": [round(100 * float(a[:, 1].mean()), 2) for a in done["accuracy"]],
                "second_half": [round(100 * float(a[h:, 1].mean()), 2) for a, h in zip(done["accuracy"], halves)],
                "converged": done["converged"],
            }
            if mode == "fleet":
                row["fleet"]["exact"] = check_exact(base.statistics(), done["finals"])["exact"]
        per_order.append(row)
    gain = np.mean([np.subtract(r["fleet"]["all"], r["isolated"]["all"]) for r in per_order], axis=0)
    gain2 = np.mean([np.subtract(r["fleet"]["second_half"], r["isolated"]["second_half"]) for r in per_order], axis=0)
    return {
        "adapter": adapter,
        "task": task,
        "devices": len(shards),
        "teach_every": teach_every,
        "orders": per_order,
        "min_gain_per_device": np.min([np.subtract(r["fleet"]["all"], r["isolated"]["all"]) for r in per_order], axis=0)
        .round(2)
        .tolist(),
        "isolated": np.mean([r["isolated"]["all"] for r in per_order], axis=0).round(2).tolist(),
        "fleet": np.mean([r["fleet"]["all"] for r in per_order], axis=0).round(2).tolist(),
        "gain_per_device": gain.round(2).tolist(),
        "gain_second_half_per_device": gain2.round(2).tolist(),
        "all_exact": all(r["fleet"]["exact"] and r["fleet"]["converged"] for r in per_order),
    }


def exactness(
    work: Path,
    broker: Any,
    key: Path,
    adapter: str,
    task: str,
    limit: int | None,
    fps: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from edge_runtime.bench.fleet_device import Arm, prepare

    memory, shards, base = prepare(work, adapter, task, 3, 3, 0, limit)
    parts = [dict(np.load(s)) for s in shards]
    whole = work / f"exactness-whole-{adapter}.npz"
    np.savez(whole, **{k: np.concatenate([p[k] for p in parts]) for k in ("x", "y", "teach")})
    tag = f"{adapter}-{re.sub(r'[^a-z0-9]+', '-', task)}"
    log(f"fleet: exactness of {adapter} on {task}: 3 fleet devices vs one device that saw every stream")
    fleet = Arm(work / f"exactness-fleet-{tag}", memory, shards, broker=broker, key_file=key, fps=fps, log=log).finish()
    one = Arm(work / f"exactness-one-{tag}", memory, [whole], fps=fps, log=log).finish()
    source = base.statistics()
    ref = {k: one["finals"][0][f"stats.{k}"] - v for k, v in source.items()}
    worst, counts = 0.0, True
    for final in fleet["finals"]:
        for k, v in source.items():
            got = final[f"stats.{k}"] - v
            counts &= bool(np.array_equal(got[0], ref[k][0]))
            worst = max(worst, float(np.abs(got[1:] - ref[k][1:]).max() / max(np.abs(ref[k][1:]).max(), 1e-300)))
    return {
        "adapter": adapter,
        "task": task,
        "converged": fleet["converged"],
        "counts_equal": counts,
        "max_relative_difference": worst,
    }


def markdown(r: dict[str, Any]) -> list[str]:
    lines = []
    if r.get("split"):
        s0 = r["split"][0]
        lines += [
            "",
            f"Split world, {len(s0['orders'])} stream order(s), online accuracy (%) per device, isolated -> "
            f"fleet (mean gain; the smallest gain over the orders). `photo-c`: device d sees only its own "
            f"corruption ({', '.join(CORRUPTIONS)}), one frame in {s0['teach_every']} taught. Another task: "
            f"its classes dealt out among the devices, each device's stream first its own classes only, "
            f"then every class, one of its own-class frames in {s0['teach_every']} taught.",
            "",
            "| adapter | task | per device: isolated -> fleet (gain; smallest) | gain on the second half | exact |",
            "|---|---|---|---|---|",
        ]
        for s in r["split"]:
            cells = ", ".join(
                f"{i:.1f} -> {f:.1f} ({g:+.1f}; {m:+.1f})"
                for i, f, g, m in zip(s["isolated"], s["fleet"], s["gain_per_device"], s["min_gain_per_device"])
            )
            lines.append(
                f"| {s['adapter']} | {s['task']} | {cells} | "
                f"{', '.join(f'{g:+.1f}' for g in s['gain_second_half_per_device'])} | "
                f"{'yes' if s['all_exact'] else 'NO'} |"
            )
    if r.get("exactness"):
        lines += [
            "",
            "Fleet vs one device that saw every stream (3 devices, one frame in 3 taught): largest "
            "relative difference of the taught statistics:",
            "",
        ]
        for e in r["exactness"]:
            lines.append(
                f"- {e['adapter']} on {e['task']}: {e['max_relative_difference']:.2g} "
                f"(counts {'equal' if e['counts_equal'] else 'DIFFER'}; converged {e['converged']})"
            )
    return lines
