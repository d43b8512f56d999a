"""Model cards: the JSON sidecar the exporter writes beside every model and the device trusts.

A card says how to feed the model and how to read it: input shape, layout, dtype and
quantisation, colour order, resize/crop and normalisation; output names, dtypes and
quantisation; feature width; label names; where the weights came from and under which licence;
the sha256 of the model file; the tool versions that exported it; and its parity report against
the fp32 torch model.

Compatibility policy: ``format`` is an integer. This runtime reads cards whose format is in
``READABLE_FORMATS``; the exporter always writes ``CARD_FORMAT``. A new field that old runtimes
may ignore does not bump the format; a changed meaning does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.files import atomic_write_bytes

CARD_FORMAT = 1
READABLE_FORMATS = (1,)


@dataclass(frozen=True)
class Quantization:
    """Affine int8 quantisation: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str  # "float32" | "int8" | "uint8"
    quantization: Quantization | None = None


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model input (see ``edge_runtime.source.preprocess``)."""

    size: int  # square input side in pixels
    crop_fraction: float  # centre square kept, as a fraction of the shorter side
    mean: list[float]  # per RGB channel, on the 0..255 scale
    std: list[float]
    layout: str  # "NCHW" | "NHWC"
    color: str = "RGB"


@dataclass(frozen=True)
class ModelCard:
    name: str
    model_file: str  # file name, relative to the card
    runtime: str  # "onnxruntime" | "litert"
    sha256: str
    input: TensorSpec
    outputs: dict[str, TensorSpec]  # "features" and, where present, "logits"
    preprocessing: Preprocessing
    feature_dim: int
    labels: list[str]
    source: dict[str, Any]  # weights package, file, sha256, licence, architecture
    quantization: dict[str, Any] | None  # method, calibration images and sources; None for fp32
    tools: dict[str, str]  # exporter tool versions
    parity: dict[str, Any] = field(default_factory=dict)
    format: int = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelCard":
        def spec(d: dict[str, Any]) -> TensorSpec:
            q = d.get("quantization")
            return TensorSpec(d["name"], list(d["shape"]), d["dtype"], Quantization(**q) if q else None)

        raw = dict(raw)
        raw["input"] = spec(raw["input"])
        raw["outputs"] = {k: spec(v) for k, v in raw["outputs"].items()}
        raw["preprocessing"] = Preprocessing(**raw["preprocessing"])
        return cls(**raw)


def card_path(model_path: str | Path) -> Path:
    """``int8.onnx`` -> ``int8.onnx.json``: the card sits beside its model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_card(card: ModelCard, model_path: str | Path) -> Path:
    path = card_path(model_path)
    return atomic_write_bytes(path, card.to_json().encode())


def load_card(model_path: str | Path, *, verify: bool = True) -> ModelCard:
    """Read and check the card beside ``model_path``; with ``verify``, the model's sha256 too."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise EdgeRuntimeError(f"model file not found: {model_path}")
    path = card_path(model_path)
    if not path.is_file():
        raise EdgeRuntimeError(f"model card not found: {path} (export writes it beside the model)")
    try:
        raw = json.loads(path.read_text())
        card = ModelCard.from_dict(raw)
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise EdgeRuntimeError(f"model card {path} is not a valid card: {err}") from None
    if card.format not in READABLE_FORMATS:
        raise EdgeRuntimeError(f"model card {path} has format {card.format}; this runtime reads {READABLE_FORMATS}")
    if verify:
        actual = sha256_file(model_path)
        if actual != card.sha256:
            raise EdgeRuntimeError(
                f"model {model_path} does not match its card: sha256 {actual[:12]}... != card's {card.sha256[:12]}... "
                "(re-export, or copy the model and its card together)"
            )
    return card
