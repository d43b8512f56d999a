"""The bridge end to end over real links: a pty pair (pyserial on the tty path), TCP, loop://, stdio.

No sleeps: every wait is a blocking read with a timeout, ended by the reply it waits for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.adapters.ncm import NCM
from edge_runtime.state import read_state, write_state
from firmware_bridge import cobs
from firmware_bridge.client import BridgeClient, BridgeError
from firmware_bridge.codes import Capability, ErrorCode, FeatureDtype, ForgetScope
from firmware_bridge.device import BridgeDevice
from firmware_bridge.framing import Framing, Packet
from firmware_bridge.link import serve
from firmware_bridge.messages import BODIES
from firmware_bridge.samples import Features, Prediction, Teach
from firmware_bridge.transport import FdTransport, SerialTransport, TcpListener, open_transport

CLASSES = ["north", "east", "south", "west"]
DIM = 64


def _blobs(seed: int, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Four well separated classes in DIM dimensions (link tests check transport, not accuracy)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), DIM)).astype(np.float32) * 3
    y = np.repeat(np.arange(len(CLASSES)), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), DIM))).astype(np.float32), y


@pytest.fixture()
def device() -> BridgeDevice:
    x, y = _blobs(0, 20)
    return BridgeDevice(NCM().fit(x, y), classes=CLASSES, model_sha256="ab" * 32)


class _Served:
    """``serve`` in a thread on one end of a link; stopped and joined on exit."""

    def __init__(self, transport, device: BridgeDevice) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=serve, args=(transport, device), kwargs={"should_stop": self._stop.is_set}, daemon=True
        )

    def __enter__(self) -> "_Served":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


@pytest.fixture()
def pty_link(device: BridgeDevice):
    """(client, device): the device serves the pty's tty through pyserial, the client drives the controller fd."""
    controller, tty = os.openpty()
    port = SerialTransport(os.ttyname(tty), baudrate=115200)  # pyserial puts the tty in raw mode
    with _Served(port, device):
        yield BridgeClient(FdTransport(controller, controller, timeout=0.1, url="pty"), timeout=10), device
    port.close()
    os.close(tty)
    os.close(controller)


def test_pty_round_trip_hello_features_teach_stats(pty_link) -> None:
    client, device = pty_link
    hello = client.hello()
    assert hello.classes == tuple(CLASSES) and hello.feature_dim == DIM and hello.adapter == "ncm"
    assert hello.model_sha256 == bytes.fromhex("ab" * 32)
    assert hello.capabilities & Capability.FEATURES and not hello.capabilities & Capability.FRAME
    x, y = _blobs(0, 5)
    expected = device.adapter.predict(x)
    for dtype in FeatureDtype:
        got = [client.classify(row, dtype=dtype, top_k=4, read_only=True) for row in x]
        assert [p.label for p in got] == expected.tolist()
        assert all(len(p.top) == 4 and abs(sum(q for _, q in p.top) - 1) < 1e-4 for p in got)
    before = device.adapter._counts.copy()
    assert client.teach(2, x[0]) == 1
    assert device.adapter._counts[2] == before[2] + 1
    stats = client.stats()
    assert stats.features == 3 * len(x) and stats.teaches == 1 and stats.errors == 0
    assert stats.rx_bytes > 3 * len(x) * DIM


def test_pty_bad_input_and_garbage_get_errors_and_the_link_stays_up(pty_link) -> None:
    client, device = pty_link
    with pytest.raises(BridgeError) as err:
        client.classify(np.ones(DIM + 1, np.float32))
    assert err.value.code == ErrorCode.BAD_INPUT
    with pytest.raises(BridgeError) as err:
        client.classify(np.full(DIM, np.nan, np.float32), dtype=FeatureDtype.FLOAT32)
    assert err.value.code == ErrorCode.BAD_INPUT
    with pytest.raises(BridgeError) as err:
        client.teach(len(CLASSES), np.ones(DIM, np.float32))
    assert err.value.code == ErrorCode.BAD_INPUT
    with pytest.raises(BridgeError) as err:  # NCM cannot unlearn
        client.forget(ForgetScope.ITEM, 3)
    assert err.value.code == ErrorCode.UNSUPPORTED
    # Line noise: the device answers with a link-level ERROR and serves the next frame.
    client.transport.write(b"noise on the line\x00")
    reply = client.receive()
    assert reply.body.code == ErrorCode.MALFORMED and reply.seq == 0
    raw = bytearray(cobs.decode(client._framing.pack(77, Features.quantize(np.ones(DIM, np.float32)))[:-1]))
    raw[30] ^= 0x40  # one bit of a feature value
    client.transport.write(cobs.encode(bytes(raw)) + b"\x00")
    assert client.receive().body.code == ErrorCode.BAD_CRC
    x, _ = _blobs(0, 1)
    assert client.classify(x[1]).label == device.adapter.predict(x[1:2])[0]
    assert client.stats().errors == 6


def test_pty_state_export_restores_the_same_adapter(pty_link, tmp_path: Path) -> None:
    client, device = pty_link
    blob = client.export_state(chunk=1000)  # several chunks
    path = tmp_path / "exported.npz"
    path.write_bytes(blob)
    state = read_state(path, model_sha256="ab" * 32, adapter="ncm")
    x, _ = _blobs(3, 10)
    np.testing.assert_array_equal(state.adapter.predict_proba(x), device.adapter.predict_proba(x))
    assert state.classes == CLASSES


def test_teach_builds_an_empty_adapter_over_tcp() -> None:
    device = BridgeDevice(NCM(), classes=CLASSES, dim=DIM)
    listener = TcpListener("127.0.0.1", 0)
    assert listener.host == "127.0.0.1"
    client_link = open_transport(listener.url)
    server_link = listener.accept(wait=10)
    with _Served(server_link, device):
        client = BridgeClient(client_link, timeout=10)
        x, y = _blobs(1, 6)
        with pytest.raises(BridgeError) as err:
            client.classify(x[0])
        assert err.value.code == ErrorCode.BAD_INPUT and "TEACH" in str(err.value)
        for row, label in zip(x, y):
            client.teach(int(label), row)
        held, _ = _blobs(1, 3)
        assert [client.classify(r).label for r in held] == NCM().fit(x, y).predict(held).tolist()
    client_link.close()
    server_link.close()
    listener.close()


def test_loopback_device_ignores_its_own_replies(device: BridgeDevice) -> None:
    link = open_transport("loop://", timeout=0.05)
    framing = Framing()
    link.write(framing.pack(1, Features.quantize(np.ones(DIM, np.float32))))
    replies = []
    for event in framing.feed(link.read(65536)):
        for reply in device.handle(event):
            link.write(framing.pack(*reply))
            replies.append(reply)
    assert isinstance(replies[0].body, Prediction)
    # The prediction comes back on the loop; a device never answers a reply, so the loop ends.
    echoed = framing.feed(link.read(65536))
    assert [type(e.body) for e in echoed] == [Prediction]
    assert device.handle(echoed[0]) == []
    link.close()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(k for k in BODIES if not k[1])), st.binary(max_size=300))
def test_fuzz_device_answers_every_request(key: tuple[int, bool], payload: bytes) -> None:
    x, y = _blobs(0, 3)
    device = BridgeDevice(NCM().fit(x, y), classes=CLASSES)
    try:
        body = BODIES[key].unpack(payload)
    except ValueError:
        return  # the framing answers BAD_PAYLOAD (tested in test_bridge_protocol)
    (reply,) = device.handle(Packet(9, body))
    assert reply.seq == 9


def test_stdio_serve_command_with_a_memory_file(tmp_path: Path) -> None:
    x, y = _blobs(2, 10)
    memory = write_state(
        tmp_path / "memory.npz", NCM().fit(x, y), kind="memory", model_sha256="cd" * 32, classes=CLASSES
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "bridge",
            "serve",
            "--port",
            "stdio://",
            "--memory",
            str(memory),
            "--no-adapt",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        link = FdTransport(proc.stdout.fileno(), proc.stdin.fileno(), timeout=0.2, url="stdio")
        client = BridgeClient(link, timeout=60)
        assert client.hello().classes == tuple(CLASSES)
        assert [client.classify(r).label for r in x[::5]] == NCM().fit(x, y).predict(x[::5]).tolist()
        assert client.request(Teach(1, Features.quantize(x[0]))).count == 1
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert b"teaches" in proc.stderr.read()


def test_frames_over_a_pty_run_the_real_backbone() -> None:
    import cv2

    from edge_runtime.bench.datasets import load_domain
    from edge_runtime.defaults import bench_model
    from edge_runtime.model import load_backbone

    # The model the bench features use (bench.features.bench_model(): the fp32 export).
    backbone = load_backbone(bench_model(), threads=1)
    photo = load_domain("photo")
    images = photo.images[::8]
    labels = photo.labels[::8]
    features = np.concatenate([backbone.features(img) for img in images])
    adapter = NCM().fit(features, labels, n_classes=len(photo.classes))
    device = BridgeDevice(
        adapter, classes=photo.classes, backbone=backbone, adapt=False, model_sha256=backbone.card.sha256
    )
    controller, tty = os.openpty()
    port = SerialTransport(os.ttyname(tty))
    try:
        with _Served(port, device):
            client = BridgeClient(FdTransport(controller, controller, url="pty"), timeout=60)
            hello = client.hello()
            assert hello.capabilities & Capability.FRAME
            assert hello.model_sha256.hex() == backbone.card.sha256
            for image in images[:6]:
                jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                expected = adapter.predict(
                    backbone.features(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
                )[0]
                assert client.classify_frame(jpeg).label == expected
                assert client.classify_frame(image).label == adapter.predict(backbone.features(image))[0]
            with pytest.raises(BridgeError) as err:
                client.classify_frame(b"\xff\xd8 not a jpeg")
            assert err.value.code == ErrorCode.BAD_INPUT
            stats = client.stats()
            assert stats.frames == 12 and stats.errors == 1  # a refused frame counts as an error only
    finally:
        port.close()
        os.close(tty)
        os.close(controller)


def test_send_command_over_tcp(device: BridgeDevice, tmp_path: Path, capsys) -> None:
    import json

    from edge_runtime.cli import main

    x, _ = _blobs(0, 2)
    np.save(tmp_path / "x.npy", x)
    listener = TcpListener("127.0.0.1", 0)
    stop = threading.Event()

    def accept_and_serve() -> None:
        while not stop.is_set():
            link = listener.accept(wait=0.1)
            if link is not None:
                with link:
                    serve(link, device, should_stop=stop.is_set)

    thread = threading.Thread(target=accept_and_serve, daemon=True)
    thread.start()
    try:
        base = ["bridge", "send", "--port", listener.url, "--json"]
        assert main([*base, "features", str(tmp_path / "x.npy"), "--top-k", "2"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["label"] for r in rows] == device.adapter.predict(x).tolist()
        assert all(r["class"] == CLASSES[r["label"]] and len(r["top"]) == 2 for r in rows)
        assert main([*base, "teach", "3", str(tmp_path / "x.npy")]) == 0
        assert json.loads(capsys.readouterr().out)["taught"] == len(x)
        assert main([*base, "export-state", str(tmp_path / "state.npz")]) == 0
        capsys.readouterr()
        assert read_state(tmp_path / "state.npz").adapter._counts.sum() == device.adapter._counts.sum()
        assert main([*base, "stats"]) == 0
        assert json.loads(capsys.readouterr().out)["teaches"] == len(x)
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
