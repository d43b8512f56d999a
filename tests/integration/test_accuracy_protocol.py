"""The accuracy bench: task construction, the strictly-online protocol, and a quick real run."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from edge_runtime.adapters import ADAPTERS
from edge_runtime.adapters.linear import Linear
from edge_runtime.bench import accuracy
from edge_runtime.bench.tasks import (
    ALL_ORDERS,
    BENCH_TASKS,
    CONTROL,
    DEV_TASKS,
    ORDERS,
    SHIFTED_TASKS,
    load_task,
    photo_halves,
    stream_order,
    subsample,
)
from edge_runtime.errors import InputError

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def gaussian_noise():
    return load_task("photo->photo-c/gaussian_noise")


def test_task_names_match_the_issue_and_dev_is_held_out():
    assert SHIFTED_TASKS[:4] == ("photo->clipart", "photo->emoji", "clipart->photo", "mnist->uci-digits")
    assert len([t for t in SHIFTED_TASKS if t.startswith("photo->photo-c/")]) == 10
    assert CONTROL == "photo->photo" and CONTROL in BENCH_TASKS and CONTROL not in SHIFTED_TASKS
    assert DEV_TASKS and not set(DEV_TASKS) & set(BENCH_TASKS)
    with pytest.raises(InputError):
        load_task("photo->nowhere")


def test_photo_halves_are_disjoint_stratified_and_fixed(gaussian_noise):
    y = np.concatenate([gaussian_noise.folds[0].source_y, gaussian_noise.folds[1].source_y])
    a, b = photo_halves(y)
    assert not set(a) & set(b) and len(a) + len(b) == len(y)
    counts = np.bincount(y[a], minlength=9) - np.bincount(y[b], minlength=9)
    assert np.abs(counts).max() <= 1
    np.testing.assert_array_equal(photo_halves(y)[0], a)


def test_no_target_image_has_its_clean_copy_in_the_source(gaussian_noise):
    clean = load_task(CONTROL)
    assert len(gaussian_noise.folds) == 2
    for fold, control_fold in zip(gaussian_noise.folds, clean.folds):
        assert not set(fold.source_ids) & set(fold.target_ids)
        assert set(fold.source_ids) | set(fold.target_ids) == set(clean.folds[0].source_ids) | set(
            clean.folds[1].source_ids
        )
        # Same split as the control, but the target rows are the corrupted images' features.
        assert fold.target_ids == control_fold.target_ids
        np.testing.assert_array_equal(fold.source_x, control_fold.source_x)
        assert not np.allclose(fold.target_x, control_fold.target_x)
    a, b = gaussian_noise.folds
    assert a.source_ids == b.target_ids and b.source_ids == a.target_ids


def test_stream_orders_are_seeded_permutations(gaussian_noise):
    fold = gaussian_noise.folds[0]
    orders = [fold.order(seed) for seed in (0, 1, 2)]
    for order in orders:
        assert sorted(order) == list(range(len(fold.target_y)))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(fold.order(0), orders[0])


def _windows(labels: np.ndarray, width: int) -> np.ndarray:
    """Share of the most frequent class in each window of ``width`` consecutive frames."""
    return np.array(
        [np.bincount(labels[i : i + width]).max() / width for i in range(0, len(labels) - width + 1, width)]
    )


def _run_lengths(labels: np.ndarray) -> np.ndarray:
    cuts = np.flatnonzero(np.diff(labels) != 0) + 1
    return np.diff(np.concatenate([[0], cuts, [len(labels)]]))


@pytest.mark.parametrize("kind", ORDERS)
def test_every_order_kind_is_a_seeded_permutation(kind):
    labels = np.repeat(np.arange(9), [67, 35, 7, 9, 26, 18, 24, 18, 11])  # the photo domain's counts
    orders = [stream_order(labels, seed, kind) for seed in (0, 1)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(len(labels)))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(stream_order(labels, 0, kind), orders[0])


def test_iid_order_is_the_shuffle_earlier_benches_used():
    labels = np.arange(50) % 5
    np.testing.assert_array_equal(stream_order(labels, 2, "iid"), np.random.default_rng([2, 50]).permutation(50))


def test_camera_like_orders_keep_one_class_in_view():
    labels = np.repeat(np.arange(9), 200)
    iid, dirichlet, runs = (labels[stream_order(labels, 0, kind)] for kind in ORDERS)
    # In windows of 20 frames a shuffle shows the majority class ~25% of the time; the camera
    # orders mostly show one class.
    assert _windows(iid, 20).mean() < 0.4
    assert _windows(dirichlet, 20).mean() > 0.8
    assert _windows(runs, 20).mean() > 0.6
    lengths = _run_lengths(runs)
    assert 15 < lengths.mean() < 25  # geometric runs of mean 20 (two runs of a class never touch)
    # Dirichlet(0.1) over 9 slots: each class arrives in one or two long blocks, so the class
    # mix of the stream's ninths is far from the uniform one a shuffle gives.
    ninths = np.array([np.bincount(part, minlength=9) for part in np.array_split(dirichlet, 9)])
    assert (ninths.max(axis=1) / ninths.sum(axis=1)).mean() > 0.5
    assert _run_lengths(dirichlet).mean() > 3 * _run_lengths(iid).mean()


def test_unknown_order_kind_is_refused_by_name():
    with pytest.raises(InputError, match="sideways"):
        stream_order(np.arange(4), 0, "sideways")


class Recorder(Linear):
    """An honest head that records exactly what the bench hands it."""

    name = "recorder"
    seen: list = []

    def adapt(self, features):
        Recorder.seen.append(features)
        return super().adapt(features)


def test_run_stream_hands_over_one_copied_row_at_a_time(gaussian_noise):
    fold = gaussian_noise.folds[0]
    head = Recorder(l2=1e-3).fit(fold.source_x, fold.source_y, n_classes=gaussian_noise.n_classes)
    Recorder.seen = []
    stream = fold.target_x[fold.order(0)]
    predictions, seconds = accuracy.run_stream(head, stream)
    assert len(Recorder.seen) == len(stream) and seconds > 0
    for i, row in enumerate(Recorder.seen):
        assert row.shape == (1, stream.shape[1])
        np.testing.assert_array_equal(row[0], stream[i])
        assert not np.shares_memory(row, stream)  # no view through which to read ahead
    np.testing.assert_array_equal(predictions, head.predict(stream))


class LabelHungry(Linear):
    """Cheats whenever it is given labels: returns the true class with certainty."""

    name = "label-hungry"

    def adapt(self, features, labels=None, **extra):
        if labels is None:
            labels = extra.get("y", extra.get("target"))
        if labels is not None:
            return np.eye(self.n_classes, dtype=np.float32)[np.asarray(labels)]
        return super().adapt(features)


def test_a_cheating_adapter_gains_nothing(gaussian_noise, monkeypatch):
    monkeypatch.setitem(ADAPTERS, "label-hungry", lambda **p: LabelHungry(**p))
    task = subsample(gaussian_noise, max_target=60)
    runner = accuracy.Runner((0, 1))
    honest = runner.evaluate(accuracy.parse_method("linear@l2=0.001"), task)
    cheat = runner.evaluate(accuracy.parse_method("label-hungry@l2=0.001"), task)
    assert cheat["accuracy"] == honest["accuracy"] < 1.0


def test_each_stream_starts_from_the_same_fitted_state(gaussian_noise):
    task = subsample(gaussian_noise, max_target=60)
    spec = accuracy.parse_method("t3a@l2=0.001")
    first = accuracy.Runner((0, 1)).evaluate(spec, task)
    runner = accuracy.Runner((1, 0))  # same orders, reversed: a leaked state would change scores
    second = runner.evaluate(spec, task)
    assert first["accuracy"] == pytest.approx(second["accuracy"])
    assert first["accuracy_spread"] == pytest.approx(second["accuracy_spread"])


def test_method_specs_are_checked():
    spec = accuracy.parse_method('shift@inner="t3a"@momentum=0.9')
    assert (spec.name, spec.params) == ("shift", {"inner": "t3a", "momentum": 0.9})
    with pytest.raises(InputError):
        accuracy.parse_method("no-such-method")
    with pytest.raises(InputError):
        accuracy.parse_method("linear@l2")
    assert accuracy.parse_method("memflow@prior=false").params == {"prior": False}
    with pytest.raises(InputError, match="prior=false"):
        accuracy.parse_method("memflow@prior=False")  # Python's spelling would arrive as a truthy string


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``edgert bench accuracy --quick`` over every bench task with the linear head, on real features."""
    out = tmp_path_factory.mktemp("accuracy")
    parser = argparse.ArgumentParser()
    accuracy.configure(parser)
    args = parser.parse_args(
        [
            "--quick",
            "--tasks",
            "bench",
            "--methods",
            "linear,shift",
            "--json",
            str(out / "a.json"),
            "--markdown",
            str(out / "a.md"),
            "--png",
            str(out / "a.png"),
        ]
    )
    assert args.main(args) == 0
    return out


def test_quick_run_writes_the_documented_outputs(quick_run):
    payload = json.loads((quick_run / "a.json").read_text())
    assert list(payload["tasks"]) == list(BENCH_TASKS)
    for task, row in payload["tasks"].items():
        assert set(row) == {"linear", "shift"}
        for cell in row.values():
            assert set(cell) == {"accuracy", "accuracy_spread", "adapt_us_per_sample", "orders"}
            assert 0.0 <= cell["accuracy"] <= 1.0 and cell["accuracy_spread"] >= 0 and cell["adapt_us_per_sample"] > 0
            assert list(cell["orders"]) == list(ALL_ORDERS)
            assert cell["accuracy"] == pytest.approx(np.mean([o["accuracy"] for o in cell["orders"].values()]))
    means = payload["summary"]["linear"]
    assert means["n_tasks"] == len(SHIFTED_TASKS)
    assert means["mean_shifted_accuracy"] == pytest.approx(
        np.mean([payload["tasks"][t]["linear"]["accuracy"] for t in SHIFTED_TASKS])
    )
    for kind in ALL_ORDERS:
        per_task = {t: payload["tasks"][t]["shift"]["orders"][kind]["accuracy"] for t in SHIFTED_TASKS}
        assert payload["summary"]["shift"]["orders"][kind]["worst_task"] == min(per_task, key=per_task.get)
    # The source head never sees a target frame learn anything: every permutation order gives it
    # the same score (the camera orders repeat frames, so their mix of frames differs).
    for row in payload["tasks"].values():
        assert len({round(row["linear"]["orders"][o]["accuracy"], 9) for o in ORDERS}) == 1
    table = (quick_run / "a.md").read_text()
    assert "mean over shifted tasks" in table and "photo->photo-c/fog" in table
    assert "dirichlet: worst task" in table and "runs: worst vs linear" in table
    assert (quick_run / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_is_well_above_chance_and_the_shift_is_real(quick_run):
    payload = json.loads((quick_run / "a.json").read_text())
    linear = {t: row["linear"]["accuracy"] for t, row in payload["tasks"].items()}
    for task, acc in linear.items():
        # "Well above chance": more than 3 standard errors of a chance-level classifier above
        # chance, for the shortest quick stream (every quick task streams at least 100 targets).
        chance = 1 / 10 if "digits" in task else 1 / 9
        assert acc > chance + 3 * np.sqrt(chance * (1 - chance) / 100), (task, acc)
    shifted = np.mean([linear[t] for t in SHIFTED_TASKS])
    assert linear[CONTROL] > shifted + 0.1
