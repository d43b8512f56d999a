"""The device install, proven: run by the python of a venv holding only ``pip install .``.

``make check-device`` makes that venv and copies the exported models into MODELS; this script
then, with the device's own commands only:
- checks that torch, litert_torch, matplotlib and sklearn are not installed;
- builds a source memory for memflow, dmn and knn from real photos (Debian's opencv-doc);
- runs ``edgert run`` on opencv-doc's vtest.avi with each, the memflow run scraped over
  ``--metrics`` twice while it runs (the frame counter must move);
- starts ``edgert bridge serve``, sends it one real FRAME request and stops it with SIGTERM;
- checks every one of those processes' imports (``python -X importtime``): none of the host
  packages above may be imported.
Exit status 0 only if all of it holds. Usage: python check_device.py MODELS WORKDIR
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FORBIDDEN = ("torch", "litert_torch", "matplotlib", "sklearn")
DATA = Path("/usr/share/doc/opencv-doc/examples/data")
PHOTOS = {"orange": "orange.jpg", "baboon": "baboon.jpg", "squirrel": "squirrel_cls.jpg", "butterfly": "butterfly.jpg"}
ADAPTERS = ("memflow", "dmn", "knn")
imported: set[str] = set()
logs: dict[int, Any] = {}  # pid -> the file holding that process's stderr


def edgert(*args: str, background: bool = False) -> subprocess.Popen | str:
    """``edgert ARGS`` under ``-X importtime``; its imports are collected when it ends. stderr goes
    to a file (importtime writes a line per module: a pipe could fill and stall the process)."""
    log = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, "-X", "importtime", "-m", "edge_runtime.cli", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    logs[proc.pid] = log
    return proc if background else finish(proc, args)


def finish(proc: subprocess.Popen, args: tuple[str, ...], timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    log = logs.pop(proc.pid)
    log.seek(0)
    err = log.read()
    modules = re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", err, re.M)
    imported.update(m.group(1).split(".")[0] for m in modules)
    if proc.returncode != 0:
        messages = "\n".join(line for line in err.splitlines() if not line.startswith("import time:"))
        sys.exit(f"check-device: edgert {' '.join(args[:2])} failed ({proc.returncode}):\n{messages}")
    return out


def scrape(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(re.search(r"^edgert_frames_total (\S+)$", text, re.M).group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(models: Path, work: Path) -> None:
    import cv2

    installed = [name for name in FORBIDDEN if importlib.util.find_spec(name) is not None]
    if installed:
        sys.exit(f"check-device: host packages installed in the device venv: {', '.join(installed)}")
    model = models / "efficientnet-lite0" / "int8.tflite"
    for name, file in PHOTOS.items():  # five crops of each photo: a labelled source folder
        photo = cv2.imread(str(DATA / file))
        h, w = photo.shape[:2]
        (work / "source" / name).mkdir(parents=True, exist_ok=True)
        for i, (fx, fy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]):
            y, x = int(h * 0.2 * fy), int(w * 0.2 * fx)
            cv2.imwrite(str(work / "source" / name / f"{i}.png"), photo[y : y + int(h * 0.8), x : x + int(w * 0.8)])
    for adapter in ADAPTERS:
        memory = work / f"{adapter}.npz"
        edgert(
            "memory",
            "build",
            "--model",
            str(model),
            "--images",
            str(work / "source"),
            "--adapter",
            adapter,
            "--out",
            str(memory),
        )
        summary = work / f"run-{adapter}.json"
        args = (
            "run",
            "--source",
            str(DATA / "vtest.avi"),
            "--model",
            str(model),
            "--adapter",
            adapter,
            "--memory",
            str(memory),
            "--max-frames",
            "60",
            "--state",
            str(work / f"state-{adapter}"),
            "--json",
            str(summary),
            "--quiet",
        )
        if adapter == "memflow":  # paced like a camera, so the endpoint is scraped mid-run
            port = free_port()
            proc = edgert(*args, "--realtime", "--metrics", f"127.0.0.1:{port}", background=True)
            counts = []
            for _ in range(100):
                time.sleep(0.5)
                if proc.poll() is not None:
                    break
                try:
                    counts.append(scrape(port))
                except OSError:
                    continue
                counts = [c for c in counts if c > 0]  # scrapes before the first frame say nothing
                if len(counts) >= 2 and counts[-1] > counts[0]:
                    break
            finish(proc, args)
            if not (len(counts) >= 2 and counts[-1] > counts[0]):
                sys.exit(f"check-device: edgert_frames_total did not move while running: {counts}")
            print(
                f"check-device: metrics scraped during the run: edgert_frames_total {counts[0]:.0f} -> "
                f"{counts[-1]:.0f}"
            )
        else:
            edgert(*args)
        report = json.loads(summary.read_text())
        if report["frames"] != 60 or report["checkpoints"] < 1:
            sys.exit(
                f"check-device: edgert run with {adapter}: {report['frames']} frames, "
                f"{report['checkpoints']} checkpoints"
            )
        print(
            f"check-device: edgert run {adapter}: {report['frames']} frames of vtest.avi at {report['fps']} fps, "
            f"adapt p50 {report['p50_ms']['adapt']:.2f} ms, on {','.join(report['execution']['active'])}"
        )
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = edgert(
        "bridge",
        "serve",
        "--port",
        url,
        "--model",
        str(model),
        "--adapter",
        "memflow",
        "--memory",
        str(work / "memflow.npz"),
        background=True,
    )
    for _ in range(200):  # listening once a connection is accepted (the server drops a silent peer)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    reply = edgert("bridge", "send", "--port", url, "--json", "frame", str(DATA / "orange.jpg"))
    server.terminate()  # SIGTERM: the server finishes what it holds and exits 0
    finish(server, ("bridge", "serve"), timeout=60)
    print(f"check-device: edgert bridge serve answered a FRAME request: {reply.strip().splitlines()[-1][:160]}")
    leaked = sorted(imported & set(FORBIDDEN))
    if leaked:
        sys.exit(f"check-device: host packages imported by device commands: {', '.join(leaked)}")
    print(
        f"check-device: {len(imported)} top-level modules imported by the device commands; none of "
        f"{', '.join(FORBIDDEN)} (neither installed nor imported)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
