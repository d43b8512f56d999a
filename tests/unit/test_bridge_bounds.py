"""Issue #24, part 3: every bound a peer can push on is a named option with a safe default.

An in-process ``BridgeServer`` on loopback (its asyncio loop in a thread) and raw sockets that
misbehave: idle strangers, a peer that never authenticates, a peer that pipelines thousands of
STATE_EXPORT requests and reads nothing.
"""

from __future__ import annotations

import argparse
import socket
import time

import numpy as np
import pytest

from edge_runtime.adapters.ncm import NCM
from edge_runtime.errors import InputError
from firmware_bridge.auth import KeyRing
from firmware_bridge.cli import _check_exposure
from firmware_bridge.client import BridgeClient
from firmware_bridge.codes import ErrorCode
from firmware_bridge.device import BridgeDevice, Reply
from firmware_bridge.framing import Framing, Packet
from firmware_bridge.link import Step
from firmware_bridge.messages import Error, StateExportRequest
from firmware_bridge.server import BridgeServer, _groups
from firmware_bridge.transport import open_transport

KEY = bytes(range(32))
DIM = 32


def _device(dim: int = DIM) -> BridgeDevice:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, dim)).astype(np.float32)
    return BridgeDevice(NCM().fit(x, np.arange(40) % 4), classes=["a", "b", "c", "d"])


def _read_error(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    framing = Framing()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            return -1
        for event in framing.feed(data):
            if isinstance(event, Packet) and isinstance(event.body, Error):
                return event.body.code
    return 0


def test_groups_keep_order_and_bound_each_batch() -> None:
    steps = [Step(None, 0), Step([Reply(0, Error(1))]), Step(None, 1), Step(None, 2), Step(None, 3), Step(None, 4)]
    groups = list(_groups(steps, list("abcde"), 2))
    assert [g for _, g in groups] == [["a", "b"], ["c", "d"], ["e"]]
    assert [[s.index for s in st] for st, _ in groups] == [[0, -1, 1], [0, 1], [0]]


def test_idle_strangers_never_lock_out_a_key_holder(serving) -> None:
    server = BridgeServer(
        _device(),
        "127.0.0.1",
        0,
        keys=KeyRing([KEY]),
        max_connections=64,
        max_unproven=8,
        max_per_address=16,
        log=lambda line: None,
    )
    with serving(server):
        strangers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
        try:
            client = BridgeClient(open_transport(server.url), key=KEY, timeout=10)
            for _ in range(3):
                client.stats()  # served, though 40 sockets were opened before it
            assert server.evicted >= 40 - 8 - 1
            client.transport.close()
        finally:
            for sock in strangers:
                sock.close()


def test_a_peer_that_does_not_authenticate_in_time_is_closed(serving) -> None:
    server = BridgeServer(_device(), "127.0.0.1", 0, keys=KeyRing([KEY]), auth_timeout=0.5, log=lambda line: None)
    with serving(server):
        sock = socket.create_connection(("127.0.0.1", server.port))
        started = time.monotonic()
        assert _read_error(sock, 10) == ErrorCode.TIMEOUT
        assert time.monotonic() - started < 5
        sock.close()


def test_pipelined_exports_are_served_a_few_at_a_time_not_queued(serving) -> None:
    device = _device(8192)  # a state of about 130 kB
    server = BridgeServer(device, "127.0.0.1", 0, max_pending=4, export_rate=0, log=lambda line: None)
    with serving(server):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        framing = Framing()
        wire = b"".join(framing.pack(i + 1, StateExportRequest(0, 200_000)) for i in range(3000))
        sock.sendall(wire)  # about 60 kB: 3000 requests for the whole state each (390 MB of replies)
        time.sleep(1.5)  # and read nothing
        sent = device.tx_bytes
        size = len(device.state_bytes())
        # What the kernel's socket buffers take, plus one group of max_pending replies; not 3000 of them.
        assert sent < 100 * size, f"{sent} bytes of replies produced for a peer that reads nothing ({size} each)"
        sock.close()


def test_the_export_rate_is_a_bound_for_the_whole_device(serving) -> None:
    server = BridgeServer(_device(), "127.0.0.1", 0, export_rate=20, log=lambda line: None)
    with serving(server):
        client = BridgeClient(open_transport(server.url), timeout=10)
        started = time.monotonic()
        for _ in range(40):  # 20 in hand, then 20 a second
            client.request(StateExportRequest(0, 16))
        assert time.monotonic() - started >= 0.8 and server.export_waits > 0
        client.transport.close()


@pytest.mark.parametrize(
    "url, refused",
    [
        ("socket://10.1.2.3:7000", True),
        ("rfc2217://10.1.2.3:7000", True),
        ("socket://127.0.0.1:7000", False),
        ("tcp://0.0.0.0:7000", True),
        ("loop://", False),
    ],
)
def test_keyless_links_that_leave_the_machine_are_refused(url: str, refused: bool) -> None:
    args = argparse.Namespace(port=url, insecure=False)
    if refused:
        with pytest.raises(InputError, match="without a key"):
            _check_exposure(args, None)
    else:
        _check_exposure(args, None)
    _check_exposure(argparse.Namespace(port=url, insecure=True), None)  # told so: a warning only


def test_the_auth_deadline_runs_from_the_last_hello_not_from_connect(serving) -> None:
    server = BridgeServer(_device(), "127.0.0.1", 0, keys=KeyRing([KEY]), auth_timeout=0.6, log=lambda line: None)
    with serving(server):
        client = BridgeClient(open_transport(server.url), key=KEY, timeout=10)
        client.stats()
        time.sleep(1.0)  # authenticated: no deadline
        client.hello()  # a new HELLO ends the session and authenticates again at once
        client.stats()
        assert server.timed_out == 0
        client.transport.close()
