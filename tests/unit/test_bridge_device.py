"""The device's answers that depend on what its adapter declares, without a link or a server."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.adapters import make_adapter
from firmware_bridge.codes import Capability, ErrorCode, ForgetScope
from firmware_bridge.device import BridgeDevice
from firmware_bridge.framing import Packet
from firmware_bridge.messages import Ack, Error, Hello
from firmware_bridge.samples import Forget

CLASSES = ["a", "b", "c"]
DIM = 8


def _source() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(12, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(12) % 3


@pytest.mark.parametrize(
    "name, params, scopes",
    [
        ("knn", {}, {ForgetScope.ADAPTED, ForgetScope.ITEM}),
        ("dmn", {}, {ForgetScope.ADAPTED}),
        ("ncm", {}, set()),
        # a wrapper answers for the adapter behind it, before it is fitted too
        ("shift", {"inner": "knn"}, {ForgetScope.ADAPTED, ForgetScope.ITEM}),
        ("shift", {"inner": "linear"}, set()),
    ],
)
def test_forget_scopes_are_what_the_adapter_declares(name: str, params: dict, scopes: set) -> None:
    empty = BridgeDevice(make_adapter(name, **params), classes=CLASSES, dim=DIM)
    assert bool(empty.handle(Packet(1, Hello(0)))[0].body.capabilities & Capability.FORGET) == bool(scopes)
    x, y = _source()
    device = BridgeDevice(make_adapter(name, **params).fit(x, y, n_classes=len(CLASSES)), classes=CLASSES)
    assert bool(device.handle(Packet(1, Hello(0)))[0].body.capabilities & Capability.FORGET) == bool(scopes)
    for scope in ForgetScope:
        reply = device.handle(Packet(2, Forget(scope, 0)))[0].body
        if scope in scopes:
            assert isinstance(reply, Ack), reply
        else:
            assert isinstance(reply, Error) and reply.code == ErrorCode.UNSUPPORTED, reply
    if ForgetScope.ITEM in scopes:  # item 0 was taken out above: the forwarded call really removed it
        reply = device.handle(Packet(3, Forget(ForgetScope.ITEM, 0)))[0].body
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_INPUT and "not in the memory" in reply.message
