"""``edgert fleet status``, and the ``--fleet`` options of ``edgert run``.

``edgert fleet status --broker mqtt://HOST:PORT/FLEET --user NAME --password-file FILE`` lists
every device that has announced itself on the fleet (retained presence): online or not, the last
update it published (sequence number), bytes sent, and when it last spoke.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError


def read_secret(path: Path) -> str:
    """A broker password from a file that only its owner may read (the key-file rule)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as err:
        raise InputError(f"cannot read password file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"password file {path} has mode {stat.S_IMODE(mode):04o}: run `chmod 600 {path}`")
    return text


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``edgert run``'s fleet options."""
    group = parser.add_argument_group("fleet (share what is taught with other devices over MQTT; memflow)")
    group.add_argument("--fleet", metavar="URL", help="mqtt://HOST:PORT/FLEET (mqtts:// for TLS)")
    group.add_argument("--fleet-device", metavar="NAME", help="this device's name and broker user (default: host name)")
    group.add_argument(
        "--fleet-key",
        type=Path,
        metavar="FILE",
        help="fleet key file, mode 0600 (edgert bridge keygen); default: $EDGERT_FLEET_KEY",
    )
    group.add_argument("--fleet-password-file", type=Path, metavar="FILE", help="broker password, mode 0600")
    group.add_argument("--fleet-ca", type=Path, metavar="FILE", help="CA certificate for mqtts://")
    group.add_argument("--fleet-cert", type=Path, metavar="FILE", help="client certificate for mqtts://")
    group.add_argument("--fleet-cert-key", type=Path, metavar="FILE", help="its private key")
    group.add_argument(
        "--fleet-final-wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="at the end of the stream and on SIGTERM, wait up to this long for the peers' last "
        "updates before the last checkpoint (default: 5)",
    )


def attach(args: argparse.Namespace, adapter: Any, model_sha256: str, resume: Any) -> Any:
    """A started ``FleetSync`` for ``edgert run``; ``resume`` is (meta, extra) from the checkpoint."""
    from edge_runtime.fleet.payload import fleet_keys
    from edge_runtime.fleet.sync import FleetSync

    tls = {
        k: str(v)
        for k, v in (("ca_certs", args.fleet_ca), ("certfile", args.fleet_cert), ("keyfile", args.fleet_cert_key))
        if v is not None
    }
    device = args.fleet_device or socket.gethostname().split(".")[0]
    fleet = FleetSync(
        adapter,
        args.fleet,
        device,
        fleet_keys(args.fleet_key),
        model_sha256,
        password=read_secret(args.fleet_password_file) if args.fleet_password_file else None,
        tls=tls or None,
        final_wait=args.fleet_final_wait,
    )
    if resume is not None:
        fleet.restore(*resume)
        print(
            f"edgert run: fleet {fleet.url.fleet}: resuming as {device} at update {fleet.ledger.seq}, "
            f"{len(fleet.ledger.peers)} peer(s) known",
            file=sys.stderr,
        )
    return fleet.start()


# -- edgert fleet status ------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="devices of a fleet: online, last update, bytes sent",
        description="devices of a fleet: online, last update, bytes sent",
    )
    status.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT/FLEET")
    status.add_argument("--user", default="observer", help="broker user (default: observer)")
    status.add_argument("--password-file", type=Path, metavar="FILE", help="its password, mode 0600")
    status.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate for mqtts://")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default: 10)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(main=main)


def collect(url: str, user: str, password: str | None, ca: Path | None, timeout: float) -> list[dict[str, Any]]:
    """Every retained presence of the fleet, read until the broker echoes a token back (all
    retained messages come before it)."""
    import paho.mqtt.client as mqtt

    from edge_runtime.fleet.topics import FleetURL

    where = FleetURL.parse(url)
    token = secrets.token_hex(8).encode()
    seen: dict[str, dict[str, Any]] = {}
    done, failed = threading.Event(), []
    mine = f"edgert/{where.fleet}/status/sync/{user}"

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            failed.append(str(reason))
            done.set()
            return
        client.subscribe([(f"edgert/{where.fleet}/+/presence/+", 1), (mine, 1)])
        client.publish(mine, token, qos=1)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if message.topic == mine:
            if message.payload == token:
                done.set()
            return
        if len(seen) >= MAX_DEVICES:
            return
        row = presence_row(message.topic, message.payload)
        seen[f"{row['model']}/{row['device']}"] = row

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgert-status-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, password)
    if where.tls:
        client.tls_set(ca_certs=str(ca) if ca else None)
    elif password:
        print(
            f"edgert fleet: WARNING: the password of {user!r} goes over mqtt:// in clear text; use mqtts:// "
            f"(--ca) beyond a trusted network",
            file=sys.stderr,
        )
    client.on_connect, client.on_message = on_connect, on_message
    limits = Properties(PacketTypes.CONNECT)
    limits.MaximumPacketSize = MAX_PRESENCE  # presence is a few hundred bytes: never read a retained flood
    try:
        client.connect(where.host, where.port, keepalive=10, properties=limits)
    except OSError as err:
        raise InputError(f"cannot reach the broker at {where.host}:{where.port}: {err}") from None
    client.loop_start()
    finished = done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    if failed:
        raise InputError(f"the broker refused {user!r}: {failed[0]} (check --user and --password-file)")
    if not finished:
        raise InputError(f"no answer from the broker at {where.host}:{where.port} within {timeout} s")
    return [seen[k] for k in sorted(seen)]


MAX_PRESENCE = 64 * 1024
MAX_DEVICES = 100_000


def presence_row(topic: str, payload: bytes) -> dict[str, Any]:
    """A presence message as a row of plain, printable fields, whatever the message holds
    (``unreadable`` marks one that was not the JSON object a device publishes)."""

    def text(value: Any, default: str = "?") -> str:
        value = default if value is None else str(value)
        return "".join(ch if ch.isprintable() else "?" for ch in value)[:64]

    def number(value: Any) -> Any:
        return value if type(value) in (int, float) and value == value and abs(value) < 1e18 else None

    try:
        row = json.loads(payload)
    except (ValueError, RecursionError):
        row = None
    device = text(topic.split("/")[-1])
    if not isinstance(row, dict):
        return {"device": device, "model": "?", "unreadable": True}
    clean: dict[str, Any] = {
        "device": text(row.get("device"), device),
        "model": text(row.get("model")),
        "online": row.get("online") is True,
    }
    for name in ("seq", "bytes_sent", "t"):
        if number(row.get(name)) is not None:
            clean[name] = number(row.get(name))
    return clean


def main(args: argparse.Namespace) -> int:
    password = read_secret(args.password_file) if args.password_file else None
    if not args.json:
        print(f"edgert fleet: asking {args.broker} ...", file=sys.stderr, flush=True)
    rows = collect(args.broker, args.user, password, args.ca, args.timeout)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    now = time.time()
    print(f"{'device':<16} {'model':<13} {'online':<7} {'last update':>11} {'bytes sent':>12}  last heard")
    for row in rows:
        heard = f"{now - row['t']:.0f} s ago" if "t" in row else "?"
        print(
            f"{row['device']:<16} {row.get('model', '?'):<13} {'yes' if row.get('online') else 'no':<7} "
            f"{row.get('seq', '?'):>11} {row.get('bytes_sent', '?'):>12}  {heard}"
        )
    online = sum(1 for row in rows if row.get("online"))
    print(f"{len(rows)} device(s), {online} online")
    return 0
