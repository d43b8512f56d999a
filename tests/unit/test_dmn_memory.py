"""DMN: ring semantics, read-out against a plain numpy reference, prior plug-ins, state, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.adapters import make_adapter
from edge_runtime.adapters.dmn import DMN
from edge_runtime.adapters.linear import Linear
from edge_runtime.errors import InputError
from edge_runtime.kernels import dmn as kernels

C, D = 3, 16


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def blobs(n_per_class: int, seed: int = 0, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, D))
    y = np.repeat(np.arange(C), n_per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), D))).astype(np.float32), y


def empty_ring(L: int):
    return (
        np.zeros((C, L, D), np.float32),
        np.full((C, L), np.inf, np.float32),
        np.zeros(C, np.int32),
        np.zeros((C, L, L), np.float32),
    )


def reference_logits(ring, fill, anchors, f, beta, scale, skip_cls, skip_slot):
    """DMN read-out written the obvious way: weighted sum over d, normalise, dot."""
    out = np.empty(len(ring), np.float64)
    for c in range(len(ring)):
        rows = [l for l in range(fill[c]) if not (c == skip_cls and l == skip_slot)]
        if not rows:
            out[c] = scale * anchors[c] @ f
            continue
        m = ring[c, rows].astype(np.float64)
        a = np.exp(-beta * (1.0 - m @ f))
        proto = a @ m
        out[c] = scale * (proto / np.linalg.norm(proto)) @ f
    return out


def test_ring_fills_in_order_then_replaces_only_a_more_uncertain_slot():
    L = 4
    ring, ent, fill, gram = empty_ring(L)
    feats = unit(np.random.default_rng(1).normal(size=(8, D)))
    for l, h in enumerate([0.5, 0.9, 0.2, 0.7]):
        assert kernels.ring_write(ring, ent, fill, gram, feats[l], 1, np.float32(h)) == l
    assert list(fill) == [0, L, 0]
    # Full: a sample no more certain than the worst slot (0.9 in slot 1) is refused, memory untouched.
    before = ring.copy()
    assert kernels.ring_write(ring, ent, fill, gram, feats[4], 1, np.float32(0.9)) == -1
    np.testing.assert_array_equal(ring, before)
    # A more certain one replaces exactly the highest-entropy slot.
    assert kernels.ring_write(ring, ent, fill, gram, feats[5], 1, np.float32(0.1)) == 1
    np.testing.assert_array_equal(ring[1, 1], feats[5])
    np.testing.assert_allclose(ent[1], [0.5, 0.1, 0.2, 0.7])
    # Next worst is slot 3 (0.7).
    assert kernels.ring_write(ring, ent, fill, gram, feats[6], 1, np.float32(0.3)) == 3
    m = ring[1].astype(np.float64)
    np.testing.assert_allclose(gram[1], m @ m.T, atol=1e-5)


@pytest.mark.parametrize("skip", [(-1, -1), (0, 1), (2, 0)])
def test_read_out_matches_reference_with_skipped_slot_and_empty_class(skip):
    L = 5
    rng = np.random.default_rng(2)
    ring, ent, fill, gram = empty_ring(L)
    for c, n in [(0, 5), (2, 1)]:  # class 1 stays empty: it must read as its anchor
        for row in unit(rng.normal(size=(n, D))):
            kernels.ring_write(ring, ent, fill, gram, row, c, np.float32(rng.random()))
    anchors = unit(rng.normal(size=(C, D)))
    f = unit(rng.normal(size=D))
    out = np.empty(C, np.float32)
    kernels.ring_logits(
        ring, fill, gram, anchors, f, np.float32(5.5), np.float32(100.0), skip[0], skip[1], np.empty(L, np.float32), out
    )
    np.testing.assert_allclose(out, reference_logits(ring, fill, anchors, f, 5.5, 100.0, *skip), rtol=1e-4, atol=1e-3)
    if skip == (2, 0):  # class 2's only slot skipped -> the anchor
        assert out[2] == pytest.approx(100.0 * float(anchors[2] @ f), abs=1e-3)


def reference_stream(prior: np.ndarray, stream: np.ndarray, anchors: np.ndarray, L: int, skip_own: bool) -> np.ndarray:
    """Online DMN (dynamic memory only) in plain numpy: write by prior pseudo-label, then read."""
    slots = [[] for _ in range(C)]  # per class: [feature, entropy]
    out = []
    for p0, f in zip(prior, stream.astype(np.float64)):
        k = int(p0.argmax())
        h = float(-(p0 * np.log(p0, where=p0 > 0, out=np.zeros_like(p0))).sum())
        own = None
        if len(slots[k]) < L:
            own = len(slots[k])
            slots[k].append([f, h])
        else:
            worst = int(np.argmax([e for _, e in slots[k]]))
            if h < slots[k][worst][1]:
                own, slots[k][worst] = worst, [f, h]
        ring = np.zeros((C, L, D))
        fill = np.array([len(s) for s in slots])
        for c in range(C):
            for l, (row, _) in enumerate(slots[c]):
                ring[c, l] = row
        logits = reference_logits(
            ring, fill, anchors, f, 5.5, 100.0, k if skip_own else -1, own if (skip_own and own is not None) else -1
        )
        p_dyn = np.exp(logits - logits.max())
        fused = p0 + p_dyn / p_dyn.sum()
        out.append(fused / fused.sum())
    return np.array(out)


def test_a_sample_never_retrieves_its_own_slot():
    x, y = blobs(30)
    dmn = DMN(
        prior="prototypes", memory_length=4, scale=100.0, weight_dynamic=1.0, write_gate=1.0, shift_momentum=None
    ).fit(x, y)
    stream = unit(blobs(12, seed=5, spread=1.2)[0][np.random.default_rng(0).permutation(3 * 12)])
    prior = dmn.prior_proba(stream).astype(np.float64)
    got = dmn.adapt(stream)
    assert dmn.memory_fill.max() == 4  # a ring filled, so replacements were exercised
    fixed = reference_stream(prior, stream, dmn._anchors, 4, skip_own=True)
    np.testing.assert_allclose(got, fixed, atol=2e-4)
    # The trap of the official code (the sample reads itself at weight 1) is a different function.
    trap = reference_stream(prior, stream, dmn._anchors, 4, skip_own=False)
    assert np.abs(got - trap).max() > 1e-2


def test_footprint_is_fixed_and_allocated_once():
    x, y = blobs(30)
    dmn = DMN(memory_length=6).fit(x, y)
    ring = dmn._ring
    nbytes = sum(a.nbytes for a in dmn._arrays().values())
    dmn.adapt(unit(blobs(200, seed=3)[0]))
    assert dmn._ring is ring and ring.shape == (C, 6, D)
    assert sum(a.nbytes for a in dmn._arrays().values()) == nbytes
    assert (dmn.memory_fill <= 6).all() and dmn.memory_fill.sum() > 0


def test_linear_prior_is_the_shared_linear_head():
    x, y = blobs(30)
    dmn = DMN(prior="linear").fit(x, y)
    head = Linear().fit(x, y)
    q = blobs(5, seed=9)[0]
    # Two independent float32 fits: equal up to summation order (BLAS threads), not bit for bit.
    np.testing.assert_allclose(dmn.prior_proba(q), head.predict_proba(q), atol=1e-5)


def test_text_prior_reads_a_npy_matrix(tmp_path):
    x, y = blobs(30)
    text = unit(np.stack([x[y == c].mean(axis=0) for c in range(C)]))
    path = tmp_path / "text.npy"
    np.save(path, text * 3.0)  # any scale: rows are normalised on load
    dmn = DMN(prior="text", text_embeddings=str(path)).fit(x, y)
    q = unit(blobs(5, seed=9)[0])
    logits = 100.0 * q @ text.T
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(dmn.prior_proba(q), expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    np.save(path, text[:2])
    with pytest.raises(InputError, match="2 rows"):
        DMN(prior="text", text_embeddings=str(path)).fit(x, y)
    with pytest.raises(InputError, match="text_embeddings"):
        DMN(prior="text").fit(x, y)


def test_static_memory_holds_fit_samples_and_teach_is_fifo():
    x, y = blobs(30)
    dmn = DMN(prior="prototypes", static_length=4, weight_static=1.0).fit(x, y)
    assert list(dmn._static_fill) == [4, 4, 4]
    new = unit(np.random.default_rng(4).normal(size=(5, D)))
    dmn.teach(new, np.zeros(5, dtype=np.int64))
    # The 4 newest survive, the oldest is gone.
    closest = np.abs(dmn._static[0][None, :, :] - new[:, None, :]).max(axis=2).min(axis=1)
    assert (closest[1:] < 1e-6).all() and closest[0] > 1e-2


def test_state_round_trip_continues_identically():
    x, y = blobs(30)
    stream = blobs(40, seed=6)[0]
    a = DMN(memory_length=5, weight_static=0.5).fit(x, y)
    a.adapt(stream[:60])
    b = DMN.from_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.adapt(stream[60:]), b.adapt(stream[60:]))


def test_registered_and_bad_input_is_refused():
    x, y = blobs(10)
    dmn = make_adapter("dmn").fit(x, y)
    with pytest.raises(InputError, match="width"):
        dmn.adapt(np.ones((1, D + 1), np.float32))
    bad = x[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dmn.adapt(bad)
    with pytest.raises(InputError, match="prior"):
        DMN(prior="clip").fit(x, y)
    with pytest.raises(InputError, match="fitted"):
        DMN().adapt(x[:1])
