"""MemFlow on real backbone features: the Numba kernels against the snntorch/torch reference, and
reinforcement against the read-only memory on a small fixed-seed task of the accuracy bench."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the reference is host-side (dev extra)

from edge_runtime.adapters.memflow import MemFlow  # noqa: E402
from edge_runtime.bench.memflow_reference import TorchMemFlow  # noqa: E402

L2 = 1e-3  # a fixed source-head strength keeps these tests fast (the default cross-validates)


@pytest.fixture(scope="module")
def domains() -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    from edge_runtime.bench.features import load_features

    photo, clipart = load_features("photo"), load_features("clipart")
    rows = np.random.default_rng(0).permutation(len(clipart.y))[:120]
    return (
        np.ascontiguousarray(photo.X, np.float32),
        photo.y,
        len(photo.classes),
        np.ascontiguousarray(clipart.X[rows], np.float32),
    )


@pytest.mark.parametrize(
    "params",
    [
        {},  # the default network, read-out and stages (the class-balanced slots)
        {"slot_reference": "class", "slot_gate": 0.9, "slot_novelty": 0.0, "shift_every": 1},
        {"balanced": False},  # the global window with its novelty ring
        {"readout": "product", "prior": False},
        {"variance": "class", "confidence": False},
        {"spiking": False, "blur": 0.0},
        {"confidence_update": False, "gate": 0.0},
        # FeatureShift's fading EMA with the spread stage, a raw-norm prior; no source pseudo-frames at all
        {
            "balanced": False,
            "shift_fade": True,
            "shift_decay": 0.95,
            "shift_spread": True,
            "shift_rank": 0,
            "prior_unit": False,
            "memory_weight": 2.0,
        },
        {"balanced": False, "shift_prior": 0.0, "gate": 0.0, "shift_every": 1, "temporal_max": 0.5},
    ],
)
def test_numba_matches_the_torch_reference(domains, params) -> None:
    x, y, k, target = domains
    model = MemFlow(**params, prior_l2=L2).fit(x, y, k)
    reference = TorchMemFlow(model)
    xn = target / np.linalg.norm(target, axis=1, keepdims=True)
    z = ((xn - model._centre_source) * model._scale).astype(np.float32)
    traces = model._traces(z)
    expected = reference.propagate(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(traces, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # The whole online sequence: predict, reinforce, refresh, shift, frame after frame.
    got = model.adapt(target)
    want = np.stack([reference.step(torch.from_numpy(row)).numpy() for row in target])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() > 0.99
    np.testing.assert_allclose(model._target, reference.target.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("readout", ["mixture", "product"])
def test_read_out_matches_the_reference_far_from_every_class_and_with_an_absent_class(domains, readout) -> None:
    # The read-out's two rare paths: a class fitted without examples (it must take no part and
    # get 0), and, for the mixture, traces so far from every class that exponentials against the
    # read-out's usual reference would all underflow (the neuron is redone against its best
    # class; at 20 deviations the mixture came out uniform, error 0.89, without that redo). The
    # product takes no exponentials there; its float32 log-likelihoods of ~-200 are not what this
    # checks.
    from edge_runtime.kernels import memflow as K

    x, y, k, target = domains
    model = MemFlow(readout=readout, prior=False, prior_l2=L2, balanced=False).fit(x, y, k + 1)
    reference = TorchMemFlow(model)
    xn = target / np.linalg.norm(target, axis=1, keepdims=True)
    near = model._traces((xn - model._centre_source) * model._scale)
    far = near + np.float32(20.0) * np.sqrt(model._tv).astype(np.float32)
    w = model._work
    for traces in (near, far) if readout == "mixture" else (near,):
        got = np.zeros((len(traces), k + 1), np.float32)
        for r, m in enumerate(traces):
            K.retrieve(
                m,
                model._mu,
                model._hiv,
                model._lnorm,
                False,
                model._present,
                model._alive,
                readout == "product",
                True,
                float(model._tau[0]),
                w.row,
                w.part,
                w.vote,
                got[r],
            )
        want = reference.retrieve(torch.from_numpy(traces)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert not got[:, k].any()


@pytest.mark.xfail(
    strict=True,
    reason="issue #23: with the class-balanced slots (the default since session 10) reinforcement trails the "
    "read-only memory on photo->emoji's shuffled streams (196 against 199 correct of 612); with the global "
    "window and its novelty ring it tied (265 against 265), before the ring it led (286 against 285)",
)
def test_reinforcement_beats_the_read_only_memory_on_a_bench_task() -> None:
    from edge_runtime.bench.tasks import ORDER_SEEDS, load_task

    # photo->emoji, the bench's widest gap, over its three seeded stream orders. Reinforcement is
    # gated to be safe rather than bold, so its margin is a few frames (96/95, 97/97 and 99/96
    # correct of 204 when this was written): never behind in any order, ahead in total.
    task = load_task("photo->emoji")
    correct = np.zeros((len(ORDER_SEEDS), 2), np.int64)
    for o, seed in enumerate(ORDER_SEEDS):
        for fold in task.folds:
            order = fold.order(seed)
            for r, reinforce in enumerate((True, False)):
                model = MemFlow(reinforce=reinforce, prior_l2=L2).fit(fold.source_x, fold.source_y, task.n_classes)
                predicted = model.adapt(fold.target_x[order]).argmax(axis=1)
                correct[o, r] += int((predicted == fold.target_y[order]).sum())
    assert (correct[:, 0] >= correct[:, 1]).all()
    assert correct[:, 0].sum() > correct[:, 1].sum()
