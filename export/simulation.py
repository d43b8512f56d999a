"""The int8 network the rounding (``rounding.py``) works on, computed exactly, layer by layer.

Activations of the int8 network are held as 8-bit codes with a per-tensor zero point and step
(``Codes``, NHWC); those of the float network as float32 NHWC. Everything the rounding decides on
is a sum of products of integers: codes times codes for H = sum x^ x^', codes times weight levels
for a layer's int8 output. Those sums are taken in float64, where every partial sum is an integer
below 2^53, so they are exact whatever order BLAS adds in: the same on any CPU, instruction set
and number of threads. The float network is computed in float64 too; its rounding noise (1e-16)
reaches the discrete choices only through continuous terms (the bias correction, stored in
float32, and the objective's linear term), where it would have to land within 1e-16 of a
threshold to change anything.

Why it matters: the rounding is a cascade of discrete choices (a weight's level, an activation's
code), and a choice that flips on float noise changes every layer after it. Computed in float32
(oneDNN convolutions, MKL products summed in an order that depends on the CPU and the threads),
the same recipe gave ImageNet top-1 agreement 0.957 on one machine and 0.935 on another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_runtime.export import int8_kernels as kernels

LEVELS = 255  # 8-bit activations: onnxruntime's uint8 and pt2e's int8 both have 256 levels
CHUNK_VALUES = 12 * 2**20  # float64 values of one chunk of images (96 MiB): bounds the temporaries
EXACT_FLOAT32 = 2**24  # integers below this add exactly in float32, in any order


@dataclass
class Codes:
    """A tensor on a per-tensor 8-bit affine grid: value = (codes - zero) * step."""

    codes: torch.Tensor  # uint8, (N, H, W, C)
    zero: int
    step: float

    def values(self, rows: slice) -> torch.Tensor:
        return (self.codes[rows].double() - self.zero) * self.step

    @classmethod
    def quantize(cls, chunk: Callable[[slice], torch.Tensor], shape: tuple[int, ...]) -> "Codes":
        """The float64 tensor of ``shape`` that ``chunk(rows)`` yields part by part, on the grid
        spanning its min, max and zero (as both exporters calibrate activations: min/max observers).

        >>> x = torch.tensor([[-0.5, 0.0, 1.2, 127.0]], dtype=torch.float64)
        >>> q = Codes.quantize(lambda rows: x[rows], x.shape)
        >>> q.codes.tolist(), q.zero, q.step
        ([[0, 1, 3, 255]], 1, 0.5)
        """
        parts = _chunks(shape[0], rows_per_chunk(math.prod(shape[1:])))
        low, high = 0.0, 0.0
        for rows in parts:
            part = chunk(rows)
            low, high = min(low, float(part.min())), max(high, float(part.max()))
        zero, step = _grid(low, high)
        codes = torch.zeros(shape, dtype=torch.uint8)
        if step:
            for rows in parts:  # computed again rather than held: one chunk at a time
                codes[rows] = torch.clamp(torch.round(chunk(rows) / step) + zero, 0, LEVELS).to(torch.uint8)
        return cls(codes, zero, step or 1.0)

    @classmethod
    def from_accumulator(cls, acc: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, relu6: bool) -> "Codes":
        """An int8 layer's output v = acc * alpha_c + beta_c (ReLU6 applied when ``relu6``) on the
        grid spanning its min, max and zero; ``acc`` (N, H, W, C) int32, ``alpha`` and ``beta`` (C,)."""
        flat = acc.numpy().reshape(-1, acc.shape[-1])
        scale, shift = alpha.double().numpy(), beta.double().numpy()
        zero, step = _grid(*kernels.value_range(flat, scale, shift, relu6))
        codes = torch.zeros(acc.shape, dtype=torch.uint8)
        if step:
            kernels.requantize(flat, scale, shift, relu6, step, zero, codes.numpy().reshape(flat.shape))
        return cls(codes, zero, step or 1.0)


def _grid(low: float, high: float) -> tuple[int, float]:
    """Zero point and step of the 8-bit grid spanning [low, high] and zero (step 0: all zero)."""
    low, high = min(low, 0.0), max(high, 0.0)
    step = (high - low) / LEVELS
    return (round(-low / step), step) if step else (0, 0.0)


def rows_per_chunk(values_per_row: int) -> int:
    """Images per chunk when each holds ``values_per_row`` float64 values."""
    return max(1, CHUNK_VALUES // values_per_row)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass(frozen=True)
class Geometry:
    """A convolution's shape: square kernel, stride, zero padding (left, right, top, bottom), and
    whether it is depthwise (one filter per channel) or dense."""

    kernel: int
    stride: int
    pad: tuple[int, int, int, int]
    depthwise: bool

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "Geometry":
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        if kh != kw or sh != sw:
            raise ValueError(f"{conv}: only square kernels and equal strides are simulated")
        if conv.groups not in (1, conv.in_channels) or (conv.groups > 1 and conv.out_channels != conv.in_channels):
            raise ValueError(f"{conv}: only dense and depthwise convolutions are simulated")
        left, right, top, bottom = pw, pw, ph, ph
        static = getattr(conv, "static_padding", None)
        if isinstance(static, nn.ZeroPad2d):
            sl, sr, st, sb = static.padding
            left, right, top, bottom = left + sl, right + sr, top + st, bottom + sb
        return cls(kh, sh, (left, right, top, bottom), conv.groups > 1)

    @property
    def pointwise(self) -> bool:
        """A 1x1 dense convolution: a matrix product over channels, no patches."""
        return self.kernel == 1 and self.stride == 1 and not any(self.pad) and not self.depthwise

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        left, right, top, bottom = self.pad
        return (
            (height + top + bottom - self.kernel) // self.stride + 1,
            (width + left + right - self.kernel) // self.stride + 1,
        )

    def taps(self, height: int, width: int) -> list[tuple[int, slice, slice, slice, slice]]:
        """For each kernel tap t: the output rows and columns it reaches and the input rows and
        columns they read (positions reading padding are left out: padding is zero)."""
        out_h, out_w = self.output_size(height, width)
        left, _, top, _ = self.pad
        k, s = self.kernel, self.stride
        taps = []
        for a in range(k):
            i0, i1 = _valid(a - top, s, height, out_h)
            for b in range(k):
                j0, j1 = _valid(b - left, s, width, out_w)
                taps.append(
                    (
                        a * k + b,
                        slice(i0, i1),
                        slice(j0, j1),
                        slice(s * i0 + a - top, s * (i1 - 1) + a - top + 1, s),
                        slice(s * j0 + b - left, s * (j1 - 1) + b - left + 1, s),
                    )
                )
        return taps


def _valid(offset: int, stride: int, size: int, outputs: int) -> tuple[int, int]:
    """Output positions [i0, i1) whose input index stride * i + offset lies inside [0, size)."""
    i0 = max(0, -(offset // stride))
    return i0, max(i0, min(outputs, (size - 1 - offset) // stride + 1))


class Layer:
    """One convolution of the network, run on chunks of images held NHWC.

    ``float_output`` is the float network's layer (float64); ``int8_output`` the int8 network's
    accumulator, sum of weight levels x centred input codes (exact); ``moments`` the sums the
    rounding needs. Patch matrices are built in a buffer kept across chunks.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        self.geometry = Geometry.of(conv)
        self.weight = conv.weight.detach().double().reshape(len(conv.weight), -1)  # (rows, n)
        self._columns: torch.Tensor | None = None

    def rows_per_chunk(self, height: int, width: int, channels: int) -> int:
        """Images per chunk for an input (height, width, channels): bounds the float64 temporaries
        (a dense layer's patch matrix, a depthwise layer's output)."""
        out_h, out_w = self.geometry.output_size(height, width)
        taps = 1 if self.geometry.depthwise else self.geometry.kernel**2
        return rows_per_chunk(out_h * out_w * channels * taps)

    def columns(self, x: torch.Tensor, zero: int = 0) -> torch.Tensor:
        """Every input patch of ``x`` (n, H, W, C) minus ``zero``, float64 (C*k*k, P) for a dense
        layer: column p is the patch of output position p, in torch's weight order."""
        n, height, width, channels = x.shape
        if self.geometry.pointwise:
            flat = x.reshape(-1, channels).double()
            return (flat.sub_(zero) if zero else flat).T
        source = x.permute(3, 0, 1, 2).double()  # (C, n, H, W): one copy, converted
        if zero:
            source.sub_(zero)
        out_h, out_w = self.geometry.output_size(height, width)
        shape = (channels, self.geometry.kernel**2, n, out_h, out_w)
        if self._columns is None or self._columns.shape != shape:
            self._columns = torch.zeros(shape, dtype=torch.float64)  # taps never write their padding
        for t, out_i, out_j, in_i, in_j in self.geometry.taps(height, width):
            self._columns[:, t, :, out_i, out_j] = source[:, :, in_i, in_j]
        return self._columns.reshape(channels * shape[1], -1)

    def float_output(self, x: torch.Tensor) -> torch.Tensor:
        """(P, rows) float64: the float layer, bias left out, on float input ``x`` (n, H, W, C)."""
        if not self.geometry.depthwise:
            return self.columns(x).T @ self.weight.T
        n, height, width, channels = x.shape
        out = np.empty((n, *self.geometry.output_size(height, width), channels))
        left, _, top, _ = self.geometry.pad
        kernels.depthwise_conv(
            x.numpy(), self.weight.numpy(), self.geometry.kernel, self.geometry.stride, top, left, out
        )
        return torch.from_numpy(out.reshape(-1, channels))

    def int8_output(self, codes: torch.Tensor, zero: int, levels: torch.Tensor) -> torch.Tensor:
        """(P, rows) int32: sum of ``levels`` (rows, n) x (codes - zero) over each patch, exact.

        float32 where no partial sum can reach 2^24 (then any order of adding gives the exact
        integer, and torch's own convolution kernels can be used), float64 elsewhere."""
        largest_code = max(zero, LEVELS - zero)
        bound = float(levels.abs().sum(dim=1).max()) * largest_code
        if self.geometry.depthwise:
            if bound >= EXACT_FLOAT32:
                raise ValueError(f"depthwise accumulator bound {bound:.0f} exceeds float32's exact range")
            x = codes.float().sub_(zero).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
            left, right, top, bottom = self.geometry.pad
            kernel = levels.float().reshape(len(levels), 1, self.geometry.kernel, self.geometry.kernel)
            out = F.conv2d(
                F.pad(x, (left, right, top, bottom)), kernel, stride=self.geometry.stride, groups=len(levels)
            )
            return out.permute(0, 2, 3, 1).reshape(-1, len(levels)).to(torch.int32)
        if self.geometry.pointwise and bound < EXACT_FLOAT32:
            x = codes.reshape(-1, codes.shape[-1]).float().sub_(zero)
            return (x @ levels.float().T).to(torch.int32)
        return (self.columns(codes, zero).T @ levels.T).to(torch.int32)

    def moments(self, codes: torch.Tensor, zero: int, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gram, cross) over the patches of centred ``codes``: gram = sum c c' ((n, n), or
        (C, k*k, k*k) depthwise; exact), cross = sum out_r c' for every row r of ``out`` (P, rows)."""
        if self.geometry.depthwise:
            channels, taps = self.weight.shape
            gram, cross = np.zeros((channels, taps, taps)), np.zeros((channels, taps))
            out_h, out_w = self.geometry.output_size(codes.shape[1], codes.shape[2])
            left, _, top, _ = self.geometry.pad
            source = codes.permute(3, 0, 1, 2).contiguous().numpy()  # channel-major: a channel's rows together
            geometry = (
                self.geometry.kernel,
                self.geometry.stride,
                top,
                left,
                out_h,
                out_w,
                *kernels.block_shape(out_w),
            )
            kernels.depthwise_gram(source, zero, *geometry, gram)
            kernels.depthwise_cross(source, zero, out.T.contiguous().numpy(), *geometry, cross)
            return torch.from_numpy(gram), torch.from_numpy(cross)
        cols = self.columns(codes, zero)
        return cols @ cols.T, out.T @ cols.T
