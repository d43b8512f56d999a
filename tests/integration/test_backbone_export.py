"""The exported int8 backbones: cards, parity with fp32 torch, both runtimes, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.model import load_backbone
from edge_runtime.model.card import load_card, sha256_file
from edge_runtime.source.preprocess import read_image

PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
EDGERT = Path(sys.executable).with_name("edgert")
INT8 = ("int8.onnx", "int8.tflite")
ALL = ("fp32.onnx", *INT8)


def test_fp32_onnx_matches_torch(exported):
    parity = json.loads(exported["parity.json"].read_text())
    assert parity["images"] >= 100
    assert parity["onnx_fp32"]["feature_cosine_min"] > 0.9999
    assert parity["onnx_fp32"]["top1_agreement"] == 1.0


# The fidelity targets of issue 2.
@pytest.mark.parametrize(
    "artefact, metric, target",
    [
        ("onnx_int8", "feature_cosine_mean", 0.98),
        ("onnx_int8", "top1_agreement", 0.95),
        ("tflite_int8", "feature_cosine_mean", 0.98),
        ("tflite_int8", "top1_agreement", 0.95),
    ],
)
def test_int8_parity_target(exported, artefact, metric, target):
    parity = json.loads(exported["parity.json"].read_text())
    assert parity[artefact][metric] >= target, parity[artefact]


def test_calibration_and_parity_images_are_disjoint():
    from edge_runtime.export.calibration import calibration_images, parity_images

    calibration = {i for i, _ in calibration_images()}
    parity = {i for i, _ in parity_images()}
    assert len(calibration) >= 200 and len(parity) >= 100
    assert not calibration & parity


@pytest.mark.parametrize("filename", ALL)
def test_card_describes_the_model(exported, filename):
    card = load_card(exported[filename])
    assert card.sha256 == sha256_file(exported[filename])
    assert card.feature_dim == 1280 and len(card.labels) == 1000
    assert card.source["licence"] == "Apache-2.0" and card.source["weights_sha256"]
    key = {"fp32.onnx": "onnx_fp32", "int8.onnx": "onnx_int8", "int8.tflite": "tflite_int8"}[filename]
    assert card.parity == json.loads(exported["parity.json"].read_text())[key]
    assert card.tools["torch"].startswith("2.13.0")
    if filename == "int8.tflite":
        assert card.input.dtype == "int8" and card.input.quantization is not None
        assert card.outputs["features"].dtype == "int8" and card.preprocessing.layout == "NHWC"
    if filename != "fp32.onnx":
        assert card.quantization["calibration"]["images"] >= 200


@pytest.mark.parametrize("filename", ALL)
def test_backbone_recognises_real_photos(exported, filename):
    backbone = load_backbone(exported[filename], threads=1)
    labels = backbone.card.labels
    for photo, expected in (("orange.jpg", "orange"), ("baboon.jpg", "baboon"), ("apple.jpg", "Granny Smith")):
        out = backbone.infer(cv2.imread(str(PHOTOS / photo)))
        assert out.features.shape == (1, 1280) and out.features.dtype == np.float32
        assert labels[int(out.logits.argmax())] == expected, (filename, photo)


@pytest.mark.parametrize("filename", ALL)
def test_batch_of_n_equals_n_batches_of_one(exported, filename):
    backbone = load_backbone(exported[filename], threads=1)
    frames = [cv2.imread(str(PHOTOS / p)) for p in ("orange.jpg", "butterfly.jpg", "fruits.jpg")]
    together = backbone.features(frames)
    apart = np.concatenate([backbone.features(f) for f in frames])
    assert together.shape == (3, 1280)
    np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-4)


def test_export_is_cached(exported):
    from edge_runtime.export import export_backbone

    before = {name: path.stat().st_mtime_ns for name, path in exported.items()}
    again = export_backbone("efficientnet-lite0", exported["fp32.onnx"].parents[1], log=lambda _: None)
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == before


def test_greyscale_and_odd_sizes_are_accepted(exported):
    backbone = load_backbone(exported["int8.onnx"], threads=1)
    grey = cv2.imread(str(PHOTOS / "baboon.jpg"), cv2.IMREAD_GRAYSCALE)
    assert backbone.features(grey).shape == (1, 1280)
    assert backbone.features(np.zeros((31, 977, 3), np.uint8)).shape == (1, 1280)


# -- bad input ------------------------------------------------------------------------------


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(EdgeRuntimeError, match="model file not found: .*nothing.onnx"):
        load_backbone(tmp_path / "nothing.onnx")


def test_unknown_model_type_is_named(tmp_path):
    with pytest.raises(EdgeRuntimeError, match="unknown model type '.pt'"):
        load_backbone(tmp_path / "model.pt")


def test_card_sha_mismatch_is_refused(exported, tmp_path):
    model = tmp_path / "int8.onnx"
    shutil.copy(exported["int8.onnx"], model)
    shutil.copy(str(exported["int8.onnx"]) + ".json", str(model) + ".json")
    with open(model, "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgeRuntimeError, match="does not match its card"):
        load_backbone(model)


def test_missing_card_is_named(exported, tmp_path):
    model = tmp_path / "int8.tflite"
    shutil.copy(exported["int8.tflite"], model)
    with pytest.raises(EdgeRuntimeError, match="model card not found: .*int8.tflite.json"):
        load_backbone(model)


def test_corrupt_model_bytes_give_a_clear_error(exported, tmp_path):
    from edge_runtime.model.card import write_card

    model = tmp_path / "int8.onnx"
    model.write_bytes(b"this is not an onnx file")
    card = load_card(exported["int8.onnx"])
    from dataclasses import replace

    write_card(replace(card, sha256=sha256_file(model)), model)
    with pytest.raises(EdgeRuntimeError, match="onnxruntime cannot load .*int8.onnx"):
        load_backbone(model)


def test_image_path_that_is_not_an_image(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not a readable image: .*notes.jpg"):
        read_image(str(text))


@pytest.mark.parametrize("shape", [(224, 224, 4), (224, 224, 2), (224, 224, 5)])
def test_frame_with_wrong_channels_is_refused(exported, shape):
    backbone = load_backbone(exported["int8.onnx"], threads=1)
    with pytest.raises(InputError, match=r"frame must have shape \(H, W, 3\)"):
        backbone.features(np.zeros(shape, np.uint8))


def test_cli_reports_bad_model_in_one_line(tmp_path):
    missing = tmp_path / "gone"
    done = subprocess.run(
        [str(EDGERT), "bench", "latency", str(missing), "--queries", "1"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert str(missing) in done.stderr


def test_cli_export_reports_parity_from_cache(exported):
    models_dir = exported["fp32.onnx"].parents[1]
    done = subprocess.run(
        [str(EDGERT), "export", "--models-dir", str(models_dir), "--json"], capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout)
    assert report["parity"] == json.loads(exported["parity.json"].read_text())
    assert "up to date" in done.stderr


def test_device_path_never_imports_torch(exported):
    code = (
        "import sys, cv2\n"
        "from edge_runtime.model import load_backbone\n"
        "import edge_runtime.adapters, edge_runtime.source.preprocess, edge_runtime.model.card\n"
        f"for f in {[str(exported[f]) for f in INT8]!r}:\n"
        f"    load_backbone(f).features(cv2.imread({str(PHOTOS / 'orange.jpg')!r}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_latency_bench_measures_every_variant(exported):
    from edge_runtime.bench.latency import measure

    results = measure(exported["fp32.onnx"].parent, queries=4, warmup=1, progress=False)
    assert [r["name"] for r in results] == ["onnx-fp32", "onnx-int8", "tflite-int8"]
    for r in results:
        assert r["queries"] == 4 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
