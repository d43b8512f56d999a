"""kNN predict through ``kernels.knn.rank_vote``: the same neighbours and votes, bit for bit, as the
exact search + ``vote`` path, on real features where cached and on a seeded mixture, with ties,
removals (rows moved) and k beyond the memory; and the interleaved rescore is the sequential sum."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.adapters.knn import KNN
from edge_runtime.errors import InputError
from edge_runtime.features import as_features
from edge_runtime.kernels.knn import rescore
from edge_runtime.memory.visual_memory import VisualMemory, vote


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def datasets() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, int]]:
    from edge_runtime.bench.knn import mixture

    out = []
    try:
        from edge_runtime.bench.features import features_path, load_features

        if all(features_path(d).is_file() for d in ("photo", "clipart")):
            src, tgt = load_features("photo", progress=False), load_features("clipart", progress=False)
            out.append(
                (
                    "photo->clipart features",
                    unit(np.asarray(src.X)),
                    np.asarray(src.y, np.int64),
                    unit(np.asarray(tgt.X)),
                    9,
                )
            )
    except Exception:  # noqa: BLE001 - no export or no cache: the mixture below still runs
        pass
    x, y, q = mixture(3000, 200, seed=3)
    out.append(("seeded mixture", unit(x), y, unit(q), 10))
    return out


def search_and_vote(memory: VisualMemory, queries: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    distances, ids = memory.search(queries, k)
    return vote(memory.labels_of(ids), distances, n_classes)[0]


@pytest.mark.parametrize("name,x,y,q,n_classes", datasets(), ids=[d[0] for d in datasets()])
def test_rank_vote_equals_search_and_vote(name, x, y, q, n_classes):
    memory = VisualMemory(x.shape[1])
    memory.add(x, y)
    memory.add(x[:25], y[:25])  # exact duplicates: equal scores, ties broken by id
    memory.add(0.5 * (x[30:40] + x[40:50]), y[30:40])
    for k in (1, 3, 10, 40, len(x) + 100):
        assert np.array_equal(memory.predict_proba(q, n_classes, k=k), search_and_vote(memory, q, n_classes, k))
        for i in range(0, len(q), 17):  # one query at a time, as on the frame path
            assert np.array_equal(
                memory.predict_proba(q[i], n_classes, k=k), search_and_vote(memory, q[i : i + 1], n_classes, k)
            )
    memory.remove_ids(np.arange(0, len(x), 7))  # swap-removes move rows: answers must not depend on it
    assert np.array_equal(memory.predict_proba(q, n_classes, k=10), search_and_vote(memory, q, n_classes, 10))


def test_knn_adapter_answers_as_before():
    name, x, y, q, n_classes = datasets()[0]
    knn = KNN().fit(x, y, n_classes=n_classes)
    # the path predict_proba took: its own check of the input, then the memory's search (which
    # checks and normalises once more) and the vote
    old = search_and_vote(knn.memory, as_features(q), n_classes, knn.k).astype(np.float32)
    assert np.array_equal(knn.predict_proba(q), old)
    assert np.array_equal(np.concatenate([knn.predict_proba(r) for r in q[:50]]), old[:50])
    assert np.array_equal(knn.adapt(q[:20]), old[:20])
    soft = KNN(voting="softmax").fit(x, y, n_classes=n_classes)  # not the kernel's: the unchanged path
    d, ids = soft.memory.search(as_features(q), soft.k)
    expected = vote(soft.memory.labels_of(ids), d, n_classes, "softmax")[0].astype(np.float32)
    assert np.array_equal(soft.predict_proba(q), expected)


def test_rescore_is_the_sequential_float64_sum():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(40, 301)).astype(np.float32)
    queries = rng.normal(size=(3, 301)).astype(np.float32)
    rows = rng.integers(-1, 40, size=(3, 11)).astype(np.int64)
    out = np.empty(rows.shape)
    rescore(matrix, rows, queries, out)
    for qi in range(3):
        for j in range(11):
            if rows[qi, j] < 0:
                assert out[qi, j] == -np.inf
                continue
            acc = 0.0
            for a, b in zip(matrix[rows[qi, j]].astype(np.float64), queries[qi].astype(np.float64)):
                acc += a * b
            assert out[qi, j] == acc


def test_a_label_beyond_the_classes_is_refused():
    memory = VisualMemory(4)
    memory.add(unit(np.eye(4, dtype=np.float32)), [0, 1, 2, 7])
    with pytest.raises(InputError, match="label 7"):
        memory.predict_proba(np.array([0, 0, 0, 1], np.float32), 3, k=4)
