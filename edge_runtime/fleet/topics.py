"""Where a fleet lives and what its members must share: the broker URL, the MQTT topics, and the
fingerprint of the memory every member started from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.fleet.broker import check_name
from edge_runtime.fleet.ledger import Stats


@dataclass(frozen=True)
class FleetURL:
    """``mqtt://HOST:PORT/FLEET`` (``mqtts://`` for TLS, default ports 1883 and 8883).

    >>> FleetURL.parse("mqtt://10.0.0.5:1883/shop")
    FleetURL(host='10.0.0.5', port=1883, fleet='shop', tls=False)
    """

    host: str
    port: int
    fleet: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> "FleetURL":
        parts = urlparse(url)
        fleet = parts.path.strip("/")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or not fleet:
            raise InputError(f"fleet URL {url!r}: expected mqtt://HOST:PORT/FLEET (or mqtts:// for TLS)")
        check_name(fleet, "fleet")
        return cls(
            parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883), fleet, parts.scheme == "mqtts"
        )


def topic(fleet: str, model_sha256: str, kind: str, device: str = "+") -> str:
    return f"edgert/{fleet}/{model_sha256[:12]}/{kind}/{device}"


def fingerprint(model_sha256: str, adapter: Any, stats: Stats) -> str:
    """What fleet members must share: the model, the adapter and its parameters, and the
    statistics of the memory they started from (payloads with another one are ``wrong_model``)."""
    digest = hashlib.sha256(f"{model_sha256}|{adapter.name}|".encode())
    digest.update(json.dumps(adapter.get_params(), sort_keys=True, default=str).encode())
    for name in sorted(stats):
        digest.update(name.encode() + np.ascontiguousarray(stats[name], np.float64).tobytes())
    return digest.hexdigest()


__all__ = ["FleetURL", "fingerprint", "topic"]
