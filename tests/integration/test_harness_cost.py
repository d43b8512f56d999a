"""The cost bench on a handful of real images: both sides (Tent and the gradient-free heads) measured.

The assertions are about what was measured, never about what the ratio is: speed is a benchmark.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_runtime.adapters import ADAPTERS  # noqa: E402
from edge_runtime.bench import cost  # noqa: E402


@pytest.fixture(scope="module")
def measured() -> dict:
    torch.manual_seed(0)
    result = cost.run_cost(samples=16, source_per_class=5, rounds=1, seed=0)
    result["accuracy"] = cost.tent_accuracy(["photo->clipart"], target_limit=16, source_per_class=5, seed=0)
    return result


def test_both_sides_are_measured(measured):
    per_instance = measured["per_instance_ms"]
    for method in ("tent-b1", "tent-b16", "retrain-last-layer"):
        assert method in per_instance and math.isfinite(per_instance[method])
    gradient_free = [m for m in cost.GRADIENT_FREE if m in ADAPTERS]
    assert gradient_free, "no gradient-free adapter is registered: nothing to compare Tent with"
    for method in gradient_free:
        assert per_instance[method] > 0
        assert measured["ratio_to_tent"][method] == pytest.approx(per_instance[method] / per_instance["tent-b1"])
    assert set(measured["skipped"]) == {m for m in cost.GRADIENT_FREE if m not in ADAPTERS}
    # Every instance of every method was timed: 16 at batch 1, one batch of 16.
    assert measured["timings"]["tent-b1"]["measurements"] == 16
    assert measured["timings"]["tent-b16"]["measurements"] == 1
    assert measured["timings"]["forward-b1"]["measurements"] == 16
    for method in gradient_free:
        assert measured["timings"][method]["measurements"] == 16
    assert measured["total_per_instance_ms"]["tent-b1"] > measured["shared_forward_ms"]["b1"]


def test_peak_memory_says_how_it_was_measured(measured):
    memory = measured["peak_memory"]
    tent = memory["tent-b1"]["torch"]
    # Backprop through the backbone keeps activations; the BN affine gradients are 2 x channels floats.
    assert tent["saved_activations"] > 0 and tent["gradients"] > 0
    assert memory["tent-b16"]["torch"]["saved_activations"] > tent["saved_activations"]
    for method in (m for m in cost.GRADIENT_FREE if m in ADAPTERS):
        assert "tracemalloc" in memory[method]["traced"]["how"]
        assert memory[method]["state_bytes"] > 0
    assert all("how" in entry["rss"] for entry in memory.values())


def test_tent_accuracy_runs_on_images_with_the_same_stream_for_every_method(measured):
    acc = measured["accuracy"]
    row = acc["tasks"]["photo->clipart"]
    assert row["n_target"] == 16
    for method in acc["methods"]:
        assert 0.0 <= row[method]["accuracy"] <= 1.0
        assert (row[method]["accuracy"] * 16) == pytest.approx(round(row[method]["accuracy"] * 16))
    assert {"source-only", "retrain-last-layer", "tent-b1", "tent-b16"} <= set(acc["methods"])
    text = cost.tent_markdown(acc) + cost.gain_and_cost_markdown(measured, acc)
    assert "photo->clipart" in text and "tent-b1" in text


def test_tent_updates_only_batchnorm_affine_parameters():
    from edge_runtime.export.models import build_torch_model

    model = cost.build_classifier(build_torch_model(), np.eye(9, 1280, dtype=np.float32), np.zeros(9, np.float32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tent = cost.Tent(model, batch_size=2)
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, 224, 224)).astype(np.float32))
    tent.step(x)
    tent.step(x)
    changed = {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert changed and all(k.rsplit(".", 1)[0] in bn and k.endswith(("weight", "bias")) for k in changed)
    assert not model.training and all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_image_folds_mirror_the_feature_tasks():
    from edge_runtime.bench.tasks import photo_halves

    classes, folds = cost.image_folds("photo->photo-c/fog")
    assert len(folds) == 2
    a, b = photo_halves(np.asarray(folds[0].source.labels))
    assert set(folds[0].source_rows) == set(a)
    # The corrupted copy of every source photo is kept out of that fold's target.
    source_ids = {folds[0].source.ids[i] for i in folds[0].source_rows}
    target_ids = {folds[0].target.ids[i] for i in folds[0].target_rows}
    assert not source_ids & target_ids
    assert np.array_equal(folds[0].target_labels, np.asarray(folds[0].target.labels)[folds[0].target_rows])
    assert classes == tuple(folds[0].source.classes)
