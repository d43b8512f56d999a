"""Firmware bridge: a framed wire protocol to cameras and microcontrollers, and memories exported to C.

Data flow, by module: ``cobs`` and ``crc`` (byte-level codecs) -> ``messages`` (packed payloads)
-> ``framing`` (header + CRC + COBS; bytes in, packets out, never a transport) -> ``transport``
(serial, TCP, stdio by URL) -> ``device`` (the serving side, over an adapter and a backbone) and
``client`` (the host side). ``export_c`` writes an adapter's memory as a C header for the C99
read-out in ``c/``. The wire format is specified in ``PROTOCOL.md`` for firmware authors.
"""
