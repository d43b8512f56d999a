"""The backprop side of the cost bench, in torch: Tent (BN affine, entropy loss, one SGD step per
batch) and retraining the last layer, on the same EfficientNet-Lite0 the device runs int8."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # torch is imported inside functions only: listing benchmarks stays cheap
    import torch


TENT_LR_AT_64 = 0.00025  # Tent's ImageNet SGD learning rate at batch 64
TENT_MOMENTUM = 0.9
RETRAIN_LR = 0.01  # SGD on the last layer; the paper's retrain-last-layer baseline


def torch_preprocessor(backbone: str = "efficientnet-lite0"):
    """BGR frames -> float32 NCHW rows exactly as the exporter feeds the torch model."""
    from edge_runtime.export.models import CROP_FRACTION, MEAN_RGB, STD_RGB, spec_for
    from edge_runtime.model.card import Preprocessing, TensorSpec
    from edge_runtime.source.preprocess import Preprocessor

    size = spec_for(backbone).size
    prep = Preprocessing(size=size, crop_fraction=CROP_FRACTION, mean=MEAN_RGB, std=STD_RGB, layout="NCHW")
    return Preprocessor(prep, TensorSpec("input", [1, 3, size, size], "float32"))


def build_classifier(backbone: "torch.nn.Module", weight: np.ndarray, bias: np.ndarray) -> "torch.nn.Module":
    """Backbone features -> L2 normalisation -> the source linear head: the source model."""
    import torch
    from torch import nn

    class SourceModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                self.head.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
                self.head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features, _ = self.backbone(x)
            return self.head(nn.functional.normalize(features, dim=1))

    return SourceModel().eval()


class Tent:
    """Tent on a source model: BN affine parameters only, entropy loss, one SGD step per batch.

    ``step(x)`` returns the logits of the forward pass it adapted on (Tent's online prediction).
    """

    def __init__(self, model: "torch.nn.Module", batch_size: int) -> None:
        import torch
        from torch import nn

        self.model = model
        self.batch_size = batch_size
        model.eval()
        model.requires_grad_(False)
        params = []
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train()  # normalise by the batch's statistics...
                module.track_running_stats = False  # ...and never by running ones
                module.running_mean = None
                module.running_var = None
                module.requires_grad_(True)
                params += [module.weight, module.bias]
        self.params = params
        self.optimizer = torch.optim.SGD(params, lr=TENT_LR_AT_64 * batch_size / 64, momentum=TENT_MOMENTUM)

    def step(self, x: "torch.Tensor") -> "torch.Tensor":
        logits = self.model(x)
        log_p = logits.log_softmax(dim=1)
        loss = -(log_p.exp() * log_p).sum(dim=1).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()


class RetrainLastLayer:
    """SGD on the linear head from its own pseudo-labels (argmax), one step per batch of features."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, lr: float = RETRAIN_LR) -> None:
        import torch
        from torch import nn

        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
            self.head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
        self.params = list(self.head.parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=lr)

    def step(self, features: "torch.Tensor") -> "torch.Tensor":
        from torch import nn

        logits = self.head(nn.functional.normalize(features, dim=1))
        loss = nn.functional.cross_entropy(logits, logits.argmax(dim=1).detach())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()


def torch_step_bytes(step: Callable[[], Any], params: list, optimizer: Any) -> dict[str, Any]:
    """Bytes one backprop step holds beyond inference: saved activations + gradients + optimiser state.

    Activations are summed as autograd saves them (``saved_tensors_hooks``); gradients are read
    before the optimiser clears them. Shared storage saved twice is counted once.
    """
    import torch

    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    grads = {"bytes": 0}
    hooks = [
        p.register_post_accumulate_grad_hook(lambda p: grads.__setitem__("bytes", grads["bytes"] + p.grad.nbytes))
        for p in params
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
    finally:
        for hook in hooks:
            hook.remove()
    state = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    total = sum(seen.values()) + grads["bytes"] + state
    return {
        "bytes": total,
        "saved_activations": sum(seen.values()),
        "gradients": grads["bytes"],
        "optimizer_state": state,
        "how": "torch: autograd saved tensors + gradients + optimiser state of one step (exact bytes)",
    }
