"""The camera orders of the accuracy bench (issue 23): long stays, long Dirichlet slots, frames that
repeat within a stay; every generator reproduces from its seed."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.bench.tasks import (
    ALL_ORDERS,
    CAMERA_ORDERS,
    CONTROLS,
    LONG_STAY,
    SLOT_FRAMES,
    STREAM_FRAMES,
    order_profile,
    stay_lengths,
    stream_order,
)

LABELS = np.repeat(np.arange(9), 12)  # a photo half: ~12 frames per class


@pytest.mark.parametrize("kind", ALL_ORDERS)
def test_orders_reproduce_from_the_seed(kind):
    first = stream_order(LABELS, 3, kind)
    np.testing.assert_array_equal(first, stream_order(LABELS, 3, kind))
    assert not np.array_equal(first, stream_order(LABELS, 4, kind))
    # stay lengths and the class histogram too
    again = order_profile(LABELS, stream_order(LABELS, 3, kind))
    assert order_profile(LABELS, first) == again
    np.testing.assert_array_equal(
        np.bincount(LABELS[first], minlength=9), np.bincount(LABELS[stream_order(LABELS, 3, kind)], minlength=9)
    )


@pytest.mark.parametrize("seed", range(5))
def test_dwell_has_long_stays_with_a_long_tail(seed):
    order = stream_order(LABELS, seed, "dwell")
    profile = order_profile(LABELS, order)
    assert profile["frames"] == STREAM_FRAMES
    assert profile["stays_1500"] >= 1 and profile["longest_stay"] >= LONG_STAY[0]
    assert 150 <= profile["mean_stay"] <= 500
    lengths = stay_lengths(seed, STREAM_FRAMES)
    assert lengths.sum() == STREAM_FRAMES and (lengths >= 1).all()
    # every row index is a row of the target; within a stay frames repeat only after every frame
    # of the class has been shown
    assert order.min() >= 0 and order.max() < len(LABELS)
    y = LABELS[order]
    start = 0
    for end in np.flatnonzero(np.diff(y) != 0).tolist() + [len(y) - 1]:
        stay = order[start : end + 1]
        first = stay[:12]
        assert len(np.unique(first)) == len(first) or len(stay) > 12 or start > 0
        start = end + 1


def test_stay_lengths_have_mean_250_over_many_streams():
    lengths = np.concatenate([stay_lengths(s, 50_000) for s in range(20)])
    assert 200 <= lengths.mean() <= 300
    assert (lengths >= 1500).mean() > 0.02


@pytest.mark.parametrize("seed", range(3))
def test_dirichlet_long_has_long_slots_and_the_target_mix(seed):
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    order = stream_order(labels, seed, "dirichlet-long")
    assert len(order) == STREAM_FRAMES
    counts = np.bincount(labels[order], minlength=4)
    np.testing.assert_array_equal(counts, [500, 1000, 1500, 2000])  # the target's class shares
    profile = order_profile(labels, order)
    assert profile["mean_stay"] >= 50  # slots of 250 frames with concentration 0.1: long blocks
    assert STREAM_FRAMES // SLOT_FRAMES == 20


def test_frames_repeat_evenly_within_a_class():
    order = stream_order(LABELS, 0, "dirichlet-long")
    shows = np.bincount(order, minlength=len(LABELS))
    for k in range(9):
        s = shows[LABELS == k]
        assert s.max() - s.min() <= 1  # dealt from a deck, reshuffled when it runs out


def test_camera_stream_length_is_a_parameter():
    for kind in CAMERA_ORDERS:
        assert len(stream_order(LABELS, 0, kind, frames=1500)) == 1500


def test_controls():
    assert CONTROLS == ("photo->photo", "mnist->mnist")
