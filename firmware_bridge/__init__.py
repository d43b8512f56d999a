"""Firmware bridge: a framed wire protocol to cameras and microcontrollers, and memories exported to C.

Data flow, by module: ``cobs`` and ``crc`` (byte-level codecs) -> ``codes``, ``payload``,
``samples`` and ``messages`` (the protocol's numbers and packed payloads) -> ``framing`` (header +
CRC + COBS; bytes in, packets out, never a transport) -> ``transport`` (serial, TCP, stdio by URL)
-> ``link`` (one connection: framing and authentication) -> ``device`` (the serving side, over an
adapter and a backbone; its changes journaled by ``journal``, ``records`` and ``state_folder``,
repeats answered from ``request_ids``) and ``client`` (the host side). ``export_c`` writes an
adapter's memory as a C header for the C99 read-out in ``c/``. The wire format is specified in
``PROTOCOL.md`` for firmware authors.
"""

from edge_runtime.keys import read_keys
from firmware_bridge.client import BridgeClient
from firmware_bridge.transport import open_transport

# What a host script needs: ``BridgeClient(open_transport(url), key=read_keys("host.key")[0])``.
__all__ = ["BridgeClient", "open_transport", "read_keys"]
