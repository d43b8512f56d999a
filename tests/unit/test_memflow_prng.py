"""The MemFlow graph PRNG against a plain-Python transcription of its written spec.

The spec (``edge_runtime.kernels.prng`` docstring) is what a C port implements; this file
implements it again from the text, in integer and IEEE float32 arithmetic only, and demands
bit-identical weights.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edge_runtime.kernels.prng import make_graph, splitmix64, uniform_pm1

MASK = (1 << 64) - 1


def py_splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def f32(value: float) -> float:
    """Round to IEEE float32, as a C float assignment does."""
    return struct.unpack("f", struct.pack("f", value))[0]


def py_weight(z: int) -> float:
    # (float)(z >> 40) * 2^-23 - 1.0f: every step is exact in float32, so Python floats agree.
    return f32(f32(float(z >> 40)) * f32(1.0 / 8388608.0) - 1.0)


def py_graph(seed: int, d: int, n_hub: int, n_bridge: int, in_degree: int):
    state = seed

    def draw() -> int:
        nonlocal state
        state, z = py_splitmix64(state)
        return z

    w_eh = [[py_weight(draw()) for _ in range(d)] for _ in range(n_hub)]
    w_hh = [[0.0 if j == i else py_weight(draw()) for j in range(n_hub)] for i in range(n_hub)]
    n_nodes = d + n_hub + n_bridge
    src, w_b = [], []
    for b in range(n_bridge):
        row_src, row_w = [], []
        for _ in range(in_degree):
            while True:
                s = draw() % n_nodes
                if s != d + n_hub + b and s not in row_src:
                    break
            row_src.append(s)
            row_w.append(py_weight(draw()))
        src.append(row_src)
        w_b.append(row_w)

    def gain(fan_in: int) -> float:
        return f32(f32(1.0) / f32(np.sqrt(np.float32(fan_in))))

    w_eh = [[f32(w * gain(d)) for w in row] for row in w_eh]
    if n_hub > 1:  # a single hub has no hub->hub links and no gain to apply
        w_hh = [[f32(w * gain(n_hub - 1)) for w in row] for row in w_hh]
    w_b = [[f32(w * gain(in_degree)) for w in row] for row in w_b]
    return (np.array(w_eh, np.float32), np.array(w_hh, np.float32), np.array(src, np.int32), np.array(w_b, np.float32))


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**64 - 1])
def test_splitmix64_matches_the_spec(seed: int) -> None:
    state = np.array([seed], dtype=np.uint64)
    py_state = seed
    for _ in range(200):
        py_state, expected = py_splitmix64(py_state)
        assert int(splitmix64(state)) == expected
    assert int(state[0]) == py_state


def test_first_output_of_seed_zero_is_the_published_vector() -> None:
    # splitmix64 seeded with 0: first output 0xE220A8397B1DCDAF (reference implementation).
    assert int(splitmix64(np.zeros(1, np.uint64))) == 0xE220A8397B1DCDAF


def test_weight_mapping_is_exact_and_in_range() -> None:
    for z in [0, 1 << 40, (1 << 63), MASK, 0x0123456789ABCDEF, 0xFEDCBA9876543210]:
        w = uniform_pm1(np.uint64(z))
        assert float(np.float32(w)) == float(w)  # representable in float32
        assert float(w) == (z >> 40) / 2**23 - 1.0  # exact: no rounding anywhere
        assert -1.0 <= float(w) < 1.0


@pytest.mark.parametrize("seed,sizes", [(0, (7, 4, 5, 3)), (99, (16, 6, 9, 8)), (2**63 + 5, (5, 1, 3, 2))])
def test_graph_is_bit_identical_to_the_spec(seed: int, sizes: tuple[int, int, int, int]) -> None:
    got = make_graph(seed, *sizes)
    expected = py_graph(seed, *sizes)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_graph_invariants_and_seed_dependence() -> None:
    d, n_hub, n_bridge, k = 64, 10, 40, 30
    w_eh, w_hh, src, w_b = make_graph(3, d, n_hub, n_bridge, k)
    assert np.all(np.diag(w_hh) == 0)
    for b in range(n_bridge):
        assert len(set(src[b].tolist())) == k  # distinct in-links
        assert d + n_hub + b not in src[b]  # no self loop
    assert src.min() >= 0 and src.max() < d + n_hub + n_bridge
    assert np.abs(w_eh).max() < 1 / np.sqrt(d) + 1e-7
    again = make_graph(3, d, n_hub, n_bridge, k)
    assert all(np.array_equal(a, b) for a, b in zip(again, (w_eh, w_hh, src, w_b)))
    other = make_graph(4, d, n_hub, n_bridge, k)
    assert not np.array_equal(other[0], w_eh)


def test_impossible_in_degree_is_refused() -> None:
    with pytest.raises(ValueError, match="in-degree"):
        make_graph(0, 2, 1, 1, 10)
