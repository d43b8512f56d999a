"""Fleet memory: devices share what they learn over an MQTT broker (Mosquitto), exactly once.

- ``payload``: the signed, size-limited wire format (JSON header + plain arrays, no pickle);
- ``ledger``: per-device contributions and sequence numbers (exactly-once, any order, resync);
- ``sync``: ``FleetSync``, what a running stream attaches to (paho-mqtt, the ``fleet`` extra);
- ``topics``: the broker URL, the MQTT topics and the fingerprint of the shared starting memory;
- ``broker``: a Mosquitto of one's own on loopback, with passwords and an ACL (tests, bench);
- ``cli``: ``edgert fleet status`` and the ``--fleet`` options of ``edgert run``.
"""

from edge_runtime.fleet.ledger import Ledger
from edge_runtime.fleet.payload import PayloadError, decode, encode, fleet_keys
from edge_runtime.fleet.sync import FleetSync
from edge_runtime.fleet.topics import FleetURL

__all__ = ["FleetSync", "FleetURL", "Ledger", "PayloadError", "decode", "encode", "fleet_keys"]
