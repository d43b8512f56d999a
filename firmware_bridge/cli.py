"""``edgert bridge``: serve an adapter over a serial/TCP/stdio link, talk to one, export memories to C.

- ``edgert bridge serve --port URL``: the device side. Backbone and adapter as for ``edgert run``
  (``--model``, ``--adapter``, ``--memory``, ``--state``, ``--no-adapt``); without ``--memory``
  the adapter starts empty (``--classes``) and learns from TEACH.
- ``edgert bridge send --port URL ACTION``: the host side (hello, stats, features, frame, teach,
  forget, export-state).
- ``edgert bridge export-c --state FILE --out DIR``: the memory as a C header plus the C99 read-out.

Progress and summaries go to stderr (with ``--port stdio://`` stdout is the link itself).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError


def _link_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, metavar="URL",
                        help="serial device (/dev/ttyUSB0), pyserial URL (loop://), tcp://HOST:PORT or stdio://")
    parser.add_argument("--baud", type=int, default=115200, help="serial baud rate (default: 115200)")
    parser.add_argument("--mcu", action="store_true", help="microcontroller framing: payloads up to 8 KiB")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bridge_command", required=True, metavar="ACTION")

    serve = sub.add_parser("serve", help="device side: answer FRAME/FEATURES with predictions, TEACH, FORGET, ...")
    _link_options(serve)
    serve.add_argument("--model", type=Path, help="exported backbone (.onnx/.tflite with its card) for FRAME requests")
    serve.add_argument("--adapter", default="ncm", help="adapter name from the registry (default: ncm)")
    serve.add_argument("--memory", type=Path, help="source memory state file to start from (edgert memory build)")
    serve.add_argument("--state", type=Path, help="checkpoint folder: resumed at start, written at exit")
    serve.add_argument("--classes", help="comma-separated class names, to start an empty adapter taught over the link")
    serve.add_argument("--no-adapt", action="store_true", help="predict only: never adapt on unlabelled samples")
    serve.add_argument("--once", action="store_true", help="with tcp://, serve one connection and exit")
    serve.add_argument("--threads", type=int, help="backbone threads (default: all cores)")

    send = sub.add_parser("send", help="host side: send requests to a device and print its replies")
    _link_options(send)
    send.add_argument("--json", action="store_true", help="print replies as JSON lines")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default: 10)")
    actions = send.add_subparsers(dest="send_action", required=True, metavar="REQUEST")
    actions.add_parser("hello", help="the device's capabilities")
    actions.add_parser("stats", help="the device's counters")
    feats = actions.add_parser("features", help="classify rows of a .npy (n, d) float32 array")
    feats.add_argument("file", type=Path)
    feats.add_argument("--dtype", choices=("int8", "float16", "float32"), default="int8")
    frame = actions.add_parser("frame", help="classify image files (sent as JPEG)")
    frame.add_argument("files", type=Path, nargs="+")
    for p in (feats, frame):
        p.add_argument("--top-k", type=int, default=3)
        p.add_argument("--read-only", action="store_true", help="ask the device not to adapt on these")
    teach = actions.add_parser("teach", help="teach labelled samples: rows of a .npy array or image files")
    teach.add_argument("label", type=int)
    teach.add_argument("files", type=Path, nargs="+")
    forget = actions.add_parser("forget", help="forget what adaptation learned, or one stored item")
    forget.add_argument("--item", type=int, help="id of the stored item to remove")
    export = actions.add_parser("export-state", help="download the device's adapter as a state file")
    export.add_argument("out", type=Path)

    cexp = sub.add_parser("export-c", help="write a memory as a C header with the C99 read-out beside it")
    cexp.add_argument("--state", type=Path, required=True, help="state file (edgert memory build, a checkpoint, "
                                                                "or edgert bridge send export-state)")
    cexp.add_argument("--out", type=Path, required=True, help="output folder")
    cexp.add_argument("--dtype", choices=("int8", "float16", "float32"), default="int8",
                      help="how matrices are stored (default: int8 with per-row scales)")
    cexp.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    return {"serve": main_serve, "send": main_send, "export-c": main_export_c}[args.bridge_command](args)


# -- serve ----------------------------------------------------------------------------------------------
def _framing(args: argparse.Namespace) -> Any:
    from firmware_bridge.framing import Framing, McuFraming

    return McuFraming if args.mcu else Framing


def _load_device(args: argparse.Namespace) -> tuple[Any, Any]:
    from edge_runtime.adapters import make_adapter
    from edge_runtime.state import Checkpoints, read_state
    from firmware_bridge.device import BridgeDevice

    backbone = None
    sha = None
    if args.model is not None:
        from edge_runtime.backbones import load_backbone

        backbone = load_backbone(args.model, threads=args.threads)
        sha = backbone.card.sha256
    state = None
    if args.memory is not None:
        state = read_state(args.memory, model_sha256=sha, adapter=args.adapter)
        sha = sha or state.header["model_sha256"]
    checkpoints = None
    if args.state is not None:
        if sha is None:
            raise InputError("--state needs --model or --memory: checkpoints are tied to the model's sha256")
        checkpoints = Checkpoints(args.state, sha, args.adapter)
        state = checkpoints.load() or state
        for problem in checkpoints.problems:
            print(f"edgert bridge: skipped state file: {problem}", file=sys.stderr)
    if state is not None:
        adapter, classes = state.adapter, state.classes
        print(f"edgert bridge: adapter {adapter.name} from {state.path} ({len(classes)} classes)", file=sys.stderr)
    elif args.classes:
        adapter, classes = make_adapter(args.adapter), [c.strip() for c in args.classes.split(",") if c.strip()]
        print(f"edgert bridge: empty {args.adapter} adapter, {len(classes)} classes: teach it over the link",
              file=sys.stderr)
    else:
        raise InputError("no memory to serve: pass --memory FILE (edgert memory build) or --classes a,b,c "
                         "to start empty and TEACH over the link")
    if hasattr(adapter, "_n_classes"):
        adapter.prepare()
    device = BridgeDevice(adapter, classes=classes, backbone=backbone, adapt=not args.no_adapt,
                          model_sha256=sha or "", framing=_framing(args))
    return device, checkpoints


def main_serve(args: argparse.Namespace) -> int:
    from firmware_bridge.device import serve
    from firmware_bridge.transport import TcpListener, open_transport, parse_tcp

    device, checkpoints = _load_device(args)
    try:
        if args.port.startswith("tcp://"):
            listener = TcpListener(*parse_tcp(args.port))
            print(f"edgert bridge: listening on {listener.url}", file=sys.stderr)
            try:
                while True:
                    link = listener.accept()
                    print(f"edgert bridge: connection from {link.url}", file=sys.stderr)
                    with link:
                        serve(link, device)
                    if args.once:
                        break
            finally:
                listener.close()
        else:
            with open_transport(args.port, baudrate=args.baud) as link:
                print(f"edgert bridge: serving on {args.port}", file=sys.stderr)
                serve(link, device)
    finally:
        if checkpoints is not None:
            if hasattr(device.adapter, "_n_classes"):
                path = checkpoints.save(device.adapter, device.classes, {"source": "bridge"})
                print(f"edgert bridge: checkpoint {path}", file=sys.stderr)
            checkpoints.close()
    stats = device.stats()
    print(f"edgert bridge: done: {stats.features} features, {stats.frames} frames, {stats.teaches} teaches, "
          f"{stats.errors} errors, mean compute {stats.mean_compute_us} us", file=sys.stderr)
    return 0


# -- send -----------------------------------------------------------------------------------------------
def _show(args: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record) if args.json else text)


def _prediction(args: argparse.Namespace, name: str, pred: Any, classes: list[str]) -> None:
    label = classes[pred.label] if pred.label < len(classes) else str(pred.label)
    top = ", ".join(f"{classes[c] if c < len(classes) else c} {p:.3f}" for c, p in pred.top)
    _show(args, {"input": name, "label": pred.label, "class": label, "confidence": pred.confidence,
                 "top": [[c, p] for c, p in pred.top], "compute_us": pred.compute_us},
          f"{name}: {label} ({pred.confidence:.3f}) [{top}] {pred.compute_us} us")


def _feature_rows(path: Path) -> Any:
    import numpy as np

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path}: {err}; save features with np.save as a float32 (n, d) array") from None
    if x.dtype.kind != "f" or x.ndim not in (1, 2):
        raise InputError(f"{path} holds {x.dtype} {x.shape}; expected float (n, d) features")
    return np.atleast_2d(x).astype(np.float32)


def main_send(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from firmware_bridge.client import BridgeClient
    from firmware_bridge.messages import FeatureDtype, ForgetScope
    from firmware_bridge.transport import open_transport

    with open_transport(args.port, baudrate=args.baud) as link:
        client = BridgeClient(link, framing=_framing(args), timeout=args.timeout)
        action = args.send_action
        if action == "hello":
            hello = client.hello()
            record = {**asdict(hello), "model_sha256": hello.model_sha256.hex(), "classes": list(hello.classes)}
            _show(args, record, "\n".join(f"{k}: {v}" for k, v in record.items()))
        elif action == "stats":
            stats = client.stats()
            _show(args, asdict(stats), "\n".join(f"{k}: {v}" for k, v in asdict(stats).items()))
        elif action in ("features", "frame"):
            classes = list(client.hello().classes)
            if action == "features":
                dtype = {"int8": FeatureDtype.INT8, "float16": FeatureDtype.FLOAT16,
                         "float32": FeatureDtype.FLOAT32}[args.dtype]
                for i, row in enumerate(_feature_rows(args.file)):
                    pred = client.classify(row, dtype=dtype, top_k=args.top_k, read_only=args.read_only)
                    _prediction(args, f"{args.file.name}[{i}]", pred, classes)
            else:
                for path in args.files:
                    pred = client.classify_frame(path.read_bytes(), top_k=args.top_k, read_only=args.read_only)
                    _prediction(args, path.name, pred, classes)
        elif action == "teach":
            taught = 0
            for path in args.files:
                samples = list(_feature_rows(path)) if path.suffix == ".npy" else [path.read_bytes()]
                taught += sum(client.teach(args.label, s) for s in samples)
            _show(args, {"label": args.label, "taught": taught}, f"taught {taught} samples as class {args.label}")
        elif action == "forget":
            scope = ForgetScope.ADAPTED if args.item is None else ForgetScope.ITEM
            removed = client.forget(scope, args.item or 0)
            _show(args, {"removed": removed}, f"removed {removed}")
        elif action == "export-state":
            from edge_runtime.state import atomic_write

            blob = client.export_state()
            atomic_write(args.out, lambda f: f.write(blob))
            _show(args, {"out": str(args.out), "bytes": len(blob)}, f"wrote {args.out} ({len(blob)} bytes)")
    return 0


# -- export-c -------------------------------------------------------------------------------------------
def main_export_c(args: argparse.Namespace) -> int:
    from edge_runtime.state import read_state
    from firmware_bridge.export_c import export_c

    state = read_state(args.state)
    result = export_c(state.adapter, args.out, classes=state.classes, dtype=args.dtype,
                      model_sha256=state.header.get("model_sha256", ""), source=args.state.name)
    record = {"header": str(result.header), "kind": result.kind, "dtype": result.dtype,
              "classes": state.adapter.n_classes, "dim": state.adapter.dim, "data_bytes": result.data_bytes,
              "header_bytes": result.header_bytes, "crc32": f"0x{result.crc32:08x}",
              "files": [str(p) for p in result.files]}
    if args.json:
        print(json.dumps(record))
    else:
        print(f"wrote {result.header}: {result.kind} memory, {state.adapter.n_classes} classes x {state.adapter.dim}, "
              f"{result.dtype}, {result.data_bytes} bytes of const data, header file {result.header_bytes} bytes, "
              f"CRC-32 0x{result.crc32:08x}")
        print(f"build: cc -std=c99 -O2 -I{args.out} {args.out}/main.c {args.out}/edgert_readout.c -lm")
    return 0
