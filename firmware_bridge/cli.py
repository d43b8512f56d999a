"""``edgert bridge``: serve an adapter over a serial/TCP/stdio link, talk to one, export memories to C.

- ``edgert bridge serve --port URL``: the device side. Backbone and adapter as for ``edgert run``
  (``--model``, ``--adapter``, ``--memory``, ``--state``, ``--no-adapt``); without ``--memory``
  the adapter starts empty (``--classes`` and ``--dim``) and learns from TEACH. With ``--state``
  every change is journaled and TEACH/FORGET are acknowledged once durable. TCP serves many peers
  at once; with ``--key-file`` every peer must authenticate, without one only loopback is served
  (``--insecure`` overrides). SIGTERM/SIGINT: finish the requests in hand, checkpoint, summary,
  exit 0. SIGHUP re-reads the key file.
- ``edgert bridge send --port URL ACTION``: the host side (hello, stats, features, frame, teach,
  forget, export-state), ``--key-file`` as the device's.
- ``edgert bridge keygen FILE``: a new key file (mode 0600), optionally keeping the keys of another.
- ``edgert bridge export-c --state FILE --out DIR``: the memory as a C header plus the C99 read-out.

Progress and summaries go to stderr (with ``--port stdio://`` stdout is the link itself).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from edge_runtime.errors import InputError


def _link_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        required=True,
        metavar="URL",
        help="serial device (/dev/ttyUSB0), pyserial URL (loop://), tcp://HOST:PORT or stdio://",
    )
    parser.add_argument("--baud", type=int, default=115200, help="serial baud rate (default: 115200)")
    parser.add_argument("--mcu", action="store_true", help="microcontroller framing: payloads up to 8 KiB")
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="pre-shared key(s), hex, one per line, mode 0600 (edgert bridge keygen)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bridge_command", required=True, metavar="ACTION")

    serve = sub.add_parser("serve", help="device side: answer FRAME/FEATURES with predictions, TEACH, FORGET, ...")
    _link_options(serve)
    serve.add_argument("--model", type=Path, help="exported backbone (.onnx/.tflite with its card) for FRAME requests")
    serve.add_argument("--adapter", default="ncm", help="adapter name from the registry (default: ncm)")
    serve.add_argument("--memory", type=Path, help="source memory state file to start from (edgert memory build)")
    serve.add_argument(
        "--state",
        type=Path,
        help="checkpoint folder: resumed at start; every change is journaled there before it is "
        "acknowledged, and compacted into checkpoints",
    )
    serve.add_argument("--classes", help="comma-separated class names, to start an empty adapter taught over the link")
    serve.add_argument("--dim", type=int, help="feature width of an empty adapter (with --classes, without --model)")
    serve.add_argument("--no-adapt", action="store_true", help="predict only: never adapt on unlabelled samples")
    serve.add_argument("--once", action="store_true", help="with tcp://, serve one connection and exit")
    serve.add_argument("--threads", type=int, help="backbone threads (default: all cores)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback TCP address without a key (anyone on the network may teach, "
        "forget and read the memory)",
    )
    serve.add_argument("--max-connections", type=int, default=64, help="TCP peers served at once (default: 64)")
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close a TCP peer that sends nothing for this long (default: 60)",
    )
    serve.add_argument(
        "--frame-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a TCP peer whose frame has not completed this long after it started (default: 10)",
    )
    serve.add_argument(
        "--max-per-address", type=int, default=16, metavar="N", help="TCP peers from one address (default: 16)"
    )
    serve.add_argument(
        "--max-unproven",
        type=int,
        default=16,
        metavar="N",
        help="TCP peers not yet authenticated (without a key: not yet served); a new one takes the "
        "place of the oldest when full (default: 16)",
    )
    serve.add_argument(
        "--auth-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --key-file, close a TCP peer that has not authenticated this long after it "
        "connected (default: 10)",
    )
    serve.add_argument(
        "--max-pending",
        type=int,
        default=8,
        metavar="N",
        help="requests of one peer served before its replies are drained and more is read " "(default: 8)",
    )
    serve.add_argument(
        "--export-rate",
        type=float,
        default=50.0,
        metavar="PER_SECOND",
        help="STATE_EXPORT requests served per second, all peers together (default: 50)",
    )
    serve.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="compact the journal into a checkpoint this often when it has records (default: 60)",
    )
    serve.add_argument(
        "--compact-every",
        type=int,
        default=1000,
        metavar="RECORDS",
        help="... or once it holds this many records (default: 1000)",
    )

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

    keygen = sub.add_parser("keygen", help="write a new key file (mode 0600) for --key-file")
    keygen.add_argument("out", type=Path, help="the new key file (refused if it exists)")
    keygen.add_argument(
        "--keep",
        type=Path,
        metavar="FILE",
        help="also keep the keys of FILE after the new one (key rotation: devices accept both)",
    )

    cexp = sub.add_parser("export-c", help="write a memory as a C header with the C99 read-out beside it")
    cexp.add_argument(
        "--state",
        type=Path,
        required=True,
        help="state file (edgert memory build, a checkpoint, " "or edgert bridge send export-state)",
    )
    cexp.add_argument("--out", type=Path, required=True, help="output folder")
    cexp.add_argument(
        "--dtype",
        choices=("int8", "float16", "float32"),
        default="int8",
        help="how matrices are stored (default: int8 with per-row scales)",
    )
    cexp.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    return {"serve": main_serve, "send": main_send, "keygen": main_keygen, "export-c": main_export_c}[
        args.bridge_command
    ](args)


def _log(line: str) -> None:
    print(f"edgert bridge: {line}", file=sys.stderr, flush=True)


# -- serve ----------------------------------------------------------------------------------------------
def _framing(args: argparse.Namespace) -> Any:
    from firmware_bridge.framing import Framing, McuFraming

    return McuFraming if args.mcu else Framing


def _network_host(url: str) -> Optional[str]:
    """The host a link URL reaches over the network (tcp://, and pyserial's socket:// and rfc2217://),
    or None for a local link (a serial device, loop://, stdio://)."""
    from urllib.parse import urlsplit

    from firmware_bridge.transport import parse_tcp

    if url.startswith("tcp://"):
        return parse_tcp(url)[0]
    parts = urlsplit(url)
    if parts.scheme in ("socket", "rfc2217"):
        return parts.hostname or ""
    return None


def _check_exposure(args: argparse.Namespace, keys: Any) -> None:
    """Refuse a keyless server that anyone on a network could reach, unless told --insecure."""
    from firmware_bridge.transport import is_loopback

    host = _network_host(args.port)
    if host is None or keys is not None or (host and is_loopback(host)):
        return
    if not args.insecure:
        raise InputError(
            f"refusing to serve {args.port} without a key: it leaves this machine, and any host on "
            f"that network could teach, erase and read this memory. Pass --key-file FILE (edgert "
            f"bridge keygen FILE), use a loopback address, or add --insecure to accept that risk"
        )
    _log(
        f"WARNING: serving {args.port} without a key (--insecure): any peer on that network can change or read "
        f"this memory"
    )


def _class_names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _base(args: argparse.Namespace, memory: Any, backbone: Any, sha: Optional[str]) -> dict[str, Any]:
    """What a state folder's journal and checkpoints are changes to (``firmware_bridge.journal.bind_base``)."""
    from edge_runtime.adapters import make_adapter

    if memory is not None:
        params, classes, digest = memory.header.get("params", {}), memory.classes, memory.header.get("checksum", "")
        dim = memory.adapter.dim if hasattr(memory.adapter, "_n_classes") else args.dim
    else:
        params, classes, digest = make_adapter(args.adapter).get_params(), _class_names(args.classes or ""), ""
        dim = args.dim if args.dim is not None else (backbone.card.feature_dim if backbone is not None else None)
    return {
        "format": 1,
        "adapter": args.adapter,
        "params": params,
        "memory": digest,
        "dim": dim,
        "classes": list(classes),
        "model_sha256": sha or "",
    }


def _load_device(args: argparse.Namespace) -> Any:
    from edge_runtime.adapters import make_adapter
    from edge_runtime.state import Checkpoints, StateError, read_state
    from firmware_bridge.device import BridgeDevice
    from firmware_bridge.journal import Journal
    from firmware_bridge.state_folder import bind_base, make_folder

    backbone = None
    sha = None
    if args.model is not None:
        from edge_runtime.model import load_backbone

        _log(f"loading {args.model}")
        backbone = load_backbone(args.model, threads=args.threads)
        sha = backbone.card.sha256
    state = None
    if args.memory is not None:
        state = read_state(args.memory, model_sha256=sha, adapter=args.adapter)
        sha = sha or state.header["model_sha256"]
    if state is None and not args.classes:
        raise InputError(
            "no memory to serve: pass --memory FILE (edgert memory build) or --classes a,b,c "
            "with --dim D to start empty and TEACH over the link"
        )
    if state is None and args.dim is None and backbone is None:
        raise InputError(
            "--classes needs --dim D (the feature width) or --model, so that requests are checked " "from the first one"
        )
    journal = None
    replay = None
    loaded = None
    if args.state is not None:
        base = _base(args, state, backbone, sha)
        make_folder(args.state)
        checkpoints = Checkpoints(args.state, sha or "", args.adapter)
        try:
            # Checked before anything is read or written: a folder made for another base is refused whole.
            digest = bind_base(args.state, base, record=False)
            loaded = checkpoints.load()
            if loaded is None and checkpoints.files():
                raise StateError(
                    f"no checkpoint in {args.state} can be used ({'; '.join(checkpoints.problems)}); "
                    f"nothing was changed: move the folder away to start from --memory"
                )
            bind_base(args.state, base)
            for problem in checkpoints.problems:
                _log(f"skipped state file: {problem}")
            journal = Journal(
                checkpoints, every_records=args.compact_every, every_seconds=args.checkpoint_every, base=digest
            )
            replay = journal.read(after=int(loaded.meta.get("journal_seq", 0)) if loaded else 0)
        except BaseException:
            checkpoints.close()
            raise
        for problem in replay.problems:
            _log(f"journal: {problem}")
        state = loaded or state
    if state is not None:
        adapter, classes = state.adapter, state.classes
        _log(f"adapter {adapter.name} from {state.path} ({len(classes)} classes)")
    else:
        adapter, classes = make_adapter(args.adapter), _class_names(args.classes)
        _log(f"empty {args.adapter} adapter, {len(classes)} classes: teach it over the link")
    device = BridgeDevice(
        adapter,
        classes=classes,
        backbone=backbone,
        adapt=not args.no_adapt,
        model_sha256=sha or "",
        framing=_framing(args),
        dim=args.dim,
        journal=journal,
    )
    if loaded is not None:
        device.restore_requests(loaded.meta)
    if replay is not None and replay.records:
        device.replay(replay.records)
        _log(f"replayed {len(replay.records)} journal records ({replay.records[0].seq}..{replay.records[-1].seq})")
    if replay is not None and (replay.records or replay.problems):
        path = device.checkpoint({"recovered": True})
        if path is not None:
            _log(f"checkpoint {path}")
    if device.ready:
        adapter.prepare()
    return device


def _serve_tcp(args: argparse.Namespace, device: Any, keys: Any, shutdown: Any) -> Any:
    import asyncio

    from firmware_bridge.server import BridgeServer
    from firmware_bridge.transport import parse_tcp

    host, port = parse_tcp(args.port)
    server = BridgeServer(
        device,
        host,
        port,
        keys=keys,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        frame_timeout=args.frame_timeout,
        max_per_address=args.max_per_address,
        max_unproven=args.max_unproven,
        auth_timeout=args.auth_timeout,
        max_pending=args.max_pending,
        export_rate=args.export_rate,
        once=args.once,
        log=_log,
    )
    shutdown.on_request(server.stop)
    asyncio.run(
        server.serve(
            started=lambda: _log(
                f"listening on {server.url} ({'key required' if keys else 'no key'}; at most {args.max_connections} "
                f"connections; {'journaled in ' + str(args.state) if args.state else 'not durable: no --state'})"
            )
        )
    )
    return server


def _reload_keys(keys: Any) -> None:
    """SIGHUP: re-read the key file (rotation without a restart)."""
    try:
        _log(f"SIGHUP: {keys.reload()} key(s) accepted from {keys.path}; open connections keep their session")
    except Exception as err:  # a bad file (or any surprise) must not take the keys in use away
        _log(f"SIGHUP: key file not reloaded, the previous keys stay: {err}")


def main_serve(args: argparse.Namespace) -> int:
    import signal

    from edge_runtime.runtime.shutdown import Shutdown
    from firmware_bridge.auth import KeyRing
    from firmware_bridge.link import serve
    from firmware_bridge.transport import open_transport

    keys = KeyRing.from_file(args.key_file) if args.key_file else None
    _check_exposure(args, keys)
    with Shutdown() as shutdown:
        if keys is not None:
            shutdown.on_signal(signal.SIGHUP, lambda: _reload_keys(keys))
        device = _load_device(args)
        server = None
        try:
            if shutdown.requested.is_set():
                _log(f"{shutdown.signal_name} before serving: not starting")
            elif args.port.startswith("tcp://"):
                server = _serve_tcp(args, device, keys, shutdown)
            else:
                with open_transport(args.port, baudrate=args.baud) as link:
                    _log(f"serving on {args.port} ({'key required' if keys else 'no key'})")
                    serve(link, device, keys=keys, should_stop=shutdown.requested.is_set)
        finally:
            if device.journal is not None:
                path = device.checkpoint()
                journal = device.journal
                _log(
                    f"checkpoint {path or 'unchanged'}; journal: {journal.records_written} records, "
                    f"{journal.commits} fsyncs"
                )
                journal.close()
                journal.checkpoints.close()
    stats = device.stats()
    why = f"stopped by {shutdown.signal_name}" if shutdown.signal_name else "done"
    extra = (
        f", {server.served_connections} connections ({server.refused} refused at the cap, "
        f"{server.timed_out} timed out)"
        if server is not None
        else ""
    )
    _log(
        f"{why}: {stats.features} features, {stats.frames} frames, {stats.teaches} teaches, {stats.forgets} forgets, "
        f"{stats.errors} errors, mean compute {stats.mean_compute_us} us{extra}"
    )
    return 0


# -- send -----------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A reply's fields as JSON holds them: bytes (a sha256, a nonce) as hex, tuples as lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _show(args: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    print(json.dumps(_plain(record)) if args.json else text)


def _prediction(args: argparse.Namespace, name: str, pred: Any, classes: list[str]) -> None:
    label = classes[pred.label] if pred.label < len(classes) else str(pred.label)
    top = ", ".join(f"{classes[c] if c < len(classes) else c} {p:.3f}" for c, p in pred.top)
    _show(
        args,
        {
            "input": name,
            "label": pred.label,
            "class": label,
            "confidence": pred.confidence,
            "top": [[c, p] for c, p in pred.top],
            "compute_us": pred.compute_us,
        },
        f"{name}: {label} ({pred.confidence:.3f}) [{top}] {pred.compute_us} us",
    )


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

    from firmware_bridge.auth import read_keys
    from firmware_bridge.client import BridgeClient
    from firmware_bridge.codes import FeatureDtype, ForgetScope
    from firmware_bridge.transport import open_transport

    key = read_keys(args.key_file)[0] if args.key_file else None
    with open_transport(args.port, baudrate=args.baud) as link:
        client = BridgeClient(link, framing=_framing(args), timeout=args.timeout, key=key)
        action = args.send_action
        if action == "hello":
            hello = client.hello()
            record = _plain(asdict(hello))
            _show(args, record, "\n".join(f"{k}: {v}" for k, v in record.items()))
        elif action == "stats":
            stats = client.stats()
            _show(args, asdict(stats), "\n".join(f"{k}: {v}" for k, v in asdict(stats).items()))
        elif action in ("features", "frame"):
            classes = list(client.hello().classes)
            if action == "features":
                dtype = {"int8": FeatureDtype.INT8, "float16": FeatureDtype.FLOAT16, "float32": FeatureDtype.FLOAT32}[
                    args.dtype
                ]
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


# -- keygen ---------------------------------------------------------------------------------------------
def main_keygen(args: argparse.Namespace) -> int:
    import os

    from firmware_bridge.auth import read_keys, write_key_file

    kept = read_keys(args.keep) if args.keep else []
    write_key_file(args.out, [os.urandom(32), *kept])
    print(
        f"wrote {args.out} (mode 0600): a new 32-byte key"
        + (f" first, then the {len(kept)} key(s) of {args.keep}" if kept else "")
    )
    return 0


# -- export-c -------------------------------------------------------------------------------------------
def main_export_c(args: argparse.Namespace) -> int:
    from edge_runtime.state import read_state
    from firmware_bridge.export_c import export_c

    state = read_state(args.state)
    result = export_c(
        state.adapter,
        args.out,
        classes=state.classes,
        dtype=args.dtype,
        model_sha256=state.header.get("model_sha256", ""),
        source=args.state.name,
    )
    record = {
        "header": str(result.header),
        "kind": result.kind,
        "dtype": result.dtype,
        "classes": state.adapter.n_classes,
        "dim": state.adapter.dim,
        "data_bytes": result.data_bytes,
        "header_bytes": result.header_bytes,
        "crc32": f"0x{result.crc32:08x}",
        "files": [str(p) for p in result.files],
    }
    if args.json:
        print(json.dumps(record))
    else:
        print(
            f"wrote {result.header}: {result.kind} memory, {state.adapter.n_classes} classes x {state.adapter.dim}, "
            f"{result.dtype}, {result.data_bytes} bytes of const data, header file {result.header_bytes} bytes, "
            f"CRC-32 0x{result.crc32:08x}"
        )
        print(f"build: cc -std=c99 -O2 -I{args.out} {args.out}/main.c {args.out}/edgert_readout.c -lm")
    return 0
