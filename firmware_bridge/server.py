"""Many TCP peers at once: an asyncio server in front of one adapter thread.

Each connection is a coroutine with its own ``Link`` (framing + authentication); the requests it
decodes go to the ``Worker``, the one thread that touches the adapter, which serves them in
arrival order across all connections. The worker takes every request that is waiting as one
batch, so concurrent TEACHes share one journal fsync (group commit).

Bounded by design: at most ``max_connections`` peers (one more is told BUSY and closed), an idle
peer is closed after ``idle_timeout`` seconds, a frame that has started arriving must end within
``frame_timeout`` seconds, and a peer that does not read its replies is closed after the same
time. ``stop()`` stops accepting, lets each connection finish the request in hand, and returns
once every connection is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sys
import threading
import time
import traceback
from typing import Callable, Optional

from firmware_bridge.auth import KeyRing
from firmware_bridge.device import BridgeDevice, Link, Reply, Step
from firmware_bridge.framing import Packet
from firmware_bridge.messages import Error, ErrorCode


class Worker:
    """The single writer: runs ``device.handle_batch`` on batches of waiting requests, in arrival order."""

    def __init__(self, device: BridgeDevice, *, max_batch: int = 256) -> None:
        self.device = device
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edgert-bridge-worker", daemon=True)
        self._thread.start()

    def submit(self, requests: list[Packet]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((requests, future))
        return future

    def close(self) -> None:
        """Serve what was submitted, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            closing = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more)
            flat = [request for requests, _ in batch for request in requests]
            try:
                replies = self.device.handle_batch(flat)
            except Exception as err:  # handle_batch answers every bad request itself: this is a defect
                traceback.print_exc(file=sys.stderr)
                for _, future in batch:
                    future.set_exception(err)
            else:
                start = 0
                for requests, future in batch:
                    future.set_result(replies[start : start + len(requests)])
                    start += len(requests)
            try:
                self.device.maintain()
            except Exception:  # the journal still holds every change; the thread must live on
                traceback.print_exc(file=sys.stderr)
            if closing:
                return


class BridgeServer:
    """Serve ``device`` to TCP peers on ``host:port`` (port 0: any free port, see ``port`` once started)."""

    def __init__(
        self,
        device: BridgeDevice,
        host: str,
        port: int,
        *,
        keys: Optional[KeyRing] = None,
        max_connections: int = 64,
        idle_timeout: float = 60.0,
        frame_timeout: float = 10.0,
        once: bool = False,
        log: Callable[[str], None] = lambda line: print(f"edgert bridge: {line}", file=sys.stderr),
    ) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.keys = keys
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.once = once
        self.log = log
        self.refused = 0
        self.timed_out = 0
        self.served_connections = 0
        self._connections: dict[asyncio.Task, bool] = {}  # task -> busy with a request
        self._stopping: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._worker: Optional[Worker] = None
        self._stop_requested = False

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop accepting and close every connection once its request in hand is answered.

        Safe from a signal handler or another thread, before ``serve`` starts too.
        """
        self._stop_requested = True
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for task, busy in self._connections.items():
            if not busy:
                task.cancel()  # waiting for bytes: nothing in hand

    async def serve(self, started: Callable[[], None] = lambda: None) -> None:
        """Run until ``stop()`` (or, with ``once``, until the first connection closes)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._worker = Worker(self.device)
        server = await asyncio.start_server(self._accept, self.host, self.port, backlog=128)
        self.port = server.sockets[0].getsockname()[1]
        started()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            self._begin_stop()
            if self._connections:
                await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()
            self._worker.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self._stopping is not None and self._stopping.is_set():
            writer.close()
            return
        link = Link(self.device, self.keys)
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            self.log(f"refused {name}: {self.max_connections} connections open (--max-connections)")
            await self._close(
                writer,
                link,
                Error(
                    ErrorCode.BUSY,
                    f"this device serves at most {self.max_connections} " f"connections; try again later",
                ),
            )
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        self.served_connections += 1
        self.log(f"connection from {name} ({len(self._connections)} open)")
        reason = "closed by the peer"
        try:
            reason = await self._converse(task, reader, writer, link)
        except asyncio.CancelledError:
            reason = "server stopping"
        except (ConnectionError, OSError) as err:
            reason = f"connection error: {err}"
        except Exception as err:  # a defect behind this connection: the others keep being served
            reason = f"closed after an internal error: {type(err).__name__}: {err}"
        finally:
            del self._connections[task]
            writer.close()
            self.log(f"{name} {reason} ({len(self._connections)} open)")
            if self.once and self._stopping is not None:
                self._stopping.set()

    async def _converse(
        self, task: asyncio.Task, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link
    ) -> str:
        assert self._worker is not None and self._stopping is not None
        frame_deadline: Optional[float] = None
        while not self._stopping.is_set():
            if frame_deadline is None:
                wait, why = self.idle_timeout, f"idle for {self.idle_timeout:g} s"
            else:
                wait, why = frame_deadline - time.monotonic(), f"a frame took over {self.frame_timeout:g} s to arrive"
            try:
                data = await asyncio.wait_for(reader.read(65536), max(wait, 0.0))
            except asyncio.TimeoutError:
                self.timed_out += 1
                await self._close(writer, link, Error(ErrorCode.TIMEOUT, f"closing: {why}"))
                return f"closed: {why}"
            if not data:
                return "closed by the peer"
            self._connections[task] = True  # from here the request in hand is answered, even when stopping
            self.device.rx_bytes += len(data)
            requests, steps = link.plan(data)
            replies: list[list[Reply]] = []
            if requests:
                replies = await asyncio.wrap_future(self._worker.submit(requests))
            wire = link.render(steps, replies)
            if wire:
                writer.write(wire)
                try:
                    await asyncio.wait_for(writer.drain(), self.frame_timeout)
                except asyncio.TimeoutError:
                    self.timed_out += 1
                    return f"closed: replies unread for {self.frame_timeout:g} s"
            self._connections[task] = False
            if link.framing.partial:
                frame_deadline = frame_deadline or time.monotonic() + self.frame_timeout
            else:
                frame_deadline = None
        return "server stopping"

    async def _close(self, writer: asyncio.StreamWriter, link: Link, error: Error) -> None:
        """Tell the peer why (best effort: it may not be reading) and close."""
        wire = link.render([Step([Reply(0, error)])], [])
        writer.write(wire)
        try:
            await asyncio.wait_for(writer.drain(), 1.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        writer.close()


__all__ = ["BridgeServer", "Worker"]
