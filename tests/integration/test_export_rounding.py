"""Output-error-aware rounding and bias correction of int8 weights (export/rounding.py), on real
layers of the backbone and real photos."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn import functional as F  # noqa: E402

from edge_runtime.export.models import build_torch_model  # noqa: E402
from edge_runtime.export.rounding import (  # noqa: E402
    _stages,
    fold_batchnorm,
    grid_scale,
    layer_moments,
    round_to_grid,
    round_weights,
)
from edge_runtime.export.simulation import Codes, Layer  # noqa: E402


def _photos(first: int, count: int) -> torch.Tensor:
    """Real photos as NHWC float input, (x - 127) / 128."""
    import cv2

    from edge_runtime.export.calibration import OPENCV_DATA

    photos = [cv2.imread(str(p)) for p in sorted(OPENCV_DATA.glob("*.jpg"))[first : first + count]]
    x = np.stack([cv2.resize(p, (224, 224))[:, :, ::-1] for p in photos if p is not None])
    return torch.from_numpy(np.ascontiguousarray((x.astype(np.float32) - 127.0) / 128.0))


def _quantized(images: torch.Tensor) -> Codes:
    return Codes.quantize(lambda rows: images[rows].double(), images.shape)


@pytest.fixture(scope="module")
def model():
    return build_torch_model()


def _nearest_levels(conv, qmax) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().double().numpy().reshape(len(conv.weight), -1)
    scale = grid_scale(w, qmax)
    return np.round(w / scale[:, None]), scale


def _int8_layer(conv, relu6, codes: Codes, levels: np.ndarray, scale: np.ndarray, bias=None) -> Codes:
    """The int8 layer with weight ``levels`` x ``scale`` on int8 input ``codes``, output on its 8-bit grid."""
    layer = Layer(conv)
    n, height, width, _ = codes.codes.shape
    out_h, out_w = layer.geometry.output_size(height, width)
    acc = layer.int8_output(codes.codes, codes.zero, torch.from_numpy(levels)).reshape(n, out_h, out_w, -1)
    bias = conv.bias.detach().double() if bias is None else bias
    return Codes.from_accumulator(acc, torch.from_numpy(scale) * codes.step, bias, relu6)


def _float_layer(conv, relu6, x: torch.Tensor) -> torch.Tensor:
    layer = Layer(conv)
    n, height, width, _ = x.shape
    out_h, out_w = layer.geometry.output_size(height, width)
    y = layer.float_output(x) + conv.bias.detach().double()
    return (torch.clamp(y, 0, 6) if relu6 else y).float().reshape(n, out_h, out_w, -1)


@pytest.fixture(scope="module", params=[127, 64])
def layers(model, request):
    """qmax, and block 0's depthwise convolution and its projection, each with its input in the int8
    network (activations on 8-bit grids, weights before it nearest-rounded) and in the float network,
    on real photos: 6 to fit, 6 to check."""
    qmax = request.param
    folded = copy.deepcopy(model)
    stem, depthwise, project = fold_batchnorm(folded)[:3]
    assert depthwise.groups > 1 and project.groups == 1  # block 0 has no expansion
    out = []
    for images in (_photos(0, 6), _photos(6, 6)):
        x = _float_layer(stem, True, images)
        xq = _int8_layer(stem, True, _quantized(images), *_nearest_levels(stem, qmax))
        y, yq = _float_layer(depthwise, True, x), _int8_layer(depthwise, True, xq, *_nearest_levels(depthwise, qmax))
        out.append({depthwise: (xq, x), project: (yq, y)})
    return qmax, [(conv, out[0][conv], out[1][conv]) for conv in (depthwise, project)]


def _conv64(conv, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv`` with ``weight``, no bias, in float64 on NHWC input."""
    from torch import nn

    pad = conv.static_padding if isinstance(getattr(conv, "static_padding", None), nn.ZeroPad2d) else nn.Identity()
    return F.conv2d(
        pad(x.double().permute(0, 3, 1, 2)),
        weight.reshape(conv.weight.shape),
        None,
        conv.stride,
        conv.padding,
        groups=conv.groups,
    )


def _output_error(conv, weight, levels, qmax, inputs):
    """Mean squared output error of the layer with ``levels`` on its int8 input vs float weights on float input."""
    quantised, reference = inputs
    on_grid = torch.from_numpy(levels * grid_scale(weight, qmax)[:, None])
    got = _conv64(conv, quantised.values(slice(None)), on_grid)
    target = _conv64(conv, reference, torch.from_numpy(weight))
    return float(((got - target) ** 2).mean())


def _roundings(conv, fit, qmax):
    """Levels (rows, n) by nearest, by the plain objective dW' H dW, and with the asymmetric term."""
    quantised, reference = fit
    layer = Layer(conv)
    _, _, (moments,) = layer_moments(layer, conv.bias.detach().double(), False, reference, [quantised])
    hessian, linear = moments.objective(layer.weight, quantised.step)
    weight = layer.weight.numpy()
    nearest = np.round(weight / grid_scale(weight, qmax)[:, None])
    return weight, nearest, round_to_grid(weight, hessian, qmax), round_to_grid(weight, hessian, qmax, linear)


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


def _int8_logits(model, images, qmax):
    """The backbone's logits with every activation on its 8-bit grid and every weight on its int8
    grid (nearest level of the model's weights), as the exporters run it."""
    x = _quantized(images)
    for convs, residual in _stages(model.net):
        block_in = x
        for conv, relu6 in convs:
            x = _int8_layer(conv, relu6, x, *_nearest_levels(conv, qmax))
        if residual:
            x = Codes.quantize(lambda rows, a=x, b=block_in: a.values(rows) + b.values(rows), x.codes.shape)
    with torch.no_grad():
        return model.net._fc(x.values(slice(None)).mean(dim=(1, 2)).float())


def test_rounded_int8_network_is_closer_to_fp32_on_held_out_photos(model):
    # round_weights (layer by layer, asymmetric objective, bias correction) against nearest
    # rounding, both run as int8 networks: logit error on 12 photos it was not fitted on.
    qmax = 64
    fit, check = _photos(0, 12), _photos(12, 12)
    (rounded,) = round_weights(model, fit.permute(0, 3, 1, 2).numpy(), (qmax,))
    nearest = copy.deepcopy(model)
    fold_batchnorm(nearest)
    for convs, _ in _stages(rounded.net):
        for conv, _ in convs:
            w = conv.weight.detach().double().numpy().reshape(len(conv.weight), -1)
            levels = w / grid_scale(w, qmax)[:, None]
            np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    with torch.no_grad():
        reference = model(check.permute(0, 3, 1, 2).contiguous())[1]
    errors = [float(((_int8_logits(m, check, qmax) - reference) ** 2).mean()) for m in (nearest, rounded)]
    assert errors[1] < 0.3 * errors[0], errors  # measured 0.013 vs 0.141 (float32 simulation)


def test_rounding_is_the_same_with_any_number_of_threads(model):
    # Every sum the rounding decides on is exact or taken in a fixed order: the rounded weights
    # must not depend on how many threads BLAS, oneDNN or Numba use (nor on the CPU's SIMD width).
    import numba

    images = _photos(0, 4).permute(0, 3, 1, 2).numpy()
    threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        runs = []
        for count in (1, max(2, threads[0])):
            torch.set_num_threads(count)
            numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
            runs.append(round_weights(model, images, (64, 127)))
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
    for one, many in zip(*runs):
        for (name, a), b in zip(one.state_dict().items(), many.state_dict().values()):
            assert torch.equal(a, b), name


def test_simulated_layers_are_exact_against_float64_convolution(model):
    # Integer codes and levels: every output of the simulation must equal torch's float64
    # convolution exactly (the float32 shortcuts included), for every layer shape of the network.
    from torch import nn

    rng = torch.Generator().manual_seed(0)
    for convs, _ in _stages(model.net):
        for conv, _ in convs:
            layer = Layer(conv)
            codes = torch.randint(0, 256, (2, 13, 15, conv.in_channels), generator=rng, dtype=torch.uint8)
            levels = torch.randint(-127, 128, layer.weight.shape, generator=rng).double()
            static = getattr(conv, "static_padding", None)
            pad = static if isinstance(static, nn.ZeroPad2d) else nn.Identity()
            x = (codes.double() - 9).permute(0, 3, 1, 2)
            exact = F.conv2d(
                pad(x), levels.reshape(conv.weight.shape), None, conv.stride, conv.padding, groups=conv.groups
            )
            exact = exact.permute(0, 2, 3, 1).reshape(-1, exact.shape[1])
            assert torch.equal(layer.int8_output(codes, 9, levels).double(), exact), conv
            f = F.conv2d(pad(x), conv.weight.detach().double(), None, conv.stride, conv.padding, groups=conv.groups)
            f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            np.testing.assert_allclose(
                layer.float_output((codes.float() - 9).contiguous()).numpy(), f.numpy(), rtol=1e-12, atol=1e-9
            )
            u = F.unfold(pad(x), conv.kernel_size, stride=conv.stride, padding=conv.padding)
            u = u.permute(1, 0, 2).reshape(u.shape[1], -1)  # (C*k*k, P)
            gram, cross = layer.moments(codes, 9, f.contiguous())
            if layer.geometry.depthwise:
                u = u.reshape(conv.in_channels, -1, u.shape[-1])
                assert torch.equal(gram, torch.bmm(u, u.transpose(1, 2)))
                np.testing.assert_allclose(cross.numpy(), torch.einsum("pc,cip->ci", f, u).numpy(), rtol=1e-10)
            else:
                assert torch.equal(gram, u @ u.T)
                np.testing.assert_allclose(cross.numpy(), (f.T @ u.T).numpy(), rtol=1e-10)


def test_calibration_ranges_round_outward_onto_a_grid_that_absorbs_another_cpus_last_bits():
    # onnxruntime calibrates in float32 with this CPU's kernels; another CPU's ranges differ in
    # their last bits. Rounded outward to RANGE_BITS significant bits, ranges a few ulps apart give
    # the same scale (but for the rare pair a grid point falls between), and the rounding widens a
    # range by at most 2^(1 - bits) of its end. Ends on the grid (ReLU6's 0 and 6) stay.
    from edge_runtime.export.onnx import RANGE_BITS, _outward

    rng = np.random.default_rng(0)
    ends = (rng.uniform(0.01, 30.0, 2000) * rng.choice([-1.0, 1.0], 2000)).astype(np.float32)
    same = 0
    for v in ends:
        low, high = _outward(v, v)
        assert low <= v <= high
        assert max(v - low, high - v) <= abs(float(v)) * 2.0 ** (1 - RANGE_BITS)
        nudged = np.float32(v * np.float32(1 + 16 * 2.0**-23))
        same += _outward(nudged, nudged) == (low, high)
    assert same >= 0.99 * len(ends)
    assert _outward(np.float32(0.0), np.float32(6.0)) == (0.0, 6.0)
