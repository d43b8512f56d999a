"""``edgert bench bridge``: FEATURES round trips over a pty pair at a serial baud rate, and C export sizes.

A pty moves bytes as fast as the kernel copies them: it has no baud rate. So the bench runs each
round trip twice, side by side in one run:

- *paced*: both ends write through a pacer that releases bytes no faster than a UART at ``--baud``
  (8N1: 10 bits per byte), so a round trip includes the line time a real 115200-baud link costs;
- *unpaced*: the same requests at pty speed, which isolates the software cost (framing, COBS,
  CRC, pyserial, the adapter).

The target: a paced round trip for one 1280 x int8 FEATURES message within 1.2x of the line's
theoretical transfer time plus the adapter's cost. The theoretical time is reported two ways:
for the frames as sent (header, CRC, COBS and delimiter included), and strictly, for the 1280
feature bytes plus a 6-byte answer (class u16 + confidence f32) only. The adapter's cost is the
device's own timing of each request (PREDICTION.compute_us).

The bench also exports the adapter's memory to C and prints the header's size (and, where the
MemFlow C read-out exists, a MemFlow memory with the default network for the domain's classes).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.numerics import percentiles


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default="ncm", help="adapter the device serves (default: ncm)")
    parser.add_argument("--domain", default="photo", help="bench domain whose features are sent (default: photo)")
    parser.add_argument("--requests", type=int, default=40, help="round trips per mode (default: 40)")
    parser.add_argument("--baud", type=int, default=115200, help="emulated line rate, 8N1 (default: 115200)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.set_defaults(main=main)


class PacedTransport:
    """Wraps a transport: ``write`` releases bytes no faster than a UART at ``baud`` (10 bits/byte).

    A chunk is handed to the pty when its last byte would have finished on the line, so the peer
    sees the message complete exactly one line-time after the first byte started.
    """

    CHUNK = 16

    def __init__(self, inner: Any, baud: int) -> None:
        self.inner = inner
        self.url = f"paced({inner.url})"
        self._byte_time = 10.0 / baud
        self._free_at = 0.0

    def read(self, size: int = 4096) -> bytes:
        return self.inner.read(size)

    def write(self, data: bytes) -> None:
        start = max(time.perf_counter(), self._free_at)
        for i in range(0, len(data), self.CHUNK):
            chunk = data[i : i + self.CHUNK]
            due = start + (i + len(chunk)) * self._byte_time
            while (left := due - time.perf_counter()) > 0:
                time.sleep(left if left > 0.0005 else 0)
            self.inner.write(chunk)
        self._free_at = start + len(data) * self._byte_time

    def close(self) -> None:
        self.inner.close()


def _round_trips(client: Any, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    times, compute, labels = [], [], []
    for i in range(n):
        row = rows[i % len(rows)]
        start = time.perf_counter()
        pred = client.classify(row)
        times.append(time.perf_counter() - start)
        compute.append(pred.compute_us * 1e-6)
        labels.append(pred.label)
    return np.array(times), np.array(compute), labels


def main(args: argparse.Namespace) -> int:
    from edge_runtime.adapters import make_adapter
    from edge_runtime.bench.features import load_features
    from firmware_bridge.client import BridgeClient
    from firmware_bridge.device import BridgeDevice
    from firmware_bridge.export_c import EXPORTERS, export_c
    from firmware_bridge.framing import Framing
    from firmware_bridge.link import serve
    from firmware_bridge.samples import Features, Prediction
    from firmware_bridge.transport import FdTransport, SerialTransport

    feats = load_features(args.domain)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(feats.y))
    fit, probe = order[: len(order) // 2], order[len(order) // 2 :]
    adapter = make_adapter(args.adapter).fit(feats.X[fit], feats.y[fit], n_classes=len(feats.classes))
    adapter.prepare()
    device = BridgeDevice(adapter, classes=feats.classes)
    rows = feats.X[probe]

    framing = Framing()
    request_wire = len(framing.pack(1, Features.quantize(rows[0])))
    reply_wire = len(framing.pack(1, Prediction(0, 0.5, ((0, 0.5),), 100)))
    line_wire = (request_wire + reply_wire) * 10.0 / args.baud
    line_strict = (1280 + 6) * 10.0 / args.baud

    results: dict[str, Any] = {
        "baud": args.baud,
        "adapter": args.adapter,
        "domain": args.domain,
        "requests": args.requests,
        "request_wire_bytes": request_wire,
        "reply_wire_bytes": reply_wire,
        "line_ms_as_sent": line_wire * 1e3,
        "line_ms_strict": line_strict * 1e3,
    }
    for mode in ("unpaced", "paced"):
        controller, tty = os.openpty()
        port = SerialTransport(os.ttyname(tty), baudrate=args.baud)
        host = FdTransport(controller, controller, timeout=0.05, url="pty")
        device_link = PacedTransport(port, args.baud) if mode == "paced" else port
        host_link = PacedTransport(host, args.baud) if mode == "paced" else host
        stop = threading.Event()
        thread = threading.Thread(
            target=serve, args=(device_link, device), kwargs={"should_stop": stop.is_set}, daemon=True
        )
        thread.start()
        try:
            client = BridgeClient(host_link, timeout=30)
            _round_trips(client, rows, 3)  # warm-up: first-call costs out of the figures
            times, compute, labels = _round_trips(client, rows, args.requests)
        finally:
            stop.set()
            thread.join(timeout=10)
            port.close()
            os.close(tty)
            os.close(controller)
        adapter_s = float(np.median(compute))
        results[mode] = {
            **percentiles(times, scale=1e3),
            "adapter_cost_ms": adapter_s * 1e3,
            "ratio_vs_line_as_sent": float(np.median(times)) / (line_wire + adapter_s),
            "ratio_vs_line_strict": float(np.median(times)) / (line_strict + adapter_s),
        }
        if mode == "unpaced":
            results["unpaced"]["modelled_ratio_as_sent"] = (line_wire + float(np.median(times))) / (
                line_wire + adapter_s
            )

    with tempfile.TemporaryDirectory() as tmp:
        if args.adapter in EXPORTERS:
            for dtype in ("int8", "float32"):
                exp = export_c(adapter, Path(tmp) / dtype, classes=feats.classes, dtype=dtype)
                results[f"c_export_{args.adapter}_{dtype}"] = {
                    "header_bytes": exp.header_bytes,
                    "data_bytes": exp.data_bytes,
                }
        if "memflow" in EXPORTERS and args.adapter != "memflow":
            memflow = make_adapter("memflow").fit(feats.X[fit], feats.y[fit], n_classes=len(feats.classes))
            for dtype in ("int8", "float32"):
                exp = export_c(memflow, Path(tmp) / f"memflow-{dtype}", classes=feats.classes, dtype=dtype)
                results[f"c_export_memflow_{dtype}"] = {
                    "header_bytes": exp.header_bytes,
                    "data_bytes": exp.data_bytes,
                    "classes": len(feats.classes),
                }

    paced, unpaced = results["paced"], results["unpaced"]
    print(
        f"bridge round trip, FEATURES 1280 x int8 -> PREDICTION, adapter {args.adapter}, {args.requests} requests, "
        f"pty pair, {args.baud} baud 8N1 (shared CPU: figures under contention)"
    )
    print(
        f"  wire: request {request_wire} B + reply {reply_wire} B; line time {line_wire * 1e3:.2f} ms as sent, "
        f"{line_strict * 1e3:.2f} ms strict (1280 + 6 B)"
    )
    print(
        f"  paced:   p50 {paced['p50_ms']:.2f} ms  p90 {paced['p90_ms']:.2f} ms  adapter {paced['adapter_cost_ms']:.3f} ms"
        f"  ratio {paced['ratio_vs_line_as_sent']:.3f} (as sent)  {paced['ratio_vs_line_strict']:.3f} (strict)"
        f"  target <= 1.2"
    )
    print(
        f"  unpaced: p50 {unpaced['p50_ms']:.2f} ms  p90 {unpaced['p90_ms']:.2f} ms (software cost per round trip);"
        f" line + software, no overlap: {unpaced['modelled_ratio_as_sent']:.3f}x"
    )
    for key, value in results.items():
        if key.startswith("c_export_"):
            print(
                f"  {key[len('c_export_'):]}: header file {value['header_bytes']} B, const data {value['data_bytes']} B"
                + ("  (target <= 65536 B)" if key.startswith("c_export_memflow") else "")
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


__all__ = ["PacedTransport", "configure", "main"]
