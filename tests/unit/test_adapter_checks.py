"""One check suite over every adapter of the registry (river's ``check_estimator`` habit).

Each check runs for every name in ``ADAPTERS`` on small synthetic but realistic features: a
fixed-seed Gaussian mixture on the unit sphere with a common direction (pooled CNN features are
all-positive and share one), the target domain the same classes moved by a fixed offset. What an
adapter declares (``can_teach``, ``can_forget``, ``can_merge``) decides which round trips run.
Every check asserts real accuracy or exact equality: a stub that returns uniform probabilities
fails them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_runtime.adapters import ADAPTERS, Adapter, make_adapter
from edge_runtime.errors import InputError
from edge_runtime.state import read_state, write_state

N_CLASSES = 4
DIM = 32
NAMES = sorted(ADAPTERS)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def mixture(n_per_class: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows on the unit sphere around four class means that share a common direction; ``shift``
    moves every row by one fixed offset (the domain shift), class order shuffled by ``seed``."""
    layout = np.random.default_rng(1234)  # the classes and the domain offset: the same in every call
    common = np.abs(layout.normal(size=DIM))
    means = unit(1.5 * common / np.linalg.norm(common) + 0.8 * unit(layout.normal(size=(N_CLASSES, DIM))))
    offset = layout.normal(size=DIM) / np.sqrt(DIM)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(N_CLASSES), n_per_class))
    x = means[y] + 0.12 * rng.normal(size=(len(y), DIM)) + shift * offset
    return unit(x), y.astype(np.int64)


SOURCE = mixture(30, seed=0)
PROBE = mixture(25, seed=1)  # held-out source
TARGET = mixture(40, seed=2, shift=0.35)  # the shifted stream
TARGET_PROBE = mixture(25, seed=3, shift=0.35)


def as_json(params: dict) -> dict:
    return json.loads(json.dumps(params))  # a state file keeps tuples as lists


def fitted(name: str) -> Adapter:
    x, y = SOURCE
    return make_adapter(name).fit(x, y, n_classes=N_CLASSES)


def accuracy(adapter: Adapter, data: tuple[np.ndarray, np.ndarray]) -> float:
    return float((adapter.predict_proba(data[0]).argmax(axis=1) == data[1]).mean())


def stream(adapter: Adapter, x: np.ndarray) -> np.ndarray:
    """Adapt frame by frame (batch 1, as a camera delivers); the predictions made online."""
    return np.concatenate([adapter.adapt(row[None]) for row in x])


def forget_adaptation(adapter: Adapter) -> int:
    # Adapters spell unlearning differently: stored items by origin, or the whole adapted memory.
    if adapter.can_forget_items:
        return adapter.forget(origin="pseudo")
    return adapter.forget()


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread(one_blas_thread):
    yield


@pytest.mark.parametrize("name", NAMES)
def test_fit_then_predict_at_batch_one(name: str) -> None:
    adapter = fitted(name)
    proba = adapter.predict_proba(PROBE[0][:1])
    assert proba.shape == (1, N_CLASSES) and np.issubdtype(proba.dtype, np.floating)
    assert np.isfinite(proba).all() and abs(float(proba.sum()) - 1.0) < 1e-4
    assert adapter.n_classes == N_CLASSES and adapter.dim == DIM
    assert accuracy(adapter, PROBE) >= 0.9, "held-out source accuracy: the adapter does not learn its source"


@pytest.mark.parametrize("name", NAMES)
def test_adapt_online_returns_one_prediction_per_frame(name: str) -> None:
    adapter = fitted(name)
    x, y = TARGET
    online = stream(adapter, x)
    assert online.shape == (len(x), N_CLASSES) and np.isfinite(online).all()
    assert np.allclose(online.sum(axis=1), 1.0, atol=1e-4)
    assert float((online.argmax(axis=1) == y).mean()) >= 0.6, "online accuracy on the shifted stream"


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_predicts_and_adapts_the_same(name: str, tmp_path) -> None:
    adapter = fitted(name)
    x, _ = TARGET
    stream(adapter, x[:40])
    # through a state file, as a checkpoint goes (``state_dict()`` holds views of the live arrays)
    path = write_state(
        tmp_path / "state.npz",
        adapter,
        kind="checkpoint",
        model_sha256="0" * 64,
        classes=[f"c{k}" for k in range(N_CLASSES)],
        name=name,
    )
    again = read_state(path, adapter=name).adapter
    assert type(again) is type(adapter) and as_json(again.get_params()) == as_json(adapter.get_params())
    np.testing.assert_array_equal(again.predict_proba(TARGET_PROBE[0]), adapter.predict_proba(TARGET_PROBE[0]))
    np.testing.assert_array_equal(stream(again, x[40:70]), stream(adapter, x[40:70]))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_results(name: str) -> None:
    a, b = fitted(name), fitted(name)
    x, _ = TARGET
    np.testing.assert_array_equal(a.predict_proba(PROBE[0]), b.predict_proba(PROBE[0]))
    np.testing.assert_array_equal(stream(a, x[:50]), stream(b, x[:50]))
    np.testing.assert_array_equal(a.predict_proba(TARGET_PROBE[0]), b.predict_proba(TARGET_PROBE[0]))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_refused_with_a_clear_error(name: str) -> None:
    x, y = SOURCE
    with pytest.raises(InputError, match="float32"):
        make_adapter(name).fit(x.astype(np.float64), y, n_classes=N_CLASSES)
    adapter = fitted(name)
    before = adapter.predict_proba(PROBE[0])
    with pytest.raises(InputError, match=rf"\b{DIM}\b"):
        adapter.predict_proba(np.ones((1, DIM + 1), np.float32))
    with pytest.raises(InputError, match="NaN"):
        adapter.adapt(np.full((1, DIM), np.nan, np.float32))
    if adapter.can_teach:
        with pytest.raises(InputError, match="label"):
            adapter.teach(PROBE[0][:1], np.array([N_CLASSES]))
    np.testing.assert_array_equal(adapter.predict_proba(PROBE[0]), before)  # nothing was half-applied


@pytest.mark.parametrize("name", NAMES)
def test_teach_learns_labels_online(name: str) -> None:
    adapter = fitted(name)
    if not adapter.can_teach:
        with pytest.raises(NotImplementedError):
            adapter.teach(*TARGET)
        return
    x, y = TARGET
    before = accuracy(adapter, TARGET_PROBE)
    adapter.teach(x, y)
    assert accuracy(adapter, TARGET_PROBE) >= max(before, 0.9), "taught labels of the target did not help"
    again = type(adapter).from_state_dict(adapter.state_dict())
    np.testing.assert_array_equal(again.predict_proba(TARGET_PROBE[0]), adapter.predict_proba(TARGET_PROBE[0]))


@pytest.mark.parametrize("name", NAMES)
def test_forget_takes_back_what_adaptation_learned(name: str) -> None:
    adapter = fitted(name)
    if not adapter.can_forget:
        with pytest.raises(NotImplementedError):
            adapter.forget()
        return
    untouched = fitted(name)
    stream(adapter, TARGET[0])
    held = adapter.memory_usage()
    removed = forget_adaptation(adapter)
    assert removed >= 0 and (held is None or adapter.memory_usage()[0] == held[0] - removed)
    np.testing.assert_allclose(
        adapter.predict_proba(TARGET_PROBE[0]), untouched.predict_proba(TARGET_PROBE[0]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_merged_statistics_equal_teaching(name: str) -> None:
    adapter = fitted(name)
    if not adapter.can_merge:
        assert not callable(getattr(adapter, "add_statistics", None))
        return
    x, y = TARGET
    peer = fitted(name)
    delta = peer.taught_statistics(x, y)
    peer.teach(x, y)
    adapter.add_statistics(delta)
    for key, value in peer.statistics().items():
        np.testing.assert_allclose(adapter.statistics()[key], value, rtol=1e-9, err_msg=key)


# Adapters that lose accuracy over a long single-class stay today: their running statistics follow
# the class in view (DESIGN.md, "Running statistics on a camera stream"). MemFlow keeps them per
# pseudo-class with fixed class weights, each slot measured from the source mean: a stay moves the
# combined centre by up to its class's weight (1/4 here, four classes) times that class's distance
# from the mean, which costs this 4-class check 16 points. `memflow-capped` (slot_leak 0.1) and
# `memflow-class-mean` hold, at a cost on shifted data (docs/memflow.md). Strict: once one holds,
# its entry must go.
_STAYS = "issue #23: the running statistics follow the class in view"
_SHARE = "issue #23: a stay moves MemFlow's centre by its class's weight times its distance from the mean"
STAY_FAILURES: dict[str, str] = {name: _STAYS for name in ("dmn", "memflow-global", "shift", "shift+t3a", "t3a")}
STAY_FAILURES.update(
    {
        name: _SHARE
        for name in (
            "memflow",
            "memflow-no-blur",
            "memflow-no-cu",
            "memflow-no-novelty",
            "memflow-no-spike",
            "memflow-no-subspace",
            "memflow-no-temporal",
            "memflow-static",
        )
    }
)


@pytest.mark.parametrize("name", NAMES)
def test_a_long_single_class_stay_does_not_cost_accuracy(name: str, request) -> None:
    if name in STAY_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=STAY_FAILURES[name], strict=True))
    adapter = fitted(name)
    x, y = TARGET_PROBE
    before = accuracy(adapter, (x, y))
    held = mixture(300, seed=4, shift=0.35)
    one_class = held[0][held[1] == 0]  # 300 frames of class 0, one object held in view
    stream(adapter, np.repeat(one_class[:30], 20, axis=0))
    after = accuracy(adapter, (x, y))
    assert after >= before - 0.05, f"balanced accuracy {before:.2f} -> {after:.2f} after 600 frames of one class"
