"""Fixtures of both tiers. ``unit/`` needs no exported model; ``integration/`` exports once (its
own conftest) and uses the real backbone."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest


@pytest.fixture(scope="module")
def one_blas_thread():
    """As ``edgert bench accuracy`` does: skinny matrices gain nothing from BLAS threads, and on a
    shared machine the threads' synchronisation makes source fits many times slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


class ServerThread:
    """``with ServerThread(server):`` a ``firmware_bridge.server.BridgeServer`` serves on its own
    thread (its asyncio loop) for the block, and is stopped at its end."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.started = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(server.serve(started=self.started.set)), daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        assert self.started.wait(30)
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.thread.join(30)


@pytest.fixture
def serving() -> type[ServerThread]:
    """``with serving(server):``: the bridge server in-process on loopback for the block."""
    return ServerThread
