"""Fleet devices on a real Mosquitto (started here, on loopback, with passwords and an ACL).

Devices run in this process (one paho client each) except in the fault test, which runs
``edgert bench fleet --quick --parts faults``: device processes SIGKILLed and restarted, the
broker SIGKILLed and restarted, a device offline for 1,000 frames.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_runtime.adapters.memflow import MemFlow
from edge_runtime.fleet.broker import Broker, write_private
from edge_runtime.fleet.ledger import pack
from edge_runtime.fleet.payload import encode
from edge_runtime.fleet.sync import FleetSync
from edge_runtime.fleet.topics import topic
from edge_runtime.state import Checkpoints

KEY = bytes(range(32))
SHA = "c" * 64


def assert_same_statistics(got: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Counts exactly; sums to ``rtol`` (entries that cancel to ~1e-17 at 1e-9 of the largest)."""
    assert np.array_equal(got[0], expected[0])
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-9 * np.abs(expected).max())


NAMES = ["d0", "d1", "d2", "d3", "d4", "intruder"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("broker"), "shop", NAMES) as running:
        yield running


@pytest.fixture(scope="module")
def memory():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(9, 32)).astype(np.float32)
    y = np.arange(180) % 9
    x = (means[y] + 0.4 * rng.normal(size=(180, 32))).astype(np.float32)
    return MemFlow(n_hub=8, n_bridge=32, in_degree=4).fit(x[:90], y[:90]).state_dict(), x[90:], y[90:]


class Fleet:
    """In-process devices of one fleet (a fleet name per test keeps tests apart)."""

    def __init__(self, broker: Broker, name: str, state: dict) -> None:
        self.broker, self.name, self.state = broker, name, state
        self.devices: dict[str, FleetSync] = {}
        self.lines: list[str] = []

    def join(self, device: str, **options) -> FleetSync:
        sync = FleetSync(
            MemFlow.from_state_dict(self.state),
            self.broker.url_for(self.name),
            device,
            [KEY],
            SHA,
            password=self.broker.passwords[device],
            log=self.lines.append,
            **options,
        )
        self.devices[device] = sync.start()
        assert sync.ready.wait(20)
        return sync

    def settle(self, condition, timeout: float = 30.0) -> bool:
        """Step every device until ``condition()`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sync in self.devices.values():
                sync.step()
            if condition():
                return True
            threading.Event().wait(0.01)  # paho delivers on its own thread
        return False

    def converged(self) -> bool:
        seqs = {name: sync.ledger.seq for name, sync in self.devices.items()}
        return all(
            sync.ledger.peers.get(p) is not None and sync.ledger.peers[p].seq == q
            for name, sync in self.devices.items()
            for p, q in seqs.items()
            if p != name and q
        )

    def close(self) -> None:
        for sync in self.devices.values():
            sync.close(2.0)


def raw_client(broker: Broker, user: str, password: str | None = None) -> tuple[mqtt.Client, list]:
    """A plain paho client; returns it and the list its connect results land in."""
    results: list = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{user}-{time.monotonic_ns()}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, broker.passwords.get(user) if password is None else password)
    client.on_connect = lambda c, u, f, reason, p: results.append(reason)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client, results


def wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        threading.Event().wait(0.01)
    return condition()


def test_four_devices_equal_one_taught_everything_and_a_late_joiner_catches_up(broker, memory):
    state, x, y = memory
    fleet = Fleet(broker, "exact", state)
    captured: list[tuple[str, bytes]] = []
    observer, _ = raw_client(broker, "observer")
    observer.on_message = lambda c, u, m: captured.append((m.topic, bytes(m.payload)))
    observer.subscribe(topic("exact", SHA, "delta"), 1)
    try:
        devices = [fleet.join(f"d{i}", publish_every=1) for i in range(4)]
        for i, sync in enumerate(devices):
            for part in np.array_split(np.arange(i, 90, 4), 3):
                sync.teach(x[part], y[part])
                sync.step()
        assert all(sync.flush(10) for sync in devices)
        assert fleet.settle(fleet.converged)
        alone = MemFlow.from_state_dict(state)
        alone.teach(x, y)
        expected = alone.statistics()["source"]
        for sync in devices:
            assert_same_statistics(sync.adapter.statistics()["source"], expected, rtol=1e-6)
        # Every delta again, in reverse order, twice, from each device's own login: all ignored.
        assert wait_for(lambda: len(captured) >= sum(sync.ledger.seq for sync in devices))
        before = [sync.adapter.statistics()["source"] for sync in devices]
        senders = {name: raw_client(broker, name)[0] for name in ("d0", "d1", "d2", "d3")}
        replayed = captured[::-1] * 2
        for name, payload in replayed:
            senders[name.split("/")[-1]].publish(name, payload, qos=1).wait_for_publish(5)
        # each replayed delta reaches the three devices that did not send it
        assert fleet.settle(lambda: sum(sync.counts["duplicate"] for sync in devices) == 3 * len(replayed))
        for sync, stats in zip(devices, before):
            assert np.array_equal(sync.adapter.statistics()["source"], stats)
        # A device that joins late catches up from the retained snapshots.
        late = fleet.join("d4")
        assert fleet.settle(lambda: len(late.ledger.peers) == 4)
        assert_same_statistics(late.adapter.statistics()["source"], expected, rtol=1e-6)
        assert late.counts["resynced"] == 4 and late.counts["applied"] == 0
        for client in senders.values():
            client.disconnect()
    finally:
        observer.disconnect()
        fleet.close()


def test_bad_payloads_are_dropped_counted_logged_and_never_touch_the_memory(broker, memory):
    state, x, y = memory
    fleet = Fleet(broker, "bad", state)
    receiver = fleet.join("d0")
    sender, _ = raw_client(broker, "d1")
    try:
        stats = receiver.adapter.statistics()["source"]
        good = pack(receiver.adapter.taught_statistics(x[:2], y[:2]))
        header = {"kind": "delta", "device": "d1", "seq": 1, "model": SHA, "memory": receiver.fingerprint}
        where = topic("bad", SHA, "delta", "d1")
        big = {"source.classes": np.arange(9), "source.values": np.zeros((3, 9, 400))}
        bad = {
            "unsigned": encode(header, good, None),
            "bad_signature": encode(header, good, b"k" * 32),
            "oversized": encode(header, big, KEY),
            "wrong_model": encode({**header, "model": "d" * 64}, good, KEY),
            "malformed": encode({**header, "seq": "one"}, good, KEY),
        }
        for payload in bad.values():
            sender.publish(where, payload, qos=1).wait_for_publish(5)
        sender.publish(where, encode(header, good, KEY), qos=1).wait_for_publish(5)  # then a good one
        assert fleet.settle(lambda: receiver.ledger.peers.get("d1") is not None)
        assert receiver.rejected == {kind: 1 for kind in bad}
        dropped = [line for line in fleet.lines if line.startswith("dropped")]
        assert len(dropped) == 5 and all("\n" not in line for line in dropped)
        assert_same_statistics(
            receiver.adapter.statistics()["source"],
            stats + receiver.adapter.taught_statistics(x[:2], y[:2])["source"],
            rtol=1e-12,
        )
    finally:
        sender.disconnect()
        fleet.close()


def test_the_acl_keeps_a_device_from_publishing_as_another(broker, memory):
    state, x, y = memory
    fleet = Fleet(broker, "acl", state)
    receiver = fleet.join("d1")
    acks: list = []
    intruder, _ = raw_client(broker, "intruder")
    intruder.on_publish = lambda c, u, mid, reason, p: acks.append(reason)
    try:
        # Even with the fleet key, publishing on d0's topic is refused by the broker.
        spoof = encode(
            {"kind": "delta", "device": "d0", "seq": 1, "model": SHA, "memory": receiver.fingerprint},
            pack(receiver.adapter.taught_statistics(x[:1], y[:1])),
            KEY,
        )
        intruder.publish(topic("acl", SHA, "delta", "d0"), spoof, qos=1).wait_for_publish(5)
        intruder.publish(topic("acl", SHA, "delta", "intruder"), b"marker", qos=1).wait_for_publish(5)
        assert fleet.settle(lambda: receiver.rejected.get("malformed") == 1)  # the marker came through
        assert receiver.ledger.peers == {} and acks[0].is_failure and not acks[1].is_failure
        for user, password in (("d1", "wrong"), ("nobody", "x")):
            client, results = raw_client(broker, user, password)
            assert wait_for(lambda: results) and results[0].is_failure
            client.loop_stop()
    finally:
        intruder.disconnect()
        fleet.close()


def test_forget_reaches_every_device(broker, memory):
    state, x, y = memory
    fleet = Fleet(broker, "forget", state)
    teacher, other = fleet.join("d0"), fleet.join("d1")
    base = other.adapter.statistics()["source"]
    batch = teacher.teach(x[:6], y[:6])
    assert teacher.flush(10) and fleet.settle(fleet.converged)
    assert not np.allclose(other.adapter.statistics()["source"], base)
    assert teacher.forget(batch)
    assert teacher.flush(10) and fleet.settle(fleet.converged)
    for sync in (teacher, other):
        assert_same_statistics(sync.adapter.statistics()["source"], base, rtol=1e-9)
    fleet.close()


def test_a_device_restarted_from_its_checkpoint_neither_reapplies_nor_loses(broker, memory, tmp_path):
    state, x, y = memory
    fleet = Fleet(broker, "restart", state)
    teacher = fleet.join("d0", publish_every=1)
    device = fleet.join("d1")
    folder = tmp_path / "d1"

    def save(sync: FleetSync) -> None:
        meta, extra = sync.state()
        with Checkpoints(folder, SHA, "memflow") as checkpoints:
            checkpoints.save(sync.adapter, [str(k) for k in range(9)], {"fleet": meta}, extra=extra)

    teacher.teach(x[:4], y[:4])
    assert teacher.flush(10) and fleet.settle(fleet.converged)
    save(device)  # knows d0's update 1
    teacher.teach(x[4:8], y[4:8])
    assert teacher.flush(10) and fleet.settle(fleet.converged)  # update 2 applied, never checkpointed
    device._client.loop_stop()  # the process dies: no clean disconnect, no checkpoint
    with Checkpoints(folder, SHA, "memflow") as checkpoints:
        resumed = checkpoints.load()
    restarted = FleetSync(
        resumed.adapter,
        broker.url_for("restart"),
        "d1",
        [KEY],
        SHA,
        password=broker.passwords["d1"],
        log=fleet.lines.append,
    )
    restarted.restore(resumed.meta["fleet"], resumed.extra)
    assert restarted.ledger.peers["d0"].seq == 1
    fleet.devices["d1"] = restarted.start()
    assert fleet.settle(lambda: restarted.ledger.peers["d0"].seq == 2)
    alone = MemFlow.from_state_dict(state)
    alone.teach(x[:4], y[:4])
    alone.teach(x[4:8], y[4:8])
    assert_same_statistics(restarted.adapter.statistics()["source"], alone.statistics()["source"], rtol=1e-9)
    fleet.close()


def test_fleet_status_lists_the_devices(broker, memory, capsys):
    from edge_runtime.cli import main as edgert

    state, x, y = memory
    fleet = Fleet(broker, "status", state)
    sync = fleet.join("d2")
    sync.teach(x[:2], y[:2])
    assert sync.flush(10)
    password = broker.password_file("observer")
    assert (
        edgert(["fleet", "status", "--broker", broker.url_for("status"), "--password-file", str(password), "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [(r["device"], r["online"], r["seq"]) for r in rows] == [("d2", True, 1)]
    fleet.close()
    assert edgert(["fleet", "status", "--broker", broker.url_for("status"), "--password-file", str(password)]) == 0
    out = capsys.readouterr().out
    assert "d2" in out and "1 device(s), 0 online" in out


def test_fault_bench_quick_converges_exactly(tmp_path):
    """Real processes: the broker and a device SIGKILLed and restarted, a device offline for 1,000
    frames; every device ends with the exact fleet statistics and no stream stopped."""
    from edge_runtime.cli import main as edgert

    out = tmp_path / "faults.json"
    assert edgert(["bench", "fleet", "--quick", "--parts", "faults", "--fps", "200", "--json", str(out)]) == 0
    faults = json.loads(out.read_text())["faults"]
    assert set(faults) == {"broker_killed", "device_killed", "device_offline"}
    for row in faults.values():
        assert row["ok"] and row["converged"] and row["exact"] and row["counts_equal"]
        assert row["max_relative_error"] <= 1e-9 and row["rejected"] == 0 and row["taught_total"] > 0
    assert faults["device_killed"]["others_kept_running"] and faults["broker_killed"]["streams_kept_running"]


def test_edgert_run_with_fleet_shares_what_it_is_taught(broker, tmp_path, exported):
    """``edgert run --fleet`` on a real video with the real backbone: its taught frames reach a peer,
    exactly, and its checkpoint holds its fleet state."""
    import cv2

    from edge_runtime.cli import main as edgert
    from edge_runtime.model.card import load_card
    from edge_runtime.state import read_state

    data = Path("/usr/share/doc/opencv-doc/examples/data")
    photos = {"orange": "orange.jpg", "baboon": "baboon.jpg", "butterfly": "butterfly.jpg"}
    if not data.is_dir():
        pytest.skip("needs Debian's opencv-doc")
    frames = []
    for name, file in photos.items():
        image = cv2.imread(str(data / file))
        (tmp_path / "source" / name).mkdir(parents=True)
        for i, scale in enumerate((1.0, 0.8, 0.6)):
            view = cv2.resize(image[: int(image.shape[0] * scale), : int(image.shape[1] * scale)], (224, 224))
            cv2.imwrite(str(tmp_path / "source" / name / f"{i}.png"), view)
            frames.append(cv2.flip(view, 1))
    video = tmp_path / "shifted.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (224, 224))
    for frame in frames:
        writer.write(frame)
    writer.release()
    model, memory = exported["int8.onnx"], tmp_path / "memflow.npz"
    assert (
        edgert(
            [
                "memory",
                "build",
                "--model",
                str(model),
                "--images",
                str(tmp_path / "source"),
                "--adapter",
                "memflow",
                "--out",
                str(memory),
            ]
        )
        == 0
    )
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"frame": i, "label": name}) + "\n"
            for i, name in ((0, "orange"), (4, "baboon"), (7, "butterfly"))
        )
    )
    key = write_private(tmp_path / "fleet.key", KEY.hex() + "\n")
    sha = load_card(model).sha256
    source = read_state(memory)
    peer = FleetSync(source.adapter, broker.url_for("run"), "d3", [KEY], sha, password=broker.passwords["d3"]).start()
    base = peer.adapter.statistics()["source"]
    state = tmp_path / "state"
    assert (
        edgert(
            [
                "run",
                "--source",
                str(video),
                "--model",
                str(model),
                "--adapter",
                "memflow",
                "--memory",
                str(memory),
                "--labels",
                str(labels),
                "--state",
                str(state),
                "--quiet",
                "--fleet",
                broker.url_for("run"),
                "--fleet-device",
                "d0",
                "--fleet-key",
                str(key),
                "--fleet-password-file",
                str(broker.password_file("d0")),
            ]
        )
        == 0
    )
    assert wait_for(lambda: peer.step() >= 0 and "d0" in peer.ledger.peers)
    checkpoint = read_state(sorted(state.glob("checkpoint-*.npz"))[-1])
    fleet_meta = checkpoint.meta["fleet"]
    assert fleet_meta["device"] == "d0" and fleet_meta["seq"] == peer.ledger.peers["d0"].seq >= 1
    own = checkpoint.extra["fleet.own.source"]
    assert own[0, :, 0].sum() == 3  # three taught frames, and only them
    assert_same_statistics(peer.adapter.statistics()["source"], base + own, rtol=1e-9)
    assert_same_statistics(checkpoint.adapter.statistics()["source"], base + own, rtol=1e-9)
    peer.close(2.0)
