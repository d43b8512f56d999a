"""``edgert bridge send`` as a user runs it, against a device served in this process on localhost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.adapters.ncm import NCM
from edge_runtime.cli.main import main
from edge_runtime.keys import write_key_file
from firmware_bridge.auth import NONCE_SIZE, KeyRing
from firmware_bridge.device import BridgeDevice
from firmware_bridge.server import BridgeServer

KEY = bytes(range(32))
SHA = "ab" * 32
CLASSES = ["a", "b", "c", "d"]


def _device() -> BridgeDevice:
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    return BridgeDevice(NCM().fit(x, np.arange(40) % 4), classes=CLASSES, model_sha256=SHA)


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_send_json_prints_bytes_fields_as_hex(tmp_path: Path, capsys, keyed: bool, serving) -> None:
    # HELLO's sha256 and nonce are bytes: --json crashed on them ("not JSON serializable").
    server = BridgeServer(_device(), "127.0.0.1", 0, keys=KeyRing([KEY]) if keyed else None, log=lambda line: None)
    with serving(server):
        argv = ["bridge", "send", "--port", server.url, "--json"]
        if keyed:
            argv += ["--key-file", str(write_key_file(tmp_path / "host.key", [KEY]))]
        assert main([*argv, "hello"]) == 0
        assert main([*argv, "stats"]) == 0
    hello, stats = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert hello["model_sha256"] == SHA and hello["classes"] == CLASSES and hello["adapter"] == "ncm"
    assert len(bytes.fromhex(hello["nonce"])) == (NONCE_SIZE if keyed else 0)
    assert stats["features"] == 0 and stats["errors"] == 0
