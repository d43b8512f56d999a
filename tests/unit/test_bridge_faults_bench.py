"""``edgert bench faults`` at a tiny size: every part runs against real server processes and the
report section is written (and rewritten in place, not appended twice)."""

from __future__ import annotations

import numpy as np

from edge_runtime.bench import faults


def test_numbers_survive_normalisation() -> None:
    from edge_runtime.adapters.base import as_features

    rng = np.random.default_rng(0)
    x = np.stack([faults.numbered(t, rng) for t in (1, 977, 99_999)])
    assert faults.numbers_of(as_features(x)).tolist() == [1, 977, 99_999]


def test_ledger_counts_only_acknowledged_operations() -> None:
    ledger = faults.Acknowledged()
    ledger.acked, ledger.forgotten = {1, 2, 3}, {3}
    ledger.unsure_teach, ledger.unsure_forget = {4}, {2}
    # 2's FORGET was in flight (either way is right), 4's TEACH landed, 1 is missing: one loss.
    assert ledger.reconcile({4: 40}) == (1, 0)
    assert ledger.acked == {1, 2, 3, 4} and ledger.forgotten == {2, 3}
    assert ledger.reconcile({1: 10, 3: 30, 4: 40, 7: 70}) == (1, 1)  # 3 came back; 7 was never taught
