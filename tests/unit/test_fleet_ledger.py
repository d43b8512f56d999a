"""Fleet bookkeeping without a broker: payload format, exactly-once in any order, forget, state.

The broker-side behaviour (real Mosquitto) is in test_fleet_broker.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_runtime.adapters.memflow import MemFlow
from edge_runtime.adapters.ncm import NCM
from edge_runtime.fleet.ledger import Ledger, pack, unpack
from edge_runtime.fleet.payload import MAC_SIZE, PayloadError, decode, encode
from edge_runtime.state import Checkpoints, StateError, read_state

KEY = bytes(range(32))


def small_memflow(seed: int = 0) -> tuple[MemFlow, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(9, 32)).astype(np.float32)
    y = np.arange(90) % 9
    x = (means[y] + 0.4 * rng.normal(size=(90, 32))).astype(np.float32)
    return MemFlow(n_hub=8, n_bridge=32, in_degree=4).fit(x, y), x, y


def test_payload_round_trip_and_each_refusal():
    arrays = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.array([3, 1], np.int64)}
    blob = encode({"kind": "delta", "seq": 7}, arrays, KEY)
    header, got = decode(blob, [b"another key of 16+ bytes", KEY], max_bytes=len(blob))
    assert header["seq"] == 7 and all(np.array_equal(got[k], v) for k, v in arrays.items())

    def kind(data: bytes, limit: int = 1 << 20) -> str:
        with pytest.raises(PayloadError) as err:
            decode(data, [KEY], max_bytes=limit)
        return err.value.kind

    assert kind(blob, limit=len(blob) - 1) == "oversized"
    assert kind(encode({"kind": "delta"}, arrays, None)) == "unsigned"
    assert kind(encode({"kind": "delta"}, arrays, b"x" * 32)) == "bad_signature"
    assert kind(blob[: -MAC_SIZE - 1] + blob[-MAC_SIZE:]) == "bad_signature"  # a byte cut out
    assert kind(b"garbage") == "malformed"
    assert kind(b"NOPE" + blob[4:]) == "malformed"

    def signed(body: bytes) -> bytes:
        import hashlib
        import hmac

        return body + hmac.new(KEY, body, hashlib.sha256).digest()

    body = blob[:-MAC_SIZE]
    assert kind(signed(body + b"\0")) == "malformed"  # bytes after the last array
    assert kind(signed(body[:-8])) == "malformed"  # an array runs past the end
    pickled = body.replace(b'"<i8"', b'"|O8"')
    assert kind(signed(pickled)) == "malformed"  # object arrays are never read


@pytest.mark.parametrize("counts_equal", [True, False])
def test_pack_keeps_only_touched_classes_and_round_trips(counts_equal):
    rng = np.random.default_rng(1)
    stats = np.zeros((3, 9, 40))
    stats[:, [2, 7]] = rng.normal(size=(3, 2, 40))
    if counts_equal:
        stats[0, [2, 7]] = np.array([[3.0], [1.0]])
    arrays = pack({"source": stats})
    assert arrays["source.classes"].tolist() == [2, 7] and ("source.counts" in arrays) == counts_equal
    assert np.array_equal(unpack(arrays, {"source": np.zeros((3, 9, 40))})["source"], stats)
    bad = dict(arrays, **{"source.classes": np.array([2, 9])})
    with pytest.raises(PayloadError, match="malformed"):
        unpack(bad, {"source": np.zeros((3, 9, 40))})


def test_exactly_once_in_any_order_with_duplicates_and_gaps():
    """Four devices each teach a quarter; a fifth receives every update in shuffled orders with
    duplicates, some deltas missing (then the snapshot): always the sum of the four, once."""
    model, x, y = small_memflow()
    zeros = {"source": np.zeros_like(model.statistics()["source"])}
    senders = [Ledger(f"d{i}", zeros) for i in range(4)]
    updates = []
    for i, sender in enumerate(senders):
        for part in np.array_split(np.arange(i, 90, 4), 3):
            sender.record(model.taught_statistics(x[part], y[part]))
            updates += [("delta", sender.device, seq, arrays) for seq, arrays in sender.take(65536)]
        updates.append(("snapshot", sender.device, *sender.snapshot()))
    expected = sum(s.own["source"] for s in senders)
    rng = np.random.default_rng(0)
    for trial in range(20):
        order = [updates[i] for i in rng.permutation(len(updates))]
        order += [order[i] for i in rng.integers(0, len(order), 10)]  # QoS 1 redeliveries
        if trial % 2:
            order = [u for u in order if u[0] == "snapshot" or rng.uniform() > 0.3]  # lost deltas
        receiver, total = Ledger("r", zeros), np.zeros_like(expected)
        outcomes = []
        for kind, device, seq, arrays in order:
            outcome, change = receiver.receive(kind, device, seq, arrays)
            outcomes.append(outcome)
            if change is not None:
                total += change["source"]
        np.testing.assert_allclose(total, expected, rtol=1e-12, atol=0)
        assert np.array_equal(total[0], expected[0])  # counts: exactly
        assert {p: peer.seq for p, peer in receiver.peers.items()} == {s.device: s.seq for s in senders}
        assert "duplicate" in outcomes or "stale" in outcomes


@pytest.mark.parametrize("kind", [MemFlow, NCM])
def test_fleet_statistics_equal_one_device_taught_everything(kind):
    model, x, y = small_memflow()
    if kind is NCM:
        model = NCM().fit(x, y)
    state = model.state_dict()
    devices = [kind.from_state_dict(state) for _ in range(4)]
    zeros = {"source": np.zeros_like(model.statistics()["source"])}
    ledgers = [Ledger(f"d{i}", zeros) for i in range(4)]
    for i, (device, ledger) in enumerate(zip(devices, ledgers)):
        delta = device.taught_statistics(x[i::4], y[i::4])
        device.add_statistics(delta)
        ledger.record(delta)
    published = [(ledger.device, seq, arrays) for ledger in ledgers for seq, arrays in ledger.take(65536)]
    for device, ledger in zip(devices, ledgers):
        for name, seq, arrays in itertools.chain(published, published):
            _, change = ledger.receive("delta", name, seq, arrays)
            if change is not None:
                device.add_statistics(change)
    alone = kind.from_state_dict(state)
    alone.teach(x, y)
    for device in devices:
        np.testing.assert_allclose(device.statistics()["source"], alone.statistics()["source"], rtol=1e-6, atol=0)
        np.testing.assert_allclose(device.predict_proba(x), alone.predict_proba(x), rtol=0, atol=1e-5)


def test_a_restart_from_an_older_checkpoint_adopts_its_snapshot_once():
    """The checkpoint held a taught change still pending (in the memory, not yet published); it
    was published afterwards, then more was taught and published. Restored from that checkpoint,
    the device takes its own snapshot back: every taught change counted once, nothing sent again."""
    model, x, y = small_memflow()
    zeros = {"source": np.zeros_like(model.statistics()["source"])}
    base = model.statistics()["source"].copy()
    ledger = Ledger("d0", zeros)
    parts = [model.taught_statistics(x[i::3], y[i::3]) for i in range(3)]
    memory = base.copy()

    def teach(part: dict) -> None:
        nonlocal memory
        memory = memory + part["source"]
        ledger.record(part)

    teach(parts[0])
    ledger.take(1 << 20)
    teach(parts[1])  # pending when the checkpoint is written
    meta, arrays = ledger.state()
    checkpoint_memory = memory.copy()
    ledger.take(1 << 20)
    teach(parts[2])
    ledger.take(1 << 20)
    seq, snapshot = ledger.snapshot()

    restored = Ledger.restore(meta, arrays, zeros)
    outcome, change = restored.receive("snapshot", "d0", seq, snapshot)
    assert outcome == "adopted" and change is not None
    np.testing.assert_allclose(checkpoint_memory + change["source"], memory, rtol=1e-12, atol=1e-12)
    assert not restored.has_pending and restored.take(1 << 20) == []
    assert restored.receive("snapshot", "d0", seq, snapshot)[0] == "own"


def test_forget_takes_a_taught_batch_back_everywhere():
    model, x, y = small_memflow()
    zeros = {"source": np.zeros_like(model.statistics()["source"])}
    base = model.statistics()["source"]
    sender, receiver = Ledger("a", zeros), Ledger("b", zeros)
    delta = model.taught_statistics(x[:5], y[:5])
    batch = sender.record(delta, batch=True)
    peer = MemFlow.from_state_dict(model.state_dict())
    for seq, arrays in sender.take(65536):
        peer.add_statistics(receiver.receive("delta", "a", seq, arrays)[1])
    assert not np.allclose(peer.statistics()["source"], base)
    assert sender.forget(batch) is not None and sender.forget(batch) is None  # once
    for seq, arrays in sender.take(65536):
        peer.add_statistics(receiver.receive("delta", "a", seq, arrays)[1])
    np.testing.assert_allclose(peer.statistics()["source"], base, rtol=1e-9, atol=1e-12)
    assert np.array_equal(peer.statistics()["source"][0], base[0])


def test_add_statistics_checks_before_changing_anything():
    model, _, _ = small_memflow()
    before = model.statistics()["source"]
    for bad in (
        {"source": before[:, :3]},
        {"source": before.astype(np.float32)},
        {"source": np.full_like(before, np.nan)},
        {"source": before, "target": before},
    ):
        with pytest.raises(ValueError):
            model.add_statistics(bad)
    assert np.array_equal(model.statistics()["source"], before)


def test_checkpoint_carries_the_ledger_and_detects_tampering(tmp_path):
    model, x, y = small_memflow()
    ledger = Ledger("a", {"source": np.zeros_like(model.statistics()["source"])})
    ledger.record(model.taught_statistics(x[:3], y[:3]), batch=True)
    ledger.take(65536)
    ledger.receive("delta", "b", 1, pack({"source": np.ones_like(ledger.own["source"])}))
    meta, arrays = ledger.state()
    with Checkpoints(tmp_path, "sha", "memflow") as checkpoints:
        path = checkpoints.save(model, [str(k) for k in range(9)], {"fleet": meta}, extra=arrays)
    state = read_state(path)
    back = Ledger.restore(state.meta["fleet"], state.extra, {"source": np.zeros_like(ledger.own["source"])})
    assert (back.seq, {p: q.seq for p, q in back.peers.items()}, list(back.batches)) == (1, {"b": 1}, [1])
    assert np.array_equal(back.own["source"], ledger.own["source"])
    # the extra arrays are covered by the checksum: change one byte of one of them
    import zipfile

    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in entries if n.startswith("x/own"))
    data = bytearray(entries[name])
    data[-1] ^= 1
    entries[name] = bytes(data)
    with zipfile.ZipFile(tmp_path / "tampered.npz", "w") as z:
        for n, blob in entries.items():
            z.writestr(n, blob)
    with pytest.raises(StateError, match="checksum"):
        read_state(tmp_path / "tampered.npz")
