"""Numerics the Numba kernels share: fastmath flags, a vectorisable float32 exp2, softmax, argmax."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Reassociation lets LLVM vectorise the dot products and sums; NaN/inf semantics are kept (no
# "nnan"/"ninf") because absent classes are -inf and input checks must see NaN.
FAST = {"reassoc", "contract", "nsz", "arcp"}
LOG2E = np.float32(1.4426950408889634)
LN2 = np.float32(math.log(2.0))
LOG_2PI = math.log(2.0 * math.pi)
# 2^f on [0, 1] = 1 + f (c1 + f (c2 + ... + f c5)): near-minimax relative error (a Lawson-reweighted
# least-squares fit with c0 = 1 fixed), 1.6e-7 evaluated in float32 (about one float32 ulp; the
# degree-8 Taylor series it replaced: 1.3e-7 with three multiply-adds more).
_C = tuple(np.float32(c) for c in (0.69315131, 0.24016445, 0.05579991, 0.00901703, 0.00186713))


@njit(cache=True, error_model="numpy", fastmath=FAST, inline="always")
def exp2(t: float) -> np.float32:
    """2^t in float32 for t <= 0 (t below -125 gives 2^-125, i.e. ~0): t = n + f with
    n = floor(t), 2^f by polynomial on [0, 1], times 2^n built in the exponent field of a float's
    bits. Branch-free, call-free and all in 32-bit lanes (np.floor keeps n a float32:
    math.floor would make it an int64, which AVX2 cannot convert in vector registers), so LLVM
    vectorises the loops that use it; numba has no vector exp without SVML."""
    t = max(np.float32(t), np.float32(-125.0))
    n = np.floor(t)
    f = np.float32(t - n)
    p = np.float32(1.0) + f * (_C[0] + f * (_C[1] + f * (_C[2] + f * (_C[3] + f * _C[4]))))
    return p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


@njit(cache=True, error_model="numpy")
def softmax(out: np.ndarray) -> None:
    """out <- exp(out - max) / sum, in place (-inf entries give 0)."""
    hi = -np.inf
    for k in range(out.shape[0]):
        hi = max(hi, out[k])
    total = 0.0
    for k in range(out.shape[0]):
        out[k] = math.exp(out[k] - hi)
        total += out[k]
    for k in range(out.shape[0]):
        out[k] /= total


@njit(cache=True, error_model="numpy")
def argmax(values: np.ndarray) -> int:
    best = 0
    for k in range(values.shape[0]):
        if values[k] > values[best]:
            best = k
    return best
