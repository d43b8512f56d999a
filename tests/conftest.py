"""Fixtures of both tiers. ``unit/`` needs no exported model; ``integration/`` exports once (its
own conftest) and uses the real backbone."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_blas_thread():
    """As ``edgert bench accuracy`` does: skinny matrices gain nothing from BLAS threads, and on a
    shared machine the threads' synchronisation makes source fits many times slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
