"""Output-error-aware rounding of int8 weights (export/rounding.py) on real layers of the backbone."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_runtime.export.models import build_torch_model  # noqa: E402
from edge_runtime.export.rounding import fold_batchnorm, grid_scale, input_moments, round_to_grid  # noqa: E402


@pytest.fixture(scope="module")
def layers():
    """Two real layers (a depthwise and a pointwise convolution) with moments from real photos."""
    import cv2

    from edge_runtime.export.calibration import OPENCV_DATA

    model = build_torch_model()
    convs = fold_batchnorm(model)
    photos = [cv2.imread(str(p)) for p in sorted(OPENCV_DATA.glob("*.jpg"))[:6]]
    x = np.stack([cv2.resize(p, (224, 224))[:, :, ::-1].transpose(2, 0, 1) for p in photos if p is not None])
    images = torch.from_numpy(((x.astype(np.float32) - 127.0) / 128.0))
    chosen = [convs[1], convs[2]]  # block 0 (no expansion): depthwise, then its projection
    assert chosen[0].groups > 1 and chosen[1].groups == 1
    moments = input_moments(model, chosen, images, batch=3)
    return [(c.weight.detach().double().numpy().reshape(len(c.weight), -1), moments[c]) for c in chosen]


def _output_error(weight, levels, hessian, qmax):
    scale = grid_scale(weight, qmax)
    error = levels * scale[:, None] - weight
    if hessian.ndim == 2:
        return float(np.einsum("rn,nm,rm->", error, hessian, error))
    return float(np.einsum("rn,rnm,rm->", error, hessian, error))


@pytest.mark.parametrize("qmax", [127, 64])
def test_rounding_lowers_the_layer_output_error_and_stays_on_the_grid(layers, qmax):
    for weight, hessian in layers:
        levels = round_to_grid(weight, hessian, qmax)
        x = weight / grid_scale(weight, qmax)[:, None]
        nearest = np.round(x)
        assert np.all((levels == np.floor(x)) | (levels == np.ceil(x)))
        live = np.abs(weight).max(axis=1) > 0
        assert np.all(np.abs(levels[live]).max(axis=1) == qmax)  # so the exporter finds the same scale
        assert np.all(levels[~live] == 0)
        before, after = _output_error(weight, nearest, hessian, qmax), _output_error(weight, levels, hessian, qmax)
        assert after < 0.9 * before, (before, after)
