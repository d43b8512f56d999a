"""``export_backbone``: pretrained torch weights -> fp32.onnx, int8.onnx, int8.tflite, cards, parity.

Outputs go to ``<models_dir>/<name>/``. The export is cached: ``export.json`` records a key over
everything that determines the artefacts (weights sha256, calibration and parity image ids and
bytes, tool versions, the export package's source); a re-run with the same key only re-checks
the files.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.card import (
    ModelCard,
    Preprocessing,
    Quantization,
    TensorSpec,
    load_card,
    sha256_file,
    write_card,
)
from edge_runtime.source.preprocess import Preprocessor

EXPORT_FORMAT = 1
ARTEFACTS = {"onnx_fp32": "fp32.onnx", "onnx_int8": "int8.onnx", "tflite_int8": "int8.tflite"}
LABELS_FILE = Path("/usr/share/doc/opencv-doc/examples/data/dnn/classification_classes_ILSVRC2012.txt")
TOOLS = ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "numpy", "opencv-python-headless")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tool_versions() -> dict[str, str]:
    versions = {}
    for tool in TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "absent"
    return versions


def imagenet_labels() -> list[str]:
    if not LABELS_FILE.is_file():
        raise EdgeRuntimeError(f"{LABELS_FILE} not found: apt-get install opencv-doc (make setup does)")
    labels = [line.strip() for line in LABELS_FILE.read_text().splitlines() if line.strip()]
    if len(labels) != 1000:
        raise EdgeRuntimeError(f"{LABELS_FILE} has {len(labels)} labels, expected 1000")
    return labels


def _cache_key(name: str, weights_sha: str, calibration: list, parity: list) -> str:
    """Everything the artefacts depend on, the export recipe (this package's code) included."""
    digest = hashlib.sha256()
    digest.update(json.dumps([EXPORT_FORMAT, name, weights_sha, tool_versions()]).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    for image_id, image in calibration + parity:
        digest.update(image_id.encode())
        digest.update(hashlib.sha256(image.tobytes()).digest())
    return digest.hexdigest()


def _cached(folder: Path, key: str) -> dict[str, Path] | None:
    manifest = folder / "export.json"
    if not manifest.is_file():
        return None
    try:
        if json.loads(manifest.read_text()).get("key") != key:
            return None
        for filename in ARTEFACTS.values():
            load_card(folder / filename)  # verifies the model's sha256 against its card
    except (EdgeRuntimeError, json.JSONDecodeError):
        return None
    return _paths(folder)


def _paths(folder: Path) -> dict[str, Path]:
    paths = {filename: folder / filename for filename in ARTEFACTS.values()}
    paths["parity.json"] = folder / "parity.json"
    return paths


def export_backbone(
    name: str = "efficientnet-lite0",
    models_dir: str | Path = "models",
    *,
    force: bool = False,
    log: Callable[[str], None] = _log,
) -> dict[str, Path]:
    """Export ``name`` into ``models_dir/name``; returns the artefact paths by file name."""
    import torch

    from edge_runtime.export import onnx as onnx_export
    from edge_runtime.export import tflite as tflite_export
    from edge_runtime.export.calibration import calibration_images, parity_images
    from edge_runtime.export.models import (
        CROP_FRACTION,
        LICENCE,
        MEAN_RGB,
        STD_RGB,
        build_torch_model,
        spec_for,
        weights_path,
    )
    from edge_runtime.export.parity import compare
    from edge_runtime.export.rounding import round_weights
    from edge_runtime.model import load_backbone

    spec = spec_for(name)
    folder = Path(models_dir) / name
    weights = weights_path(spec)
    weights_sha = sha256_file(weights)
    log(f"export {name}: reading calibration and parity images")
    calibration, parity = calibration_images(), parity_images()
    key = _cache_key(name, weights_sha, calibration, parity)
    if not force and (paths := _cached(folder, key)):
        log(f"export {name}: up to date in {folder}")
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = build_torch_model(name)

    prep = Preprocessing(size=spec.size, crop_fraction=CROP_FRACTION, mean=MEAN_RGB, std=STD_RGB, layout="NCHW")
    float_input = TensorSpec(onnx_export.INPUT, [1, 3, spec.size, spec.size], "float32")
    to_nchw = Preprocessor(prep, float_input)
    calib_rows = np.concatenate([to_nchw(image) for _, image in calibration])
    parity_rows = np.concatenate([to_nchw(image) for _, image in parity])
    common = dict(
        name=name,
        feature_dim=1280,
        labels=imagenet_labels(),
        tools=tool_versions(),
        source={
            "weights": f"{spec.weights_package} {metadata.version(spec.weights_package)}",
            "weights_file": Path(weights).name,
            "weights_sha256": weights_sha,
            "licence": LICENCE,
            "architecture": f"efficientnet-lite-pytorch {metadata.version('efficientnet-lite-pytorch')}",
        },
    )
    calibration_info = {
        "images": len(calibration),
        "sources": sorted({i.split("/")[0] for i, _ in calibration}),
        "ids_sha256": hashlib.sha256("\n".join(i for i, _ in calibration).encode()).hexdigest(),
    }
    float_outputs = {k: TensorSpec(k, [1, n], "float32") for k, n in (("features", 1280), ("logits", 1000))}

    def card_for(
        path: Path,
        runtime: str,
        input_spec: TensorSpec,
        outputs: dict,
        preprocessing: Preprocessing,
        quantization: dict | None,
    ) -> ModelCard:
        card = ModelCard(
            model_file=path.name,
            runtime=runtime,
            sha256=sha256_file(path),
            input=input_spec,
            outputs=outputs,
            preprocessing=preprocessing,
            quantization=quantization,
            **common,
        )
        write_card(card, path)
        return card

    log(f"export {name}: fp32.onnx")
    fp32 = folder / ARTEFACTS["onnx_fp32"]
    onnx_export.export_fp32(model, spec.size, fp32)
    cards = {"onnx_fp32": card_for(fp32, "onnxruntime", float_input, float_outputs, prep, None)}

    log(f"export {name}: rounding int8 weights layer by layer on the int8 network ({len(calibration)} images)")
    for_onnx, for_tflite = round_weights(
        model,
        calib_rows,
        (onnx_export.WEIGHT_QMAX, tflite_export.WEIGHT_QMAX),
        log=lambda message: log(f"export {name}: rounding: {message}"),
    )

    log(f"export {name}: int8.onnx (calibrating on {len(calibration)} images)")
    int8 = folder / ARTEFACTS["onnx_int8"]
    method = onnx_export.quantize_int8(for_onnx, spec.size, calib_rows, int8)
    cards["onnx_int8"] = card_for(
        int8, "onnxruntime", float_input, float_outputs, prep, {**method, "calibration": calibration_info}
    )

    log(f"export {name}: int8.tflite (litert-torch pt2e)")
    tfl = folder / ARTEFACTS["tflite_int8"]
    method = tflite_export.export_int8(for_tflite, np.ascontiguousarray(calib_rows.transpose(0, 2, 3, 1)), tfl)
    tfl_input, tfl_outputs = _tflite_io(tfl)
    cards["tflite_int8"] = card_for(
        tfl, "litert", tfl_input, tfl_outputs, replace(prep, layout="NHWC"), {**method, "calibration": calibration_info}
    )

    log(f"export {name}: parity on {len(parity)} held-out photos")
    with torch.no_grad():
        reference = tuple(t.numpy() for t in model(torch.from_numpy(parity_rows)))
    report: dict = {"images": len(parity), "reference": "fp32 torch", "source": "tuxpaint photos of the bench classes"}
    for key_name, filename in ARTEFACTS.items():
        backbone = load_backbone(folder / filename)
        out = backbone.infer([image for _, image in parity])
        report[key_name] = compare(reference, (out.features, out.logits))
        write_card(replace(cards[key_name], parity=report[key_name]), folder / filename)
    (folder / "parity.json").write_text(json.dumps(report, indent=1))
    (folder / "export.json").write_text(
        json.dumps({"key": key, "format": EXPORT_FORMAT, "seconds": round(time.perf_counter() - started, 1)})
    )
    log(f"export {name}: done in {time.perf_counter() - started:.0f} s -> {folder}")
    return _paths(folder)


def _tflite_io(path: Path) -> tuple[TensorSpec, dict[str, TensorSpec]]:
    """Input and output specs as the converter wrote them (names, int8 scales and zero points)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def spec(detail: dict) -> TensorSpec:
        scale, zero_point = detail["quantization"]
        quant = Quantization(float(scale), int(zero_point)) if scale else None
        return TensorSpec(detail["name"], [int(d) for d in detail["shape"]], np.dtype(detail["dtype"]).name, quant)

    inputs = interpreter.get_input_details()
    by_width = {int(d["shape"][-1]): d for d in interpreter.get_output_details()}
    return spec(inputs[0]), {"features": spec(by_width[1280]), "logits": spec(by_width[1000])}
