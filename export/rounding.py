"""Int8 weights rounded, layer after layer, to minimise each layer's output error on the int8 network.

Rounding every weight to its nearest int8 level is what costs an int8 EfficientNet-Lite its
fidelity: with activations left in float, nearest rounding of the per-channel int8 weights alone
gave feature cosine 0.9925 and ImageNet top-1 agreement 0.888 against fp32 on the held-out
photos, most of it from the depthwise convolutions. For a layer y = W x the output error of a
rounding is, per output row, dW' H dW with H = E[x x'] over calibration inputs (AdaRound, Nagel et
al. 2020, layer-wise objective). Each weight may go to the level below or above it; starting from
nearest, coordinate descent flips the choices that lower the objective until none does. Every
weight stays on its channel's grid and the largest one stays at the end of the range, so the
exporter's own quantiser (scale = max|w| / qmax per channel) lands on exactly these values. That
alone (H from the float network) moved int8.onnx (7-bit weights) from feature cosine 0.956 to
0.993 and top-1 agreement 0.80 to 0.935, int8.tflite from 0.990 to 0.997 and 0.879 to 0.944.

The exported networks also quantise every activation to 8 bits, and the error of each layer
feeds the next. So the layers are now rounded in order on a simulated int8 network (activations
fake-quantised per tensor on their min/max, as both exporters calibrate them), each against the
float network's output for the same images:
- AdaRound's asymmetric objective: with x the float input and x^ the int8 network's input, the
  error W^ x^ - W x = dW x^ + W (x^ - x) adds a linear term 2 dW' E[x^ (x^ - x)'] W' to
  dW' H dW, H = E[x^ x^'], so the rounding also cancels what the layers before it got wrong;
- empirical bias correction (Nagel et al. 2019, data-free quantization, empirical variant): the
  mean output error per channel that is left, E[W^ x^ - W x], is subtracted from the bias.
Chosen on a validation split of the calibration pool (177 images calibrate, the other 89 and
their flips and uncropped views, 356 inputs, validate; parity photos untouched), int8.onnx
against fp32: top-1 agreement / feature cosine / mean KL of the ImageNet softmax
0.905 / 0.9922 / 0.024 with the float-network rounding; bias correction (float activations)
0.913 / 0.9962 / 0.011; bias correction on the int8 simulation 0.913 / 0.9965 / 0.0097; plus the
asymmetric objective 0.941 / 0.9975 / 0.0069. Per-tensor MSE-optimal activation ranges instead
of min/max were worse (KL 0.028): clipping the residual stream's tails costs more than the finer
step gains. On the parity photos (all 266 calibration images) int8.onnx went from feature cosine
0.9933 (min 0.924) and top-1 agreement 0.935 to 0.9970 (min 0.989) and 0.957, int8.tflite from
0.9969 (min 0.960) and 0.944 to 0.9980 (min 0.989) and 0.966; same graphs, same latency.

Those figures came from a float32 simulation (torch convolutions, BLAS sums) whose roundings
depended on the CPU and the thread count: on another 2-core machine (AVX-512) the same recipe
exported int8.onnx / int8.tflite with top-1 agreement 0.935 / 0.948, and with one thread and AVX2
instead of two threads and AVX-512 0.87 M of the 4.7 M rounded weights and biases came out
different (32 calibration images). Top-1 agreement on 232 photos moves by a few images with any
such perturbation; what matters is that an export is the same everywhere. The simulation is now
exact (``simulation.py``): the same rounded weights on any CPU and thread count, and on the parity
photos int8.onnx 0.9971 (min 0.986) / 0.953, int8.tflite 0.9980 (min 0.990) / 0.970. The float
network's pass is shared by the two weight grids; the whole export takes about 3 minutes on a
2-core machine (it took 6-9 with the float32 simulation, mostly in page faults and copies).

Batch norm is folded into the convolutions first (the exporters fold it anyway), so the rounded
weights and corrected biases are the ones that ship. Depthwise layers have one H per channel
(k*k inputs each); dense layers share one H across output rows. The classifier is left to the
exporters' nearest rounding.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from edge_runtime.export import int8_kernels as kernels
from edge_runtime.export.models import FeaturesAndLogits
from edge_runtime.export.simulation import Codes, Layer, _chunks

_CONV_BN = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batchnorm(model: FeaturesAndLogits) -> list[nn.Conv2d]:
    """Fold every batch norm into the convolution before it, in place; returns the convolutions."""
    net = model.net
    pairs = [(net, "_conv_stem", "_bn0")]
    for block in net._blocks:
        pairs += [(block, conv, bn) for conv, bn in _CONV_BN if hasattr(block, conv)]
    pairs.append((net, "_conv_head", "_bn1"))
    convs = []
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.data = conv.weight.data * gain[:, None, None, None]
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * gain)
        setattr(owner, bn_name, nn.Identity())
        convs.append(conv)
    return convs


def grid_scale(weight: np.ndarray, qmax: int) -> np.ndarray:
    """Per-row step max|row| / qmax of the exporters' symmetric quantisers (1 for an all-zero row)."""
    scale = np.abs(weight).max(axis=1) / qmax
    return np.where(scale == 0, 1.0, scale)


def round_to_grid(
    weight: np.ndarray, hessian: np.ndarray, qmax: int, linear: np.ndarray | None = None, passes: int = 4
) -> np.ndarray:
    """Integer levels (rows, n) for ``weight`` (rows, n) on the grid max|row| / qmax.

    Minimises dW' H dW + 2 dW' l per row, ``linear`` holding l for every row (rows, n), or no
    linear term when None; ``hessian`` is (n, n), shared by the rows, or (rows, n, n). Each level
    is floor or ceil of weight / scale; coordinate descent over the inputs, row by row, keeps
    a flip when it lowers the objective. The gradient g = dW H + l is updated by one row of H per flip.
    """
    w = weight.astype(np.float64)
    scale = grid_scale(w, qmax)
    x = w / scale[:, None]
    low = np.floor(x)
    # The largest weight of each row is pinned to +-qmax, or the exporter would derive another scale
    # from the new largest value and re-round the whole row (x can be 126.99999... in float).
    largest = np.abs(w) == np.abs(w).max(axis=1, keepdims=True)
    levels = np.where(largest, np.sign(x) * qmax, np.clip(np.round(x), -qmax, qmax))
    movable = (low != x) & ~largest  # a weight already on a level stays there
    shared = hessian.ndim == 2
    error = (levels - x) * scale[:, None]
    grad = error @ hessian if shared else np.einsum("rn,rnm->rm", error, hessian)
    if linear is not None:
        grad += linear
    kernels.coordinate_descent(levels, low, movable, scale, grad, hessian[None] if shared else hessian, qmax, passes)
    return levels


def _stages(net: nn.Module) -> list[tuple[list[tuple[nn.Conv2d, bool]], bool]]:
    """The network as stages of (convolution, followed by ReLU6) lists; True if the stage adds its input."""
    stages = [([(net._conv_stem, True)], False)]
    for block in net._blocks:
        convs = [(block._expand_conv, True)] if hasattr(block, "_expand_conv") else []
        convs += [(block._depthwise_conv, True), (block._project_conv, False)]
        args = block._block_args
        stages.append((convs, bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)))
    stages.append(([(net._conv_head, True)], False))
    return stages


@dataclass
class Moments:
    """What the rounding of one layer needs from its inputs, summed over every input patch.

    ``gram`` is sum c c' over the int8 input's centred codes c (exact integers); ``cross`` is
    sum f_r c' for every output row r, f being the float layer's output (without bias) on the
    float input. With x^ = step c: H = step^2 gram and E[x^ (x^ - x)'] w_r = H w_r - step cross_r.
    """

    gram: torch.Tensor  # (n, n), or (C, k*k, k*k) for a depthwise layer
    cross: torch.Tensor  # (rows, n)

    def objective(self, weight: torch.Tensor, step: float) -> tuple[np.ndarray, np.ndarray]:
        """(H, l) for ``round_to_grid``: the asymmetric objective's quadratic and linear terms."""
        hessian = self.gram * step**2
        product = torch.einsum("rn,rnm->rm", weight, hessian) if hessian.ndim == 3 else weight @ hessian
        return hessian.numpy(), (product - step * self.cross).numpy()


def layer_moments(
    layer: Layer, bias: torch.Tensor, relu6: bool, reference: torch.Tensor, quantised: list[Codes]
) -> tuple[torch.Tensor, torch.Tensor, list[Moments]]:
    """One pass over a layer's inputs (NHWC): the float network's activated output (float32),
    the sum over every position of its output before bias (float64, for the bias correction),
    and the moments of each int8 input in ``quantised``."""
    n, height, width, channels = reference.shape
    out_h, out_w = layer.geometry.output_size(height, width)
    rows = len(layer.weight)
    out = torch.empty((n, out_h, out_w, rows), dtype=torch.float32)
    total = torch.zeros(rows, dtype=torch.float64)
    moments = [Moments(0, 0) for _ in quantised]
    for chunk in _chunks(n, layer.rows_per_chunk(height, width, channels)):
        f = layer.float_output(reference[chunk])
        total += f.sum(dim=0)
        for m, codes in zip(moments, quantised):
            gram, cross = layer.moments(codes.codes[chunk], codes.zero, f)
            m.gram, m.cross = m.gram + gram, m.cross + cross
        f.add_(bias)  # in place from here on: f is done with
        out[chunk].view(-1, rows).copy_(f.clamp_(0.0, 6.0) if relu6 else f)
    return out, total, moments


def int8_output(layer: Layer, levels: torch.Tensor, quantised: Codes, out_h: int, out_w: int) -> torch.Tensor:
    """The int8 layer's accumulator for every output (int32, NHWC): sum of levels x centred codes."""
    n, height, width, channels = quantised.codes.shape
    acc = torch.empty((n, out_h, out_w, len(levels)), dtype=torch.int32)
    for chunk in _chunks(n, layer.rows_per_chunk(height, width, channels)):
        acc[chunk] = layer.int8_output(quantised.codes[chunk], quantised.zero, levels).reshape(
            -1, out_h, out_w, len(levels)
        )
    return acc


def _round_layer(
    conv: nn.Conv2d,
    relu6: bool,
    targets: list[nn.Conv2d],
    qmaxes: tuple[int, ...],
    reference: torch.Tensor,
    quantised: list[Codes],
) -> tuple[torch.Tensor, list[Codes]]:
    """Round ``conv`` onto each grid (written into its copy in ``targets``, bias corrected) and
    return the layer's float output and each int8 network's output codes."""
    layer = Layer(conv)
    weight = layer.weight
    bias = conv.bias.detach().double()
    out, total, moments = layer_moments(layer, bias, relu6, reference, quantised)
    n, out_h, out_w, _ = out.shape
    positions = n * out_h * out_w
    outputs = []
    for target, qmax, codes, m in zip(targets, qmaxes, quantised, moments):
        hessian, linear = m.objective(weight, codes.step)
        levels = round_to_grid(weight.numpy(), hessian, qmax, linear)
        scale = grid_scale(weight.numpy(), qmax)
        target.weight.data = torch.from_numpy(levels * scale[:, None]).reshape(conv.weight.shape).float()
        acc = int8_output(layer, torch.from_numpy(levels), codes, out_h, out_w)
        # Empirical bias correction: the int8 layer's mean output error per channel is taken off its bias.
        alpha = torch.from_numpy(scale) * codes.step  # one accumulator unit in output units, per channel
        error = alpha * acc.sum(dim=(0, 1, 2), dtype=torch.int64).double() / positions - total / positions
        target.bias.data = (bias - error).float()
        corrected = target.bias.detach().double()
        outputs.append(Codes.from_accumulator(acc, alpha, corrected, relu6))
    return out, outputs


def _round_in_order(
    folded: FeaturesAndLogits, images: torch.Tensor, qmaxes: tuple[int, ...], log: Callable[[str], None]
) -> list[FeaturesAndLogits]:
    """Copies of ``folded``, one per weight grid, rounded and bias-corrected layer by layer on the
    simulated int8 network; the float network's pass is shared by the grids."""
    rounded = [copy.deepcopy(folded) for _ in qmaxes]
    reference = images
    first = Codes.quantize(lambda r: images[r].double(), images.shape)
    quantised = [first] * len(qmaxes)
    stages = [_stages(model.net) for model in rounded]
    order = _stages(folded.net)
    started = time.perf_counter()
    for s, (convs, residual) in enumerate(order):
        if s % 6 == 0 or s == len(order) - 1:
            log(f"stage {s + 1}/{len(order)}, {time.perf_counter() - started:.0f} s")
        block_in = reference, quantised
        for c, (conv, relu6) in enumerate(convs):
            targets = [stages[g][s][0][c][0] for g in range(len(qmaxes))]
            reference, quantised = _round_layer(conv, relu6, targets, qmaxes, reference, quantised)
        if residual:
            reference = reference + block_in[0]
            quantised = [
                Codes.quantize(lambda r, a=a, b=b: a.values(r) + b.values(r), a.codes.shape)
                for a, b in zip(quantised, block_in[1])
            ]
    return rounded


def round_weights(
    model: FeaturesAndLogits,
    calibration: np.ndarray,
    qmaxes: tuple[int, ...],
    log: Callable[[str], None] = lambda message: None,
) -> list[FeaturesAndLogits]:
    """Copies of ``model`` with batch norm folded, conv weights on each int8 grid in ``qmaxes``, biases corrected.

    ``calibration`` is NCHW float input. Every layer's activations are held for all images at
    once: the float network's in float32, each int8 network's as 8-bit codes. A qmax is the
    exporter's symmetric weight range: 127 for full int8, 64 for onnxruntime's 7-bit ``reduce_range``.
    """
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    images = torch.from_numpy(np.ascontiguousarray(calibration.transpose(0, 2, 3, 1), dtype=np.float32))
    with torch.no_grad():
        return _round_in_order(folded, images, tuple(qmaxes), log)
