"""What a platform is and what the backbones compute on it: run on both sides of the arm64 run.

Usage: python probe.py OUT.npz VIDEO STRIDE N MODEL...

Writes OUT.npz (features and logits of N frames, one in STRIDE, for each MODEL, in that order) and
OUT.json: machine, Python, glibc, the versions of the device packages, the CPU features the
process is given (on aarch64 from AT_HWCAP/AT_HWCAP2 in /proc/self/auxv, which qemu-user fills
with what its emulated CPU offers; on x86 from /proc/cpuinfo), and a sha256 over the pixels of
every frame of VIDEO as ``cv2.VideoCapture`` decodes it (the way ``edgert run`` reads it), so
the two sides can be shown to have classified the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "numpy",
    "numba",
    "llvmlite",
    "scipy",
    "onnxruntime",
    "ai-edge-litert",
    "opencv-python-headless",
    "edge-runtime",
)
# linux/arch/arm64/include/uapi/asm/hwcap.h
HWCAP = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
    "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()
HWCAP2 = (
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
    "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme"
).split()
X86 = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
)


def cpu_features() -> dict:
    machine = platform.machine()
    if machine == "aarch64":
        raw = Path("/proc/self/auxv").read_bytes()
        aux = dict(struct.iter_unpack("<QQ", raw))
        hw, hw2 = aux.get(16, 0), aux.get(26, 0)
        flags = [n for i, n in enumerate(HWCAP) if hw >> i & 1] + [n for i, n in enumerate(HWCAP2) if hw2 >> i & 1]
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        return {
            "source": "AT_HWCAP/AT_HWCAP2 (/proc/self/auxv)",
            "hwcap": hex(hw),
            "hwcap2": hex(hw2),
            "flags": flags,
            "neon": "asimd" in flags,
            "dotprod": "asimddp" in flags,
            "i8mm": "i8mm" in flags,
            "sve": "sve" in flags,
            "proc_cpuinfo": "the host's (x86) /proc/cpuinfo: qemu-user 7.2 does not emulate it for aarch64"
            if "vendor_id" in cpuinfo
            else cpuinfo.splitlines()[:8],
        }
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
    return {
        "source": "/proc/cpuinfo",
        "model": model,
        "flags": [f for f in X86 if f in flags],
        "avx2": "avx2" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
    }


def decode(video: str, stride: int, keep: int) -> tuple[str, int, list]:
    """(sha256 over every frame's pixels, frame count, ``keep`` frames: 0, stride, 2 stride, ...)."""
    import cv2

    cap = cv2.VideoCapture(video)
    digest, n, first = hashlib.sha256(), 0, []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        digest.update(image.tobytes())
        if n % stride == 0 and len(first) < keep:
            first.append(image)
        n += 1
    return digest.hexdigest(), n, first


def main(out: Path, video: str, stride: int, n: int, models: list[str]) -> None:
    import numpy as np

    from edge_runtime.model import load_backbone

    sha, count, frames = decode(video, stride, n)
    arrays, runtimes = {}, {}
    for k, model in enumerate(models):
        backbone = load_backbone(model)
        results = [backbone.infer(frame) for frame in frames]  # one at a time, as the stream runs it
        arrays[f"features{k}"] = np.concatenate([r.features for r in results])
        arrays[f"logits{k}"] = np.concatenate([r.logits for r in results])
        runtimes[Path(model).name] = backbone.execution.to_dict()
    np.savez(out, **arrays)
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "glibc": "-".join(platform.libc_ver()),
        "packages": {},
        "cpu": cpu_features(),
        "frames": {
            "video": video,
            "count": count,
            "pixels_sha256": sha,
            "probed": [i * stride for i in range(len(frames))],
        },
        "backbones": runtimes,
        "torch_loaded": "torch" in sys.modules,
    }
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
