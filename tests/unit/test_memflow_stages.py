"""MemFlow's alignment and temporal stages: each kernel against plain numpy, and on real features
the guard that keeps a camera's held frames from becoming the statistics."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.kernels import align
from edge_runtime.kernels import temporal as T

D, R = 24, 5


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_stage_centre_spread_and_variance_match_numpy(rng) -> None:
    mu_s = rng.normal(size=D).astype(np.float32)
    var_s = rng.uniform(0.5, 2.0, D)
    frames = rng.normal(1.0, 0.5, (30, D))
    weights = rng.uniform(0.2, 1.0, 30)
    gamma, prior = 0.97, 20.0
    ages = gamma ** np.arange(29, -1, -1) * weights
    sums, squares, weight = ages @ frames, ages @ frames**2, ages.sum()
    centre, factor = np.empty(D, np.float32), np.empty(D, np.float32)
    variance = align.stage(
        mu_s, np.ones(D, np.float32), var_s, sums, squares, weight, prior, True, True, centre, factor
    )
    mean = (prior * mu_s + sums) / (prior + weight)
    var_t = np.maximum(
        (prior * (var_s + mu_s.astype(np.float64) ** 2) + squares) / (prior + weight) - mean**2, var_s / 16
    )
    np.testing.assert_allclose(centre, mean, rtol=1e-6)
    np.testing.assert_allclose(factor, np.sqrt(np.clip(var_s / var_t, 1 / 16, None)), rtol=1e-5)
    assert variance == pytest.approx(var_t.sum(), rel=1e-9)
    # Off: the source centre and scale, and the source's variance.
    variance = align.stage(
        mu_s, np.full(D, 2.0, np.float32), var_s, sums, squares, weight, prior, False, True, centre, factor
    )
    np.testing.assert_array_equal(centre, mu_s)
    assert (factor == 2.0).all() and variance == pytest.approx(var_s.sum())


def test_novelty_weighs_a_repeated_frame_down_and_a_new_one_fully(rng) -> None:
    z = rng.normal(size=D).astype(np.float32)
    recent = np.zeros(D, np.float32)
    assert align.novelty(z, recent, 0, 0.25, 10.0) == 1.0 and np.array_equal(recent, z)  # first frame
    near = (z + 0.01).astype(np.float32)
    gap = float(((near - recent) ** 2).sum())
    w = align.novelty(near, recent, 1, 0.25, 10.0)
    assert w == pytest.approx(gap / 2.5)
    np.testing.assert_allclose(recent, 0.8 * z + 0.2 * near, rtol=1e-6)
    assert align.novelty(-near, recent, 2, 0.25, 10.0) == 1.0  # far from the last frames
    assert align.novelty(near, recent.copy(), 3, 0.0, 10.0) == 1.0  # rho 0: every frame counts


def test_a_frame_seen_again_in_the_ring_weighs_nothing_where_the_short_average_misses_it(rng) -> None:
    # A camera's stay, as the bench deals it: a dozen views of one object in a shuffled order. The
    # short average of the last few frames forgets a view after ~5 frames and weighs it afresh; the
    # ring of the last M projections recognises every view seen before.
    basis = np.linalg.qr(rng.normal(size=(D, R)))[0].T.astype(np.float32)
    centre = np.zeros(D, np.float32)
    views = rng.normal(size=(12, D)).astype(np.float32)
    order = np.concatenate([np.arange(12), rng.integers(0, 12, 188)])
    stay = views[order]
    seen = np.array([t > 0 and order[t] in order[max(t - 32, 0) : t] for t in range(len(order))])
    ring, count, y = np.zeros((32, R)), np.zeros(1, np.int64), np.zeros(R)
    recent = np.zeros(D, np.float32)
    variance = float(((views @ basis.T) ** 2).sum(axis=1).mean())
    in_ring = []
    for z in stay:
        align.source_projection(z, centre, basis, y)
        in_ring.append(align.ring_novelty(y, ring, count, 0.25, variance))
    averaged = [align.novelty(z, recent, t, 0.25, float((views**2).sum(axis=1).mean())) for t, z in enumerate(stay)]
    np.testing.assert_allclose(y, basis.astype(np.float64) @ stay[-1], rtol=1e-5)
    assert count[0] == len(stay)
    in_ring, averaged = np.array(in_ring), np.array(averaged)
    assert in_ring[~seen].min() > 0.5  # a view not among the last 32 frames counts
    assert in_ring[seen].max() == pytest.approx(0.0, abs=1e-9) and seen.sum() > 150  # one seen again does not
    assert averaged[seen].sum() > 0.5 * seen.sum()  # the short average weighs most of those as new


def test_learn_folds_the_frame_into_every_sum(rng) -> None:
    mu_s = rng.normal(size=D).astype(np.float32)
    basis = np.linalg.qr(rng.normal(size=(D, R)))[0].T.astype(np.float32)
    sums, squares, weight = rng.normal(size=D), rng.uniform(1, 2, D), np.array([3.0])
    proj_sum, proj_sq = rng.normal(size=R), np.eye(R)
    want = [a.copy() for a in (sums, squares, weight, proj_sum, proj_sq)]
    z = rng.normal(size=D).astype(np.float32)
    y = np.empty(R)
    align.source_projection(z, mu_s, basis, y)
    np.testing.assert_allclose(y, basis.astype(np.float64) @ (z.astype(np.float64) - mu_s), rtol=1e-6)
    align.learn(z, y, 0.5, 0.9, sums, squares, weight, proj_sum, proj_sq)
    np.testing.assert_allclose(sums, 0.9 * want[0] + 0.5 * z, rtol=1e-12)
    np.testing.assert_allclose(squares, 0.9 * want[1] + 0.5 * z.astype(np.float64) ** 2, rtol=1e-12)
    assert weight[0] == pytest.approx(0.9 * 3.0 + 0.5)
    np.testing.assert_allclose(proj_sum, 0.9 * want[3] + 0.5 * y, rtol=1e-6)
    np.testing.assert_allclose(proj_sq, 0.9 * want[4] + 0.5 * np.outer(y, y), rtol=1e-6)


def test_the_subspace_map_gives_the_target_the_source_covariance(rng) -> None:
    # Target frames with a covariance of their own in the subspace: once they outweigh the source
    # pseudo-frames, A C_t A^T is the source's diag(lambda), and it is A - I that ``mix`` holds.
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
    mixing = rng.normal(size=(R, R))
    y = rng.normal(size=(4000, R)) @ mixing.T + 0.3
    proj_sum, proj_sq = y.sum(axis=0), y.T @ y
    mix = np.empty((R, R), np.float32)
    align.refresh_mix(lam, proj_sum, proj_sq, float(len(y)), 20.0, mix)
    total = 20.0 + len(y)
    m = proj_sum / total
    cov = (proj_sq + 20.0 * np.diag(lam)) / total - np.outer(m, m)
    a = mix + np.eye(R)
    np.testing.assert_allclose(a @ cov @ a.T, np.diag(lam), rtol=1e-4, atol=1e-5)
    align.refresh_mix(lam, proj_sum, proj_sq, 0.0, 20.0, mix)  # nothing seen: the identity map
    assert not mix.any()


def test_apply_matches_numpy(rng) -> None:
    basis = np.linalg.qr(rng.normal(size=(D, R)))[0].T.astype(np.float32)
    mix = rng.normal(0, 0.2, (R, R)).astype(np.float32)
    centre, factor = rng.normal(size=D).astype(np.float32), rng.uniform(0.5, 2, D).astype(np.float32)
    z = rng.normal(size=D).astype(np.float32)
    c = z.astype(np.float64) - centre
    want = (c + basis.T @ (mix @ (basis @ c))) * factor
    got = z.copy()
    align.apply(got, centre, factor, basis, mix, np.empty(R, np.float32), np.empty(R, np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _numpy_filter(posteriors: np.ndarray, pi: np.ndarray, lag: int, gamma: float, most: float) -> np.ndarray:
    """The temporal filter written plainly: moments from the whole history, then the HMM step."""
    out, belief = [], None
    for t, p in enumerate(posteriors):

        def agreement(l: int) -> tuple[float, float]:  # over frames u < t, pairs (u, u - l)
            u = np.arange(l, t)
            w = gamma ** (t - 1 - u.astype(np.float64))
            return float(w @ (posteriors[u] * posteriors[u - l]).sum(1)), float(w.sum())

        s = 0.0
        (a, n1), (b, n_lag) = agreement(1), agreement(lag)
        if n1 and n_lag:
            u = np.arange(1, t)
            c = float(gamma ** (t - 1 - u.astype(np.float64)) @ (posteriors[u] ** 2).sum(1)) / n1
            a, b = a / n1, b / n_lag
            if c - b > 1e-9:
                s = (a - b) / (c - b)
                a2, n2 = agreement(2)
                if n2 and a - b > 0:
                    s = min((a2 / n2 - b) / (a - b), 3 * s)
                s = float(np.clip(s * n_lag / (n_lag + 10.0), 0.0, most))
        belief = p.copy() if t == 0 else p / pi * (s * belief + (1 - s) * pi)
        belief /= belief.sum()
        out.append(belief)
    return np.array(out)


def _stream(rng: np.random.Generator, labels: np.ndarray, k: int) -> np.ndarray:
    """Posteriors of a classifier that shows a wrong class on a quarter of the frames."""
    wrong = (labels + rng.integers(1, k, len(labels))) % k
    shown = np.where(rng.random(len(labels)) < 0.25, wrong, labels)
    p = np.full((len(labels), k), 0.5 / (k - 1))
    p[np.arange(len(labels)), shown] = 0.5
    return p.astype(np.float32)


@pytest.mark.parametrize("held", [1, 20, "drift"])
def test_temporal_filter_matches_numpy_and_stands_aside_on_a_shuffled_stream(rng, held) -> None:
    k = 6
    if held == "drift":  # shuffled, but the class mix changes half way (a new scene, a new domain)
        labels = np.concatenate([rng.choice(3, 600), 3 + rng.choice(3, 600)])
    else:
        labels = np.repeat(rng.integers(0, k, 1200 // held), held)
    posteriors = _stream(rng, labels, k)
    pi = np.full(k, 1.0 / k)
    belief, history = np.zeros(k), np.zeros((16, k), np.float32)
    moments, frames = np.zeros(T.N_MOMENTS), np.zeros(1, np.int64)
    got = []
    for p in posteriors:
        p = p.copy()
        T.step(p, pi, belief, history, moments, frames, 0.999, 10.0, 0.95)
        got.append(p)
    want = _numpy_filter(posteriors.astype(np.float64), pi, 16, 0.999, 0.95)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-4, atol=1e-6)
    s = T.stay(moments, 10.0, 0.95)
    accuracy = lambda q: float((np.asarray(q).argmax(1) == labels).mean())  # noqa: E731
    if held != 20:  # shuffled: nothing to smooth, and the filter stands aside
        assert s < 0.05 and accuracy(got) == accuracy(posteriors)
    else:  # an object held for 20 frames (stay probability 0.95): smoothed
        assert s > 0.8 and accuracy(got) > accuracy(posteriors) + 0.08


@pytest.mark.parametrize("balanced", [True, False])
def test_the_compiled_kernel_called_directly_does_what_the_dispatcher_does(rng, balanced) -> None:
    # ``adapt`` calls the compiled kernel without numba's per-call type resolution once it knows
    # it; a read-only frame always goes through the dispatcher. Both must leave the same state.
    from edge_runtime.adapters.memflow import MemFlow

    means = rng.normal(size=(3, 64)).astype(np.float32)
    y = np.arange(90) % 3
    x = (means[y] + 0.5 * rng.normal(size=(90, 64))).astype(np.float32)
    stream = (means[rng.integers(0, 3, 60)] + 0.5 * rng.normal(size=(60, 64)) + 0.3).astype(np.float32)
    direct, dispatched = (MemFlow(n_hub=8, n_bridge=32, in_degree=4, balanced=balanced).fit(x, y) for _ in "ab")
    got, want = [], []
    for row in stream:
        got.append(direct.adapt(row[None].copy()))
        frozen = row[None].copy()
        frozen.flags.writeable = False
        want.append(dispatched.adapt(frozen))
    assert direct._entry is not None and dispatched._entry is None
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    for name, value in direct._arrays().items():
        np.testing.assert_array_equal(value, dispatched._arrays()[name], err_msg=name)


def test_a_state_written_before_slot_reference_keeps_its_slots(rng) -> None:
    # States of the class-mean slots (session 8) have no ``slot_reference``: they load as "class"
    # and go on predicting as they did; a reference that does not exist is refused by name.
    from edge_runtime.adapters.memflow import MemFlow
    from edge_runtime.errors import InputError

    means = rng.normal(size=(3, 64)).astype(np.float32)
    y = np.arange(90) % 3
    x = (means[y] + 0.5 * rng.normal(size=(90, 64))).astype(np.float32)
    stream = (means[rng.integers(0, 3, 80)] + 0.5 * rng.normal(size=(80, 64)) + 0.3).astype(np.float32)
    old = MemFlow(n_hub=8, n_bridge=32, in_degree=4, slot_reference="class", slot_gate=0.9).fit(x, y)
    old.adapt(stream[:40])
    state = old.state_dict()
    del state["params"]["slot_reference"]
    loaded = MemFlow.from_state_dict(state)
    assert loaded.slot_reference == "class"
    np.testing.assert_array_equal(loaded.adapt(stream[40:]), old.adapt(stream[40:]))
    with pytest.raises(InputError, match="slot_reference"):
        MemFlow(slot_reference="mean").fit(x, y)
