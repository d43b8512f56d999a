"""Output-error-aware rounding and bias correction of int8 weights (export/rounding.py), on real
layers of the backbone and real photos."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn import functional as F  # noqa: E402

from edge_runtime.export.models import build_torch_model  # noqa: E402
from edge_runtime.export.rounding import (_stages, fake_quantize, fold_batchnorm, grid_scale,  # noqa: E402
                                          layer_moments, round_to_grid, round_weights)


def _photos(first: int, count: int) -> torch.Tensor:
    import cv2

    from edge_runtime.export.calibration import OPENCV_DATA

    photos = [cv2.imread(str(p)) for p in sorted(OPENCV_DATA.glob("*.jpg"))[first:first + count]]
    x = np.stack([cv2.resize(p, (224, 224))[:, :, ::-1].transpose(2, 0, 1) for p in photos if p is not None])
    return torch.from_numpy(((x.astype(np.float32) - 127.0) / 128.0))


@pytest.fixture(scope="module")
def model():
    return build_torch_model()


def _nearest(conv, qmax):
    """A copy of ``conv`` with every weight on its nearest level of the exporters' grid."""
    w = conv.weight.detach().double().numpy().reshape(len(conv.weight), -1)
    scale = grid_scale(w, qmax)[:, None]
    rounded = copy.deepcopy(conv)
    rounded.weight.data = torch.from_numpy((np.round(w / scale) * scale).reshape(conv.weight.shape)).float()
    return rounded


@pytest.fixture(scope="module", params=[127, 64])
def layers(model, request):
    """qmax, and block 0's depthwise convolution and its projection, each with its input in the int8
    network (activations fake-quantised, weights before it nearest-rounded) and in the float network,
    on real photos: 6 to fit, 6 to check."""
    qmax = request.param
    folded = copy.deepcopy(model)
    stem, depthwise, project = fold_batchnorm(folded)[:3]
    assert depthwise.groups > 1 and project.groups == 1  # block 0 has no expansion
    stem_q, depthwise_q = _nearest(stem, qmax), _nearest(depthwise, qmax)
    out = []
    with torch.no_grad():
        for images in (_photos(0, 6), _photos(6, 6)):
            x = F.relu6(stem(images))
            xq = fake_quantize(F.relu6(stem_q(fake_quantize(images))))
            y, yq = F.relu6(depthwise(x)), fake_quantize(F.relu6(depthwise_q(xq)))
            out.append({depthwise: (xq, x), project: (yq, y)})
    return qmax, [(conv, out[0][conv], out[1][conv]) for conv in (depthwise, project)]


def _output_error(conv, weight, levels, qmax, inputs):
    """Mean squared output error of the layer with ``levels`` on its int8 input vs float weights on float input."""
    quantised, reference = inputs
    on_grid = torch.from_numpy(levels * grid_scale(weight, qmax)[:, None]).float().reshape(conv.weight.shape)
    with torch.no_grad():
        target = F.conv2d(reference, conv.weight, None, conv.stride, conv.padding, groups=conv.groups)
        got = F.conv2d(quantised, on_grid, None, conv.stride, conv.padding, groups=conv.groups)
    return float(((got - target) ** 2).mean())


def _roundings(conv, fit, qmax):
    """Levels (rows, n) by nearest, by the plain objective dW' H dW, and with the asymmetric term."""
    weight = conv.weight.detach().double().numpy().reshape(len(conv.weight), -1)
    hessian, cross = layer_moments(conv, *fit, batch=3)
    nearest = np.round(weight / grid_scale(weight, qmax)[:, None])
    return weight, nearest, round_to_grid(weight, hessian, qmax), round_to_grid(weight, hessian, qmax, cross)


def test_rounding_stays_on_the_grid_and_beats_nearest_on_held_out_photos(layers):
    qmax, convs = layers
    for conv, fit, check in convs:
        weight, nearest, plain, asymmetric = _roundings(conv, fit, qmax)
        x = weight / grid_scale(weight, qmax)[:, None]
        live = np.abs(weight).max(axis=1) > 0
        for levels in (plain, asymmetric):
            assert np.all((levels == np.floor(x)) | (levels == np.ceil(x)))
            assert np.all(np.abs(levels[live]).max(axis=1) == qmax)  # so the exporter finds the same scale
            assert np.all(levels[~live] == 0)
            error, nearest_error = (_output_error(conv, weight, lv, qmax, check) for lv in (levels, nearest))
            assert error < 0.9 * nearest_error, (conv, error, nearest_error)


def test_asymmetric_objective_cancels_the_error_of_the_layers_before(layers):
    # The projection's int8 input carries the depthwise layer's rounding and activation error;
    # the linear term 2 dW' E[x^ (x^ - x)'] w steers this layer's rounding against it.
    qmax, convs = layers
    conv, fit, check = convs[1]
    weight, _, plain, asymmetric = _roundings(conv, fit, qmax)
    errors = [_output_error(conv, weight, levels, qmax, check) for levels in (plain, asymmetric)]
    assert errors[1] < 0.8 * errors[0], errors


def _int8_logits(model, images):
    """The backbone's logits with every activation fake-quantised to 8 bits, as the exporters run it."""
    x = fake_quantize(images)
    with torch.no_grad():
        for convs, residual in _stages(model.net):
            block_in = x
            for conv, relu6 in convs:
                x = fake_quantize(F.relu6(conv(x)) if relu6 else conv(x))
            if residual:
                x = fake_quantize(x + block_in)
        return model.net._fc(x.mean(dim=(2, 3)))


def test_rounded_int8_network_is_closer_to_fp32_on_held_out_photos(model):
    # round_weights (layer by layer, asymmetric objective, bias correction) against nearest
    # rounding, both run with int8 activations: logit error on 12 photos it was not fitted on.
    qmax = 64
    fit, check = _photos(0, 12), _photos(12, 12)
    (rounded,) = round_weights(model, fit.numpy(), (qmax,))
    nearest = copy.deepcopy(model)
    fold_batchnorm(nearest)
    for convs, _ in _stages(nearest.net):
        for conv, _ in convs:
            conv.weight.data = _nearest(conv, qmax).weight.data
    for convs, _ in _stages(rounded.net):
        for conv, _ in convs:
            w = conv.weight.detach().double().numpy().reshape(len(conv.weight), -1)
            levels = w / grid_scale(w, qmax)[:, None]
            np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    with torch.no_grad():
        reference = model(check)[1]
    errors = [float(((_int8_logits(m, check) - reference) ** 2).mean()) for m in (nearest, rounded)]
    assert errors[1] < 0.3 * errors[0], errors  # measured 0.013 vs 0.141
