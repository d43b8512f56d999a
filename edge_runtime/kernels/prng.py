"""The seeded PRNG and the MemFlow random graph it generates, specified for bit-exact C ports.

A MemFlow memory file stores the seed and the sizes, never the weights: any implementation
(this one, the C99 read-out) regenerates the same graph from them. This docstring is the spec.

PRNG: splitmix64 (Steele, Lea, Flood 2014), one uint64 of state, all arithmetic modulo 2^64::

    state += 0x9E3779B97F4A7C15
    z = state
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)

The initial state is the seed itself (an integer in [0, 2^64)). Every draw below is one call.

uint64 -> weight in [-1, 1): keep the top 24 bits, ``u = z >> 40`` (0 <= u < 2^24), then, in
float32, ``w = (float)u * 2^-23 - 1.0f``. Both steps are exact in IEEE float32 (u has 24 bits; the
result is a multiple of 2^-23 in [-1, 1)), so every platform gets the same bits. In C:
``(float)(uint32_t)(z >> 40) * (1.0f / 8388608.0f) - 1.0f``.

uint64 -> index in [0, n): ``z % n`` (the modulo bias, below n / 2^64, is part of the spec).

Graph, with d entry nodes (the feature vector), H hub nodes, B bridge nodes and bridge in-degree
K; nodes are numbered globally: entry 0..d-1, hub d..d+H-1, bridge d+H..d+H+B-1. Draws happen in
exactly this order:

1. Entry -> hub, dense: for hub i = 0..H-1, for entry j = 0..d-1: ``w_entry_hub[i, j] = w(draw)``.
2. Hub -> hub, dense without self loops: for hub i = 0..H-1, for hub j = 0..H-1, skipping
   j == i (no draw; the weight stays 0): ``w_hub_hub[i, j] = w(draw)``.
3. Bridge in-links, sparse: for bridge b = 0..B-1, for slot s = 0..K-1: repeat
   ``src = draw % (d + H + B)`` until src is not the bridge's own global index d+H+b and not
   already among slots 0..s-1 of this bridge; then ``bridge_w[b, s] = w(draw)`` (one more draw).
   ``bridge_src[b, s] = src`` (a global node number). Slots keep their draw order.

Gains (applied after all draws, so they never change the draw sequence): every weight is then
multiplied, in float32, by ``g = 1.0f / sqrtf((float)fan_in)`` where fan_in is d for entry->hub,
H - 1 for hub->hub and K for bridge links. IEEE sqrtf and the product are correctly rounded, so
this too is bit-exact. (Change from the paper, which keeps U[-1, 1]: with fan-in gains a neuron's
input keeps the scale of its sources, so later propagation rounds neither explode nor vanish and
all T rounds contribute to the trace.)
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def splitmix64(state: np.ndarray) -> np.uint64:
    """Advance ``state`` (a uint64 array of one element) and return the next output.

    >>> s = np.array([0], dtype=np.uint64)
    >>> hex(int(splitmix64(s)))
    '0xe220a8397b1dcdaf'
    """
    state[0] = state[0] + _GOLDEN
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def uniform_pm1(z: np.uint64) -> np.float32:
    """Map a uint64 to float32 in [-1, 1) exactly: ``(z >> 40) * 2^-23 - 1``.

    >>> float(uniform_pm1(np.uint64(0))), float(uniform_pm1(np.uint64(2**63)))
    (-1.0, 0.0)
    """
    return np.float32(z >> np.uint64(40)) * np.float32(1.0 / 8388608.0) - np.float32(1.0)


@njit(cache=True)
def _graph_kernel(
    seed: np.uint64,
    d: int,
    n_hub: int,
    n_bridge: int,
    in_degree: int,
    w_entry_hub: np.ndarray,
    w_hub_hub: np.ndarray,
    bridge_src: np.ndarray,
    bridge_w: np.ndarray,
) -> None:
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    for i in range(n_hub):
        for j in range(d):
            w_entry_hub[i, j] = uniform_pm1(splitmix64(state))
    for i in range(n_hub):
        for j in range(n_hub):
            if j != i:
                w_hub_hub[i, j] = uniform_pm1(splitmix64(state))
    n_nodes = np.uint64(d + n_hub + n_bridge)
    for b in range(n_bridge):
        own = d + n_hub + b
        for s in range(in_degree):
            while True:
                src = np.int64(splitmix64(state) % n_nodes)
                ok = src != own
                for t in range(s):
                    if bridge_src[b, t] == src:
                        ok = False
                if ok:
                    break
            bridge_src[b, s] = src
            bridge_w[b, s] = uniform_pm1(splitmix64(state))
    # Gains after the draws (see the module docstring), in float32 like the C port.
    g = np.float32(1.0) / np.sqrt(np.float32(d))
    for i in range(n_hub):
        for j in range(d):
            w_entry_hub[i, j] *= g
    if n_hub > 1:
        g = np.float32(1.0) / np.sqrt(np.float32(n_hub - 1))
        for i in range(n_hub):
            for j in range(n_hub):
                w_hub_hub[i, j] *= g
    if in_degree > 0:
        g = np.float32(1.0) / np.sqrt(np.float32(in_degree))
        for b in range(n_bridge):
            for s in range(in_degree):
                bridge_w[b, s] *= g


def make_graph(
    seed: int, d: int, n_hub: int, n_bridge: int, in_degree: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Regenerate the network from its seed: (w_entry_hub (H, d), w_hub_hub (H, H),
    bridge_src (B, K) int32 global node numbers, bridge_w (B, K)), weights float32.

    >>> w_eh, w_hh, src, w_b = make_graph(7, d=4, n_hub=3, n_bridge=2, in_degree=2)
    >>> w_eh.shape, w_hh.shape, src.shape, float(w_hh[0, 0])
    ((3, 4), (3, 3), (2, 2), 0.0)
    """
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    n_nodes = d + n_hub + n_bridge
    if in_degree > n_nodes - 1:
        raise ValueError(f"bridge in-degree {in_degree} exceeds the {n_nodes - 1} other nodes")
    w_entry_hub = np.zeros((n_hub, d), dtype=np.float32)
    w_hub_hub = np.zeros((n_hub, n_hub), dtype=np.float32)
    bridge_src = np.zeros((n_bridge, in_degree), dtype=np.int64)
    bridge_w = np.zeros((n_bridge, in_degree), dtype=np.float32)
    _graph_kernel(np.uint64(seed), d, n_hub, n_bridge, in_degree, w_entry_hub, w_hub_hub, bridge_src, bridge_w)
    return w_entry_hub, w_hub_hub, bridge_src.astype(np.int32), bridge_w
