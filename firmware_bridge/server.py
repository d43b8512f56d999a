"""Many TCP peers at once: an asyncio server in front of one adapter thread.

Each connection is a coroutine with its own ``Link`` (framing + authentication); the requests it
decodes go to the ``Worker``, the one thread that touches the adapter, which serves them in
arrival order across all connections. The worker takes every request that is waiting as one
batch, so concurrent TEACHes share one journal fsync (group commit).

Bounded by design, each bound a parameter (and an ``edgert bridge serve`` option):

- ``max_connections`` peers in all (one more is told BUSY and closed), ``max_per_address`` from
  one address and ``max_unproven`` not yet proven (on a keyed device: not authenticated; without
  a key: no request served yet). A connection that would pass one of the last two takes the place
  of the oldest unproven one that counts towards it (told BUSY and closed); if there is none it
  is told BUSY and closed itself. Idle sockets therefore never lock a key holder out.
- ``auth_timeout``: a keyed connection must authenticate within it (TIMEOUT otherwise);
  ``idle_timeout``: an idle peer is closed; ``frame_timeout``: a frame that has started arriving
  must end within it, and a peer that does not read its replies is closed after the same time.
- ``max_pending`` requests of one connection are served at a time: their replies are written and
  drained before the next ones are taken, and nothing more is read from that peer meanwhile
  (backpressure through TCP, not a queue), so a read of thousands of small requests never
  queues thousands of replies.
- ``export_rate``: STATE_EXPORT requests per second for the whole device (a token bucket with one
  second of burst); a connection over it waits, reading nothing more.

``stop()`` stops accepting, lets each connection finish the request in hand, and returns once every
connection is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

from firmware_bridge.auth import KeyRing
from firmware_bridge.codes import ErrorCode
from firmware_bridge.device import BridgeDevice, Reply
from firmware_bridge.framing import Packet
from firmware_bridge.link import Link, Step
from firmware_bridge.messages import Error, StateExportRequest


@dataclass
class _Connection:
    address: str
    opened: float
    writer: asyncio.StreamWriter
    link: Link
    busy: bool = False  # a request in hand: answered even when stopping
    served: int = 0  # requests served
    evicted: bool = False

    @property
    def proven(self) -> bool:
        """Authenticated (keyed device) or served a request (keyless): not an idle stranger."""
        session = self.link.session
        return session.authenticated if session is not None else self.served > 0


@dataclass
class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``rate`` (one second) in hand."""

    rate: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.rate

    def wait(self, n: int) -> float:
        """Take ``n`` tokens; the seconds to wait before using them (0 if in hand)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


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
        max_per_address: int = 16,
        max_unproven: int = 16,
        auth_timeout: float = 10.0,
        max_pending: int = 8,
        export_rate: float = 50.0,
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
        self.max_per_address = max_per_address
        self.max_unproven = max_unproven
        self.auth_timeout = auth_timeout
        self.max_pending = max(1, max_pending)
        self.export_bucket = _Bucket(export_rate)
        self.once = once
        self.log = log
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.served_connections = 0
        self.export_waits = 0
        self._connections: dict[asyncio.Task, _Connection] = {}
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
        for task, conn in self._connections.items():
            if not conn.busy:
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
        address = peer[0] if peer else "?"
        refusal = self._make_room(address)
        if refusal:
            self.refused += 1
            self.log(f"refused {name}: {refusal}")
            await self._close(writer, link, Error(ErrorCode.BUSY, f"{refusal}; try again later"))
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = _Connection(address, time.monotonic(), writer, link)
        self.served_connections += 1
        self.log(f"connection from {name} ({len(self._connections)} open)")
        reason = "closed by the peer"
        try:
            reason = await self._converse(task, reader, writer, link)
        except asyncio.CancelledError:
            conn = self._connections.get(task)
            reason = (
                "evicted: an unproven connection made room for a new one"
                if conn and conn.evicted
                else "server stopping"
            )
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

    def _make_room(self, address: str) -> str:
        """'' if a new connection from ``address`` may be served (evicting the oldest unproven
        connection that counts towards a full bound, if need be), else why it may not."""
        live = [c for c in self._connections.values() if not c.evicted]
        if len(live) >= self.max_connections:  # the cap itself: refused, as since revision 2
            return f"{self.max_connections} connections open (--max-connections)"
        bounds = [
            (self.max_per_address, f"connections from {address} (--max-per-address)", lambda c: c.address == address),
            (self.max_unproven, "connections not yet authenticated (--max-unproven)", lambda c: not c.proven),
        ]
        for limit, what, counts in bounds:
            live = [c for c in self._connections.values() if not c.evicted and counts(c)]
            if len(live) < limit:
                continue
            victims = sorted((c for c in live if not c.proven and not c.busy), key=lambda c: c.opened)
            if not victims:
                return f"{limit} {what}"
            self._evict(victims[0], f"{limit} {what}")
        return ""

    def _evict(self, conn: _Connection, why: str) -> None:
        conn.evicted = True
        self.evicted += 1
        try:
            conn.writer.write(
                conn.link.render(
                    [
                        Step(
                            [
                                Reply(
                                    0,
                                    Error(
                                        ErrorCode.BUSY,
                                        f"closing: {why}, and this "
                                        f"connection is the oldest "
                                        f"unauthenticated one",
                                    ),
                                )
                            ]
                        )
                    ],
                    [],
                )
            )
        except (ConnectionError, OSError, RuntimeError):
            pass
        for task, c in self._connections.items():
            if c is conn:
                task.cancel()
                break

    async def _converse(
        self, task: asyncio.Task, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link
    ) -> str:
        assert self._worker is not None and self._stopping is not None
        conn = self._connections[task]
        frame_deadline: Optional[float] = None
        auth_deadline = time.monotonic() + self.auth_timeout if link.session is not None else None
        try:
            writer.transport.set_write_buffer_limits(high=256 * 1024)
        except (AttributeError, RuntimeError):
            pass
        while not self._stopping.is_set():
            if frame_deadline is None:
                wait, why = self.idle_timeout, f"idle for {self.idle_timeout:g} s"
            else:
                wait, why = frame_deadline - time.monotonic(), f"a frame took over {self.frame_timeout:g} s to arrive"
            if link.session is not None:  # the deadline runs while unauthenticated: from connect, or a new HELLO
                if link.session.authenticated:
                    auth_deadline = None
                elif auth_deadline is None:
                    auth_deadline = time.monotonic() + self.auth_timeout
            if auth_deadline is not None and auth_deadline - time.monotonic() < wait:
                wait, why = auth_deadline - time.monotonic(), f"not authenticated within {self.auth_timeout:g} s"
            try:
                data = await asyncio.wait_for(reader.read(65536), max(wait, 0.0))
            except asyncio.TimeoutError:
                self.timed_out += 1
                await self._close(writer, link, Error(ErrorCode.TIMEOUT, f"closing: {why}"))
                return f"closed: {why}"
            if not data:
                return "closed by the peer"
            conn.busy = True  # from here the requests in hand are answered, even when stopping
            self.device.rx_bytes += len(data)
            # Frames are decoded (and their MACs checked) max_pending at a time too: one read of
            # thousands of tiny requests never holds the event loop for all of them at once.
            for piece in _pieces(data, self.max_pending):
                requests, steps = link.plan(piece)
                # At most max_pending requests at a time: their replies are drained before the next
                # ones are served, and the peer is not read meanwhile (backpressure, not a queue).
                for group_steps, group in _groups(steps, requests, self.max_pending):
                    exports = sum(isinstance(r.body, StateExportRequest) for r in group)
                    if exports:
                        pause = self.export_bucket.wait(exports)
                        if pause > 0:
                            self.export_waits += 1
                            await asyncio.sleep(pause)
                    replies: list[list[Reply]] = []
                    if group:
                        replies = await asyncio.wrap_future(self._worker.submit(group))
                        conn.served += len(group)
                    wire = link.render(group_steps, replies)
                    if wire:
                        writer.write(wire)
                        try:
                            await asyncio.wait_for(writer.drain(), self.frame_timeout)
                        except asyncio.TimeoutError:
                            self.timed_out += 1
                            return f"closed: replies unread for {self.frame_timeout:g} s"
                await asyncio.sleep(0)  # let the other connections in between
            conn.busy = False
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


def _pieces(data: bytes, frames: int):
    """``data`` cut after every ``frames``-th 0x00 delimiter (the last piece holds the rest)."""
    start = 0
    while start < len(data):
        end = start
        for _ in range(frames):
            zero = data.find(0, end)
            if zero < 0:
                end = len(data)
                break
            end = zero + 1
        yield data[start:end]
        start = end


def _groups(steps: list[Step], requests: list, size: int):
    """``(steps, requests)`` in consecutive groups holding at most ``size`` requests each, the
    steps' request indices renumbered within their group."""
    group_steps: list[Step] = []
    start = 0
    for step in steps:
        if step.replies is None:
            if step.index - start >= size:
                yield group_steps, requests[start : step.index]
                group_steps, start = [], step.index
            step = step._replace(index=step.index - start)
        group_steps.append(step)
    yield group_steps, requests[start:]


__all__ = ["BridgeServer", "Worker"]
