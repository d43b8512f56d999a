"""Phase 8 of the arm64 run: x86 against arm64 (predictions, features, adapter state) and the Markdown
record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from common import AGREEMENT_TARGET, WORK


# -- 8. compare --------------------------------------------------------------------------------------------
def predictions(tag: str) -> dict[int, dict[str, Any]]:
    return {r["frame"]: r for r in map(json.loads, (WORK / "out" / f"{tag}.jsonl").read_text().splitlines())}


def newest_checkpoint(tag: str) -> dict[str, np.ndarray]:
    return state_arrays(sorted((WORK / "out" / f"{tag}-state").glob("checkpoint-*.npz"))[-1])


def state_difference(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], memory: dict[str, np.ndarray]
) -> dict[str, Any]:
    """x86 state ``a`` against arm64 state ``b``. Arrays the x86 run left as the source memory had
    them are frozen and must be bit-identical on arm64 too; for the adapted float arrays the
    relative difference ||a - b|| / ||a||; integer arrays (counts) must be equal."""
    adapted, frozen, unequal = {}, [], []
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            unequal.append(f"{name}: shape {x.shape} vs {y.shape}")
        elif name in memory and np.array_equal(memory[name], x):
            frozen.append(name)
            if not np.array_equal(x, y):
                unequal.append(f"{name}: frozen (as in the source memory) on x86, changed on arm64")
        elif not np.issubdtype(x.dtype, np.floating):
            if not np.array_equal(x, y):
                unequal.append(f"{name}: {int((x != y).sum())} of {x.size} values differ")
        else:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            norm, diff = float(np.linalg.norm(x64)), float(np.linalg.norm(x64 - y64))
            adapted[name] = round(diff / norm, 6) if norm else (0.0 if diff == 0 else float("inf"))
    return {
        "adapted_relative_l2": adapted,
        "frozen_identical": frozen,
        "max_relative_l2": max(adapted.values()) if adapted else 0.0,
        "worst_array": max(adapted, key=adapted.get) if adapted else None,
        "unequal": unequal,
    }


def state_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k[2:]: z[k] for k in z.files if k.startswith("a/")}


def feature_difference(host: np.lib.npyio.NpzFile, arm: np.lib.npyio.NpzFile, k: int) -> dict[str, Any]:
    x, y = host[f"features{k}"].astype(np.float64), arm[f"features{k}"].astype(np.float64)
    rel = np.linalg.norm(x - y, axis=1) / np.linalg.norm(x, axis=1)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    lx, ly = host[f"logits{k}"], arm[f"logits{k}"]
    return {
        "frames": len(x),
        "relative_l2_max": round(float(rel.max()), 6),
        "relative_l2_mean": round(float(rel.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "max_abs": round(float(np.abs(x - y).max()), 5),
        "feature_scale": round(float(np.abs(x).max()), 3),
        "exactly_equal": bool(np.array_equal(host[f"features{k}"], arm[f"features{k}"])),
        "imagenet_top1_agree": int((lx.argmax(1) == ly.argmax(1)).sum()),
    }


def compare(name: str, truth: list[dict[str, Any]], features: dict[str, Any], arm_tag: str) -> dict[str, Any]:
    x86_tag = f"x86_64-{name.replace('.', '-')}"
    px, pa = predictions(x86_tag), predictions(arm_tag)
    frames = sorted(set(px) & set(pa))
    adapted = [px[i]["label"] == pa[i]["label"] for i in frames]
    source = [px[i]["source_label"] == pa[i]["source_label"] for i in frames]
    conf = [abs(px[i]["confidence"] - pa[i]["confidence"]) for i in frames]
    label = {r["frame"]: r["label"] for r in truth}
    memory = state_arrays(WORK / "inputs" / f"memory-{name.replace('.', '-')}.npz")
    state = state_difference(newest_checkpoint(x86_tag), newest_checkpoint(arm_tag), memory)
    tolerance = state_tolerance(features)
    return {
        "frames": len(frames),
        "frames_only_one_side": len(set(px) ^ set(pa)),
        "agreement_adapted": round(sum(adapted) / len(frames), 4),
        "meets_issue_target_99": sum(adapted) / len(frames) >= AGREEMENT_TARGET,
        "agreement_source_only": round(sum(source) / len(frames), 4),
        "disagreeing_frames": [i for i, ok in zip(frames, adapted) if not ok],
        "disagreeing_frames_source_only": [i for i, ok in zip(frames, source) if not ok],
        "disagreements": [
            {
                "frame": i,
                "x86_64": [px[i]["label"], px[i]["confidence"]],
                "aarch64": [pa[i]["label"], pa[i]["confidence"]],
            }
            for i, ok in zip(frames, adapted)
            if not ok
        ],
        "confidence_max_abs_diff": round(max(conf), 4),
        "accuracy_adapted": {
            "x86_64": round(float(np.mean([px[i]["label"] == label[i] for i in frames])), 4),
            "aarch64": round(float(np.mean([pa[i]["label"] == label[i] for i in frames])), 4),
        },
        "features_probed_frames": features,
        "state": state,
        "state_tolerance": tolerance,
        "state_within_tolerance": state["max_relative_l2"] <= tolerance and not state["unequal"],
    }


def state_tolerance(features: dict[str, Any]) -> float:
    """Relative L2 bound for each adapted state array, from the backbone's own cross-platform difference.

    The input tensors are bit-identical on both sides (same decoded pixels, same preprocessing:
    checked), so every difference in the state comes from the features, which differ per frame by
    at most d (relative L2, measured on the probed frames). The adapted arrays are running sums of
    the features (first moments: moved by at most d), of their products (second moments: at most
    2d + d^2) or of per-frame posteriors and gated reinforcement built from them; the tolerance
    is 2d, with a floor of 1e-6 for float32 summation order. The arrays the run leaves as the
    source memory has them must be bit-identical (checked separately).
    """
    return round(max(2 * features["relative_l2_max"], 1e-6), 6)


def isa(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info["cpu"].items()}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    r = report
    lines = [
        "## On Arm: the device path in an arm64 root under qemu-user (`make check-arm-run`)",
        "",
        f"Measured {r['generated']} at {r['commit'][:7]}: Debian {r['root']['suite']} arm64 root "
        f"(Python {r['arm64']['python']}, {r['arm64']['glibc']}) under {r['host_tools']['qemu']}; "
        f"{len(r['wheels'])} aarch64 wheels installed with --no-index. {r['input']['frames_processed']} frames "
        f"of the demo's shifted video (every {r['input']['every']}th), decoded once on x86, re-encoded FFV1: both sides "
        f"read the same pixels (sha256 equal: {r['input']['pixels_identical']}).",
        "",
        "| backbone | top-1 agreement, adapted | source-only read-out | accuracy x86 / arm64 | "
        "feature rel. L2 max (32 probed frames) | state rel. L2 max (tolerance) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in r["backbones"].items():
        lines.append(
            f"| {name} | {c['agreement_adapted']:.1%} ({c['frames'] - len(c['disagreeing_frames'])}/"
            f"{c['frames']}) | {c['agreement_source_only']:.1%} | {c['accuracy_adapted']['x86_64']:.1%} / "
            f"{c['accuracy_adapted']['aarch64']:.1%} | {c['features_probed_frames']['relative_l2_max']:.4f} | "
            f"{c['state']['max_relative_l2']:.2e} ({c['state_tolerance']:.2e}) |"
        )
    a, h = r["arm64"]["cpu"], r["x86_64"]["cpu"]
    xnn = r["isa"]["aarch64"]
    cpus = r.get("emulated_cpus", {})
    described = "; ".join(f"{cpu}: {', '.join(info['flags'])}" for cpu, info in cpus.items() if cpu != "max")
    mx = r.get("qemu_max_check", {})
    lines += [
        "",
        f"Emulated CPU {r['arm64'].get('qemu_cpu')} (Raspberry Pi 4), AT_HWCAP: NEON {a['neon']}, dotprod "
        f"(asimddp) {a['dotprod']}, i8mm {a['i8mm']}, SVE {a['sve']}; LiteRT's XNNPACK delegate created: "
        f"{xnn['litert_xnnpack_delegate']}, ONNX Runtime's MLAS reads the same flags ({described}). x86 host "
        f"({h['model']}): {', '.join(h['flags'])}. On qemu's default `max` CPU (SVE2, SME, i8mm, ...) XNNPACK "
        f"computes wrong features (relative L2 {mx.get('features_relative_l2')} from x86, ImageNet top-1 "
        f"{mx.get('imagenet_top1_max')} vs {mx.get('imagenet_top1_x86')}), hence the pinned CPU.",
        f"torch never imported: {r['torch_free']}; bridge serve in the root, taught and queried from x86 over "
        f"{r['bridge']['url']} with a key: {r['bridge']['ok']}.",
        "Wall time per phase (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in r["phases_s"].items())
        + f"; total {r['total_s'] / 60:.1f} min (emulated timings say nothing about a board). From nothing "
        f"(root, install and inputs made too): {r['cold_run_estimate']['wall_s'] / 60:.0f} min wall on this "
        f"shared 2-core machine (load {r['load_average_at_end'][1]}), "
        f"{r['cold_run_estimate']['cpu_s'] / 60:.0f} CPU-minutes.",
    ]
    path.write_text("\n".join(lines) + "\n")
