"""DMN and MemFlow on the real backbone's features of the packaged domains (the feature cache)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.adapters.dmn import DMN
from edge_runtime.adapters.memflow import MemFlow


def test_on_real_features_self_retrieval_pins_dmn_to_its_prior_and_the_fix_frees_it():
    """The trap, measured on photo -> clipart with DMN's own constants: reading its own slot, a
    sample sees itself at weight 1, so the dynamic memory echoes the prior; skipping the slot lets
    the memory speak (whether that helps is the fusion weights' business, chosen on dev tasks)."""
    import copy

    from edge_runtime.bench.tasks import ORDER_SEEDS, load_task

    fold = load_task("photo->clipart").folds[0]
    official = DMN(scale=100.0, weight_dynamic=1.0, write_gate=1.0, shift_momentum=None)
    base = official.fit(fold.source_x, fold.source_y, n_classes=9)
    moved = {}
    for skip in (False, True):
        fractions = []
        for seed in ORDER_SEEDS:
            dmn = copy.deepcopy(base)
            dmn.skip_own_slot = skip
            stream = fold.target_x[fold.order(seed)]
            prior = dmn.prior_proba(stream).argmax(axis=1)
            fused = np.array([dmn.adapt(row[None])[0].argmax() for row in stream])
            fractions.append(float((fused != prior).mean()))
        moved[skip] = np.mean(fractions)
    assert moved[False] < 0.15 and moved[True] > 0.2


@pytest.fixture(scope="module")
def held_frames() -> tuple:
    """40 photos of the control task's held-out half, each held in view for 100 frames with 1% jitter
    (a camera looking at one object at a time), and the photo source."""
    from edge_runtime.bench.tasks import CONTROL, load_task

    fold = load_task(CONTROL).folds[0]
    rng = np.random.default_rng(0)
    shown = rng.permutation(len(fold.target_y))[:40]
    frames = np.repeat(fold.target_x[shown], 100, axis=0)
    frames = (frames * (1 + 0.01 * rng.standard_normal(frames.shape))).astype(np.float32)
    return fold.source_x, fold.source_y, frames, np.repeat(fold.target_y[shown], 100)


def test_held_frames_do_not_become_the_statistics(held_frames, one_blas_thread) -> None:
    # No shift at all, but every object stays in view: a running mean of the frames becomes the
    # object in view, subtracting it erases its class, and reinforcement learns the object a
    # hundred times over. The novelty weights keep memflow level with the source head (here it
    # even gains); without them it drops.
    from edge_runtime.adapters.linear import Linear

    x, y, frames, labels = held_frames
    source_only = float((Linear(l2=1e-3).fit(x, y, 9).predict(frames) == labels).mean())
    accuracy = {}
    # the global running statistics' own novelty guard (the balanced slots have theirs: slot_novelty)
    for name, params in (("guarded", {"balanced": False}), ("unguarded", {"balanced": False, "shift_novelty": 0.0})):
        model = MemFlow(prior_l2=1e-3, **params).fit(x, y, 9)
        accuracy[name] = float((model.adapt(frames).argmax(axis=1) == labels).mean())
    assert accuracy["guarded"] >= source_only - 0.01, (accuracy, source_only)
    assert accuracy["unguarded"] < source_only - 0.03, (accuracy, source_only)
