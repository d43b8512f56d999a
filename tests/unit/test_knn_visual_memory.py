"""Visual memory: search contract, exact unlearning (predictions and bytes), durability, capacity, pruning."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.adapters import make_adapter
from edge_runtime.errors import InputError
from edge_runtime.memory.visual_memory import PSEUDO, VisualMemory, vote

D = 32


def clustered(n: int, seed: int = 0, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, D))
    y = rng.integers(0, classes, n)
    x = (centres[y] + 0.8 * rng.normal(size=(n, D))).astype(np.float32)
    return x, y


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_search_matches_brute_force_and_pads_missing():
    x, y = clustered(200)
    mem = VisualMemory(D)
    ids = mem.add(x, y)
    q = clustered(7, seed=1)[0]
    distances, found = mem.search(q, 5)
    sims = unit(q) @ unit(x).T
    for i in range(len(q)):
        order = np.lexsort((ids, -sims[i]))[:5]
        np.testing.assert_array_equal(found[i], ids[order])
        np.testing.assert_allclose(distances[i], 1 - sims[i][order], atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()
    small = VisualMemory(D)
    small.add(x[:2], y[:2])
    distances, found = small.search(q[:1], 4)
    assert found[0, 2:].tolist() == [-1, -1] and np.isinf(distances[0, 2:]).all()


def test_rank_voting_weights_and_softmax_option():
    labels = np.array([[2, 0, 2, -1]])
    p, w = vote(labels, np.array([[0.1, 0.2, 0.3, np.inf]], np.float32), 3)
    np.testing.assert_allclose(w[0], [1 / 2, 1 / 3, 1 / 4, 0])
    np.testing.assert_allclose(p[0], np.array([1 / 3, 0, 3 / 4]) / (1 / 3 + 3 / 4))
    p, w = vote(labels, np.array([[0.1, 0.2, 0.3, np.inf]], np.float32), 3, "softmax", 0.07)
    np.testing.assert_allclose(w[0, :3] / w[0, 0], np.exp((np.array([0.9, 0.8, 0.7]) - 0.9) / 0.07), rtol=1e-5)
    np.testing.assert_allclose(vote(np.full((1, 2), -1), np.full((1, 2), np.inf, np.float32), 3)[0], 1 / 3)


def test_unlearning_is_exact_every_prediction_equals_a_memory_that_never_held_the_entry():
    x, y = clustered(300, seed=2)
    x[10] = x[20]  # exact duplicates: ties must not depend on where a row sits
    y[10], y[20] = 0, 1
    queries = np.concatenate([clustered(40, seed=3)[0], x[[10, 20, 5, 150]]])
    held = VisualMemory(D)
    ids = held.add(x, y)
    doomed = [int(ids[20]), int(ids[7]), int(ids[0])]
    assert held.remove_ids(doomed) == 3
    keep = np.setdiff1d(np.arange(len(x)), [20, 7, 0])
    never = VisualMemory(D)
    never.add_with_ids(x[keep], y[keep], ids[keep])
    for k in (1, 5, 10, 50):
        d_held, i_held = held.search(queries, k)
        d_never, i_never = never.search(queries, k)
        np.testing.assert_array_equal(i_held, i_never)
        np.testing.assert_array_equal(d_held, d_never)
        np.testing.assert_array_equal(held.predict_proba(queries, 4, k=k), never.predict_proba(queries, 4, k=k))
    assert held.explain(queries[:1], 4) == never.explain(queries[:1], 4)
    assert not set(doomed) & set(held.search(queries, 300)[1].ravel().tolist())


def database_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_removed_entry_leaves_the_database_files(tmp_path):
    path = tmp_path / "memory.db"
    x, y = clustered(50, seed=4)
    mem = VisualMemory(D, path)
    ids = mem.add(x, y)
    mem.compact()  # the entry is in the main database file, not just the log
    secret = unit(x[17:18])[0].astype("<f4").tobytes()
    assert secret in database_bytes(path)
    mem.remove_ids([ids[17]])
    mem.compact()
    assert secret not in database_bytes(path)
    assert unit(x[18:19])[0].astype("<f4").tobytes() in database_bytes(path)  # the others stay
    mem.close()
    assert VisualMemory(D, path).ntotal == 49


def test_reopen_after_write_restores_every_field(tmp_path):
    path = tmp_path / "memory.db"
    x, y = clustered(30, seed=5)
    with VisualMemory(D, path) as mem:
        mem.add(x[:20], y[:20], origin="source", timestamps=np.arange(20.0))
        mem.add(x[20:], y[20:], origin=PSEUDO, timestamps=np.arange(20.0, 30.0))
        mem.remove_ids([3])
        before = mem.entries()
    with VisualMemory(D, path) as again:
        after = again.entries()
        assert after["origins"] == before["origins"]
        for key in ("features", "labels", "ids", "timestamps"):
            np.testing.assert_array_equal(after[key], before[key])
        assert again.add(x[:1], y[:1])[0] == 30  # ids keep counting, never reused
    with pytest.raises(InputError, match="width"):
        VisualMemory(D + 1, path)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from edge_runtime.memory.visual_memory import VisualMemory

    class StallsMidTransaction(VisualMemory):
        stall = False
        def _transaction(self, statements):
            def rows_then_stall(rows):
                for i, row in enumerate(rows):
                    if self.stall and i == len(rows) // 2:
                        print("mid-transaction", flush=True)
                        time.sleep(120)
                    yield row
            super()._transaction([(sql, rows_then_stall(list(rows))) for sql, rows in statements])

    path, batch = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    mem = StallsMidTransaction(64, path)
    for b in range(3):
        mem.stall = b == 2
        mem.add(rng.normal(size=(batch, 64)).astype(np.float32), rng.integers(0, 5, batch))
        print("committed", mem.ntotal, flush=True)
""")


def test_kill_9_mid_transaction_keeps_the_last_committed_state(tmp_path):
    path = tmp_path / "memory.db"
    batch = 3000  # 3000 x 256 B rows overflow SQLite's page cache: uncommitted pages reach the log
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batch)], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in writer.stdout:
        lines.append(line.strip())
        if line.startswith("mid-transaction"):
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert lines == [f"committed {batch}", f"committed {2 * batch}", "mid-transaction"]
    assert Path(str(path) + "-wal").stat().st_size > 0  # the log holds the half-written transaction
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    mem = VisualMemory(64, path)
    assert mem.ntotal == 2 * batch
    rng = np.random.default_rng(0)
    expected = []
    for _ in range(2):
        expected.append(unit(rng.normal(size=(batch, 64)).astype(np.float32)))
        rng.integers(0, 5, batch)
    np.testing.assert_allclose(mem.entries()["features"], np.concatenate(expected), atol=1e-6)
    mem.add(expected[0][:1], [0])  # and it is writable again
    assert mem.ntotal == 2 * batch + 1


def test_capacity_evicts_pseudo_first_then_oldest_of_the_largest_class():
    x, y = clustered(10, seed=6)
    mem = VisualMemory(D, capacity=6)
    mem.add(x[:4], [0, 0, 0, 1], origin="source", timestamps=np.array([1.0, 2.0, 3.0, 4.0]))
    mem.add(x[4:6], [1, 1], origin=PSEUDO, timestamps=np.array([5.0, 6.0]))
    mem.add(x[6:7], [2], origin=PSEUDO, timestamps=np.array([7.0]))
    assert sorted(mem.entries()["ids"].tolist()) == [0, 1, 2, 3, 5, 6]  # oldest pseudo of class 1 went
    mem.remove_origin(PSEUDO)
    mem.add(x[7:9], [1, 1], origin="source", timestamps=np.array([8.0, 9.0]))
    mem.add(x[9:10], [1], origin="source", timestamps=np.array([10.0]))
    # No pseudo left: classes 0 and 1 both hold 3; the larger-count tie goes to class 0, oldest (id 0).
    assert sorted(mem.entries()["ids"].tolist()) == [1, 2, 3, 7, 8, 9]
    assert mem.ntotal == 6


def test_prune_removes_wrong_label_neighbours():
    x, y = clustered(200, seed=7)
    y = y.copy()
    liars = np.flatnonzero(y == 0)[:3]
    y[liars] = 1  # sit inside class 0, labelled 1
    mem = VisualMemory(D)
    ids = mem.add(x, y)
    removed = mem.prune(k=10)
    assert set(ids[liars].tolist()) <= set(removed.tolist())
    assert len(removed) < 20 and mem.ntotal == 200 - len(removed)


def test_bad_input_is_refused_and_loses_nothing():
    x, y = clustered(20, seed=8)
    mem = VisualMemory(D)
    mem.add(x, y)
    with pytest.raises(InputError, match="width"):
        mem.add(np.ones((1, D + 1), np.float32), [0])
    bad = x[:2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mem.search(bad, 3)
    with pytest.raises(InputError, match="not in the memory"):
        mem.remove_ids([3, 999])
    with pytest.raises(InputError, match="already"):
        mem.add_with_ids(x[:1], [0], [5])
    assert mem.ntotal == 20


def test_knn_adapters_registered_forget_by_origin_and_round_trip():
    x, y = clustered(200, seed=9)
    knn = make_adapter("knn-self-train", confidence=0.5).fit(x[:100], y[:100], n_classes=4)
    knn.adapt(x[100:])
    pseudo = knn.memory.origin_counts().get(PSEUDO)
    assert pseudo is not None and pseudo.sum() > 0
    clone = type(knn).from_state_dict(knn.state_dict())
    np.testing.assert_array_equal(clone.predict_proba(x[:50]), knn.predict_proba(x[:50]))
    assert knn.forget(origin=PSEUDO) == pseudo.sum()
    assert knn.memory.ntotal == 100
    np.testing.assert_array_equal(knn.predict_proba(x), make_adapter("knn").fit(x[:100], y[:100], 4).predict_proba(x))
    explained = knn.explain(x[0])
    assert len(explained["neighbours"]) == 10 and explained["prediction"] == int(knn.predict(x[:1])[0])


def test_origin_filters_restrict_the_search():
    x, y = clustered(60, seed=10)
    mem = VisualMemory(D)
    mem.add(x[:40], y[:40], origin="source")
    pseudo_ids = mem.add(x[40:], y[40:], origin=PSEUDO)
    _, only_pseudo = mem.search(x[:5], 30, pseudo=True)
    assert set(only_pseudo[only_pseudo >= 0].tolist()) <= set(pseudo_ids.tolist())
    assert (only_pseudo[:, 20:] == -1).all()  # only 20 pseudo entries exist
    _, labelled = mem.search(x[:5], 10, pseudo=False)
    assert not set(labelled.ravel().tolist()) & set(pseudo_ids.tolist())
    _, source = mem.search(x[:5], 10, origin="source")
    np.testing.assert_array_equal(source, labelled)


def test_faiss_backend_same_interface_high_recall_and_removal():
    pytest.importorskip("faiss")
    from edge_runtime.bench.knn import mixture

    entries, labels, queries = mixture(12_000, 30, seed=1, d=64)
    exact = VisualMemory(64)
    ann = VisualMemory(64, backend="faiss", nprobe=16)
    exact.add(entries, labels)
    ann.add(entries, labels)
    _, truth = exact.search(queries, 10)
    _, approx = ann.search(queries, 10)
    recall = np.mean([len(set(t) & set(a)) / 10 for t, a in zip(truth.tolist(), approx.tolist())])
    assert recall >= 0.9
    victim = int(approx[0, 0])
    ann.remove_ids([victim])
    assert victim not in ann.search(queries[:1], 10)[1]


def test_an_id_once_used_is_never_handed_out_again(tmp_path):
    # A host that kept the id of a taught entry may FORGET it after the device restarted: if the
    # newest entries were removed, a restored memory must not give their ids to newcomers.
    x, y = clustered(6, seed=11)
    path = tmp_path / "memory.sqlite"
    mem = VisualMemory(D, path=path)
    ids = mem.add(x[:4], y[:4])
    mem.remove_ids(ids[-2:])
    mem.close()
    reopened = VisualMemory(D, path=path)
    assert reopened.next_id == 4 and reopened.add(x[4:5], y[4:5]).tolist() == [4]
    knn = make_adapter("knn").fit(x[:4], y[:4], n_classes=4)
    taught = knn.memory.add(x[4:6], y[4:6])
    knn.forget(ids=taught)
    restored = type(knn).from_state_dict(knn.state_dict())
    assert restored.memory.add(x[:1], y[:1]).tolist() == [int(taught.max()) + 1]
