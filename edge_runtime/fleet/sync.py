"""``FleetSync``: a device's memory statistics shared with its fleet over an MQTT broker.

A running stream calls ``teach``/``forget`` through the sync and ``step()`` between frames; the
adapter is changed only there, on the stream's thread (paho's network thread verifies payloads
and queues them). What is shared is the part of the memory that merges exactly by addition
(``adapter.statistics()``; for MemFlow the labelled statistics that ``fit`` and ``teach`` write),
as contributions per device (``edge_runtime.fleet.ledger``).

Topics, all under ``edgert/<fleet>/<model sha256[:12]>/``:

- ``delta/<device>``: a device's change since its last update, QoS 1, ``(device, seq)`` in the
  header; published at the first frame boundary ``publish_every`` frames or ``publish_seconds``
  after the last update, when there is something to publish (teach, forget), and by ``flush()``;
- ``snapshot/<device>``: its whole contribution as of ``seq``, QoS 1, retained: what a device that
  joins late, was offline or missed a delta catches up from; published at most every
  ``snapshot_seconds`` while updates go out (a snapshot holds every class: a delta is a tenth of
  it), by ``flush()``, and after every (re)connection, so a broker that lost its retained messages
  gets them back;
- ``presence/<device>``: retained JSON (online, seq, bytes sent, final), with an LWT saying offline;
  ``final`` once the device's stream has ended and its last update is out (``finish``);
- ``sync/<device>``: a token a device sends itself after subscribing: when it comes back, every
  retained snapshot has arrived (``ready``), and only then does the device publish.

Durability: with ``persist`` set (the stream's checkpoint), a device writes its checkpoint, which
holds the ledger and the updates not yet acknowledged by the broker (the outbox), *before* it
publishes an update: nothing leaves a device that its checkpoint does not know, so after a
restart it never reuses a sequence number, and it sends the outbox again (duplicates are
ignored). A peer update applied after the last checkpoint is lost by a crash, and comes back
from the peer's retained snapshot (its sequence number is newer than the checkpoint's). A device
whose checkpoint is older than what it had published (its newest checkpoint was unreadable)
takes its own retained snapshot back (``adopted``), as far as that snapshot goes.

The final exchange (``finish``, before a stream's last checkpoint, at its end or on SIGTERM):
the device publishes what is pending and its snapshot, says ``final`` in its presence, then
applies peers' updates until every peer it knows of is final or offline and its last announced
update is applied, or ``final_wait`` seconds have passed; so devices whose streams end together
each save every peer's last taught frames. A peer still streaming keeps it waiting the whole
``final_wait``.

Payloads are signed (``edge_runtime.fleet.payload``); every rejected one is counted by kind and
logged in one line, and never reaches the ledger or the memory.
"""

from __future__ import annotations

import json
import queue
import secrets
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.fleet.broker import check_name
from edge_runtime.fleet.ledger import Ledger
from edge_runtime.fleet.payload import PayloadError, decode, encode
from edge_runtime.fleet.topics import FleetURL, fingerprint, topic
from edge_runtime.runtime.summary import Ring

MAX_DELTA = 64 * 1024
MAX_INBOX = 1024  # verified updates waiting for the stream's thread; more are dropped (a gap: the snapshot covers it)
OUTCOMES = ("applied", "duplicate", "gap", "resynced", "stale", "adopted", "own")


def _stderr(line: str) -> None:
    print(f"edgert fleet: {line}", file=sys.stderr, flush=True)


class FleetSync:
    """One device of a fleet (see the module docstring).

    Parameters
    ----------
    adapter
        A fitted adapter with ``statistics()``, ``add_statistics(delta)`` and
        ``taught_statistics(features, labels)`` (MemFlow, NCM).
    url, device, keys, model_sha256
        ``mqtt://HOST:PORT/FLEET``; this device's name (also its broker user name); the fleet
        keys (the first signs, all verify); the backbone's sha256.
    password, tls
        Broker login (user ``device``) and TLS options passed to paho's ``tls_set`` (``ca_certs``,
        ``certfile``, ``keyfile``) for ``mqtts://``.
    publish_every, publish_seconds, snapshot_seconds, max_delta, forgettable
        Update cadence (frames, seconds), the least time between two snapshots, the size limit of
        one delta payload, and how many taught batches ``forget`` can take back.
    persist
        Called before an update is published (write the checkpoint); None: no durability.
    final_wait
        The longest ``finish()`` waits for the peers' last updates (seconds).
    max_inbox, max_message
        Verified updates waiting for ``step()`` (more are dropped and counted as ``overflow``: the
        peer's snapshot covers the gap), and the largest MQTT message the broker may send this
        client (MQTT 5 Maximum Packet Size; default: the snapshot limit plus headroom), so a
        retained 256 MB message is never read.
    """

    def __init__(
        self,
        adapter: Any,
        url: str,
        device: str,
        keys: list[bytes],
        model_sha256: str,
        *,
        password: str | None = None,
        tls: dict[str, str] | None = None,
        publish_every: int = 30,
        publish_seconds: float = 1.0,
        snapshot_seconds: float = 5.0,
        max_delta: int = MAX_DELTA,
        forgettable: int = 64,
        final_wait: float = 5.0,
        max_inbox: int = MAX_INBOX,
        max_message: int | None = None,
        persist: Callable[[], None] | None = None,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        for verb in ("statistics", "add_statistics", "check_statistics", "taught_statistics"):
            if not callable(getattr(adapter, verb, None)):
                raise InputError(
                    f"adapter {adapter.name!r} cannot join a fleet: it has no {verb}() "
                    f"(memflow and ncm have; see edge_runtime.fleet)"
                )
        if not keys:
            raise InputError("a fleet needs a key (--fleet-key FILE or $EDGERT_FLEET_KEY)")
        self.adapter = adapter
        self.url = FleetURL.parse(url)
        self.device = check_name(device, "device")
        self.keys = list(keys)
        self.model_sha256 = model_sha256
        self.password = password
        self.tls = tls
        self.publish_every = publish_every
        self.publish_seconds = publish_seconds
        self.snapshot_seconds = snapshot_seconds
        self.max_delta = max_delta
        self.persist = persist
        self.final_wait = final_wait
        self.log = log
        base = adapter.statistics()
        self.fingerprint = fingerprint(model_sha256, adapter, base)
        self.ledger = Ledger(device, {k: np.zeros_like(v) for k, v in base.items()}, forgettable=forgettable)
        # One class of statistics must fit a delta whatever the network's size.
        need = sum(8 * v.shape[0] * v.shape[2] for v in base.values()) + 4096
        if need > max_delta:
            raise InputError(f"max_delta {max_delta} bytes cannot hold one class of this memory ({need} bytes)")
        # A snapshot holds every class: its limit follows the memory's size.
        self.max_snapshot = max(1 << 20, 2 * sum(v.nbytes for v in base.values()) + 8192)
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.merge_ms = Ring()
        self.merge_cpu_ms = Ring()  # the same merges in this thread's CPU time (no preemption)
        self.ready = threading.Event()
        self._inbox: queue.Queue[tuple[str, str, int, dict[str, np.ndarray]]] = queue.Queue(maxsize=max(1, max_inbox))
        self.max_message = max_message or (max(self.max_snapshot, self.max_delta) + 64 * 1024)
        self._last_drop_log = 0.0
        self._lock = threading.Lock()  # the counters paho's thread writes
        # Updates the broker has not acknowledged: number -> payload, and paho's handle of each
        # one sent by this process (a restarted device's outbox has none until sent again).
        self._outbox: dict[int, bytes] = {}
        self._inflight: dict[int, Any] = {}
        self._next_out = 0
        self._resend = False
        self._last_resync = 0.0
        self._token = b""
        self._frames_since = 0
        self._last_publish = time.monotonic()
        self._snapshot = (0, -np.inf)  # (seq, time) of the last snapshot published
        # peer -> its latest presence, read only by ``finish`` (subscribing to every peer's presence
        # while running would cost a fleet of N devices N^2 messages at each start)
        self._presences: dict[str, dict[str, Any]] = {}
        self._presences_ready = threading.Event()
        self._final_token = b""
        self._final = False
        self._client: Any = None

    # -- topics ---------------------------------------------------------------------------------
    def topic(self, kind: str, device: str = "+") -> str:
        return topic(self.url.fleet, self.model_sha256, kind, device)

    # -- connection -----------------------------------------------------------------------------
    def start(self, loop: bool = True) -> "FleetSync":
        """Connect (in the background, reconnecting for ever) and subscribe; ``loop=False``: the
        caller drives paho's client (``reconnect()``, then ``loop_read``/``loop_write``/``loop_misc``
        on its socket), as ``edgert bench fleet --parts scale`` does for many devices per thread."""
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
        except ImportError:
            raise InputError("the fleet needs paho-mqtt: pip install 'edge-runtime[fleet]'") from None
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgert-{self.url.fleet}-{self.device}", protocol=mqtt.MQTTv5
        )
        client.username_pw_set(self.device, self.password)
        if self.url.tls:
            client.tls_set(**(self.tls or {}))  # type: ignore[arg-type]
        elif self.password:
            self.log(
                f"WARNING: the broker password of {self.device} goes over mqtt:// in clear text; "
                f"use mqtts:// (--fleet-ca) beyond a trusted network"
            )
        client.will_set(self.topic("presence", self.device), self._presence(False), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.max_queued_messages_set(0)
        # A session that outlives a disconnection: the broker queues the deltas a device misses
        # while it is away (and if it drops some, the snapshot covers them).
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = 7 * 24 * 3600
        session.MaximumPacketSize = self.max_message  # the broker drops larger messages for us
        client.connect_async(self.url.host, self.url.port, keepalive=10, clean_start=False, properties=session)
        self._inflight = {}  # a previous connection's unacknowledged updates are sent again by this one
        self._client = client
        if loop:
            client.loop_start()
        return self

    def _presence(self, online: bool) -> bytes:
        return json.dumps(
            {
                "device": self.device,
                "online": online,
                "seq": self.ledger.seq,
                "final": self._final,
                "bytes_sent": self.bytes_sent,
                "t": time.time(),
                "model": self.model_sha256[:12],
            }
        ).encode()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.log(f"broker {self.url.host}:{self.url.port} refused {self.device}: {reason}")
            return
        self.ready.clear()
        self._token = secrets.token_hex(8).encode()
        client.subscribe([(self.topic("delta"), 1), (self.topic("snapshot"), 1), (self.topic("sync", self.device), 1)])
        client.publish(self.topic("sync", self.device), self._token, qos=1)
        self.log(f"{self.device} connected to {self.url.host}:{self.url.port} (fleet {self.url.fleet})")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.ready.clear()
        if self._client is not None:
            self.log(f"{self.device} lost the broker ({reason}); reconnecting")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """paho's thread: verify, then queue for ``step()``. Nothing a peer sends may end this
        thread: an unexpected error is counted as malformed and logged."""
        try:
            self._receive(message)
        except Exception as err:  # a defect of ours on a hostile payload: the thread lives on
            with self._lock:
                self.rejected["malformed"] += 1
            self.log(
                f"dropped a message on {str(getattr(message, 'topic', '?'))[:120]!r}: " f"{type(err).__name__}: {err}"
            )

    def _receive(self, message: Any) -> None:
        parts = message.topic.split("/")
        if len(parts) != 5:
            return
        kind, device = parts[3], parts[4]
        if kind == "sync":
            if device == self.device and message.payload == self._token:
                self._resend = True
                self.ready.set()
            elif device == self.device and self._final_token and message.payload == self._final_token:
                self._presences_ready.set()  # every retained presence came before it
            return
        if kind == "presence":  # unsigned: it only tells ``finish`` when to stop waiting
            if device != self.device:
                try:
                    row = json.loads(message.payload)
                    row = {"online": bool(row["online"]), "final": bool(row.get("final")), "seq": int(row["seq"])}
                except (ValueError, KeyError, TypeError):
                    return
                with self._lock:
                    self._presences[device] = row
            return
        limit = self.max_delta if kind == "delta" else self.max_snapshot
        self.bytes_received += len(message.payload)
        try:
            if len(message.payload) > limit:
                raise PayloadError(f"{len(message.payload)} bytes, the limit is {limit}", kind="oversized")
            blob = bytes(message.payload)
            header, arrays = decode(blob, self.keys, limit)
            seq = header.get("seq")
            if header.get("kind") != kind or header.get("device") != device or type(seq) is not int or seq < 1:
                raise PayloadError(
                    f"header {header.get('kind')!r}/{header.get('device')!r} seq {seq!r} " f"does not match its topic",
                    kind="malformed",
                )
            if header.get("model") != self.model_sha256 or header.get("memory") != self.fingerprint:
                raise PayloadError("made with another model or from another source memory", kind="wrong_model")
        except PayloadError as err:
            with self._lock:
                self.rejected[err.kind] += 1
            self.log(f"dropped {kind} from {device!r} ({len(message.payload)} bytes): {err}")
            return
        try:
            self._inbox.put_nowait((kind, device, seq, arrays))
        except queue.Full:
            with self._lock:
                self.rejected["overflow"] += 1
            if time.monotonic() - self._last_drop_log > 10:
                self._last_drop_log = time.monotonic()
                self.log(
                    f"inbox full ({self._inbox.maxsize} updates waiting for the stream): dropped {kind} from "
                    f"{device!r}; its snapshot will cover the gap"
                )

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is pending, wait (up to ``timeout``) for the broker to take it, say offline."""
        if self._client is None:
            return
        self.flush(timeout)
        client, self._client = self._client, None
        if self.ready.is_set():
            client.publish(
                self.topic("presence", self.device), self._presence(False), qos=1, retain=True
            ).wait_for_publish(min(timeout, 2.0))
        client.disconnect()
        client.loop_stop()
        self.ready.clear()

    # -- the stream's side --------------------------------------------------------------------------
    def teach(self, features: np.ndarray, labels: np.ndarray) -> int:
        """Teach the adapter (as ``adapter.teach``) and share it; returns the batch number for
        ``forget``."""
        delta = self.adapter.taught_statistics(features, labels)
        self.adapter.teach(features, labels)  # adds the same statistics, and whatever else teach learns locally
        return self.ledger.record(delta, batch=True)

    def forget(self, batch: int) -> bool:
        """Take taught batch ``batch`` out of this memory and, with the next update, out of every
        device's; False if it is unknown (or older than the ``forgettable`` kept)."""
        minus = self.ledger.forget(batch)
        if minus is None:
            return False
        self.adapter.add_statistics(minus)
        return True

    def step(self) -> int:
        """Between frames: apply the updates received, publish when due. Returns updates applied."""
        ready = self.ready.is_set()  # before draining: every retained snapshot is in the inbox then
        applied = self._apply_inbox()
        self._frames_since += 1
        self._prune()
        if ready:
            if self._resend:
                self._resend = False
                self._republish()
            due = (
                self._frames_since >= self.publish_every
                or time.monotonic() - self._last_publish >= self.publish_seconds
            )
            if due and self.ledger.has_pending:
                self._publish_pending()
            if self.ledger.seq > self._snapshot[0] and time.monotonic() - self._snapshot[1] >= self.snapshot_seconds:
                self._publish_snapshot()
        return applied

    def flush(self, timeout: float = 10.0) -> bool:
        """Apply what arrived, publish what is pending now, and wait (up to ``timeout``) until the
        broker has acknowledged every update; False if it has not."""
        deadline = time.monotonic() + timeout
        if not self.ready.wait(timeout):
            self._apply_inbox()
            return False
        self._apply_inbox()
        if self._resend:
            self._resend = False
            self._republish()
        if self.ledger.has_pending:
            self._publish_pending()
        if self.ledger.seq > self._snapshot[0]:
            self._publish_snapshot()
        for info in list(self._inflight.values()):
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            except (RuntimeError, ValueError):  # the connection dropped meanwhile: paho sends it again
                pass
        self._prune()
        return not self._outbox

    def finish(self, timeout: float | None = None) -> bool:
        """The final exchange (module docstring), before the last checkpoint: publish everything,
        announce ``final``, and apply peers' updates until every known peer is final or offline
        with its last update applied, or ``timeout`` (default ``final_wait``) seconds have passed.
        True if every peer's last update is in the memory."""
        timeout = self.final_wait if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._client is None or not self.flush(timeout):
            return False
        self._final = True
        self._client.publish(self.topic("presence", self.device), self._presence(True), qos=1, retain=True)
        if timeout <= 0:
            return False
        self._final_token = secrets.token_hex(8).encode()
        self._client.subscribe(self.topic("presence"), 1)
        self._client.publish(self.topic("sync", self.device), self._final_token, qos=1)
        while True:
            self._apply_inbox()
            with self._lock:
                presences = dict(self._presences)
            waiting = [
                p
                for p, row in presences.items()
                if (row["online"] and not row["final"])
                or row["seq"] > (self.ledger.peers[p].seq if p in self.ledger.peers else 0)
            ]
            if self._presences_ready.is_set() and not waiting:
                return True
            if time.monotonic() >= deadline:
                self.log(
                    f"{self.device}: final exchange ended after {timeout:g} s without the last updates of "
                    f"{', '.join(sorted(waiting)[:5]) or 'the peers (no answer from the broker)'}"
                    f"{' ...' if len(waiting) > 5 else ''}"
                )
                return False
            time.sleep(0.02)

    def _prune(self) -> None:
        for number, info in list(self._inflight.items()):
            try:
                if info.is_published():
                    del self._inflight[number]
                    self._outbox.pop(number, None)
            except RuntimeError:  # it left while disconnected: sent again once connected
                del self._inflight[number]

    def _apply_inbox(self) -> int:
        applied = 0
        while True:
            try:
                kind, device, seq, arrays = self._inbox.get_nowait()
            except queue.Empty:
                return applied
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                outcome, change = self.ledger.receive(kind, device, seq, arrays, check=self.adapter.check_statistics)
            except (PayloadError, InputError, ValueError, TypeError, KeyError, IndexError) as err:
                err = (
                    err
                    if isinstance(err, PayloadError)
                    else PayloadError(f"{type(err).__name__}: {err}", kind="malformed")
                )
                with self._lock:
                    self.rejected[err.kind] += 1
                self.log(f"dropped {kind} from {device!r}: {err}")
                continue
            if change is not None:
                self.adapter.add_statistics(change)
                self.merge_ms.append(1000 * (time.perf_counter() - t0))
                self.merge_cpu_ms.append(1000 * (time.thread_time() - c0))
                applied += 1
            self.counts[outcome] += 1
            if outcome == "gap" and self._client is not None and time.monotonic() - self._last_resync > 1.0:
                # Updates are missing: subscribing again makes the broker send every retained
                # snapshot again (at most once a second, however many deltas show the gap).
                self._last_resync = time.monotonic()
                self._client.subscribe(self.topic("snapshot"), 1)
            elif outcome == "adopted":
                self.log(f"{self.device} took back its own published updates up to {seq} (its checkpoint was older)")

    def _header(self, kind: str, seq: int) -> dict[str, Any]:
        return {
            "kind": kind,
            "device": self.device,
            "seq": seq,
            "model": self.model_sha256,
            "memory": self.fingerprint,
            "t": time.time(),
        }

    def _publish_pending(self) -> None:
        numbers = []
        for seq, arrays in self.ledger.take(self.max_delta):
            self._outbox[self._next_out] = encode(self._header("delta", seq), arrays, self.keys[0])
            numbers.append(self._next_out)
            self._next_out += 1
        if self.persist is not None:
            self.persist()  # the checkpoint knows these updates before anyone else does
        for number in numbers:
            self._send(number)
        if time.monotonic() - self._snapshot[1] >= self.snapshot_seconds:
            self._publish_snapshot()
        self._frames_since = 0
        self._last_publish = time.monotonic()

    def _send(self, number: int) -> None:
        payload = self._outbox[number]
        info = self._client.publish(self.topic("delta", self.device), payload, qos=1)
        if info.rc == 0:  # else not connected: ``_republish`` sends it once connected
            self._inflight[number] = info
        self.bytes_sent += len(payload)

    def _publish_snapshot(self) -> None:
        seq, arrays = self.ledger.snapshot()
        if seq == 0:
            return
        payload = encode(self._header("snapshot", seq), arrays, self.keys[0])
        self._client.publish(self.topic("snapshot", self.device), payload, qos=1, retain=True)
        self._snapshot = (seq, time.monotonic())
        self._client.publish(self.topic("presence", self.device), self._presence(True), qos=1, retain=True)
        self.bytes_sent += len(payload)

    def _republish(self) -> None:
        """After a (re)connection: the snapshot (a restarted broker may have lost it), presence,
        and updates the broker never acknowledged (a restarted device's outbox)."""
        for number in sorted(set(self._outbox) - set(self._inflight)):
            self._send(number)
        self._client.publish(self.topic("presence", self.device), self._presence(True), qos=1, retain=True)
        self._publish_snapshot()

    # -- persistence -------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) to store in the device's checkpoint (``Checkpoints.save(..., extra=)``)."""
        meta, arrays = self.ledger.state()
        self._prune()
        outbox = [payload for _, payload in sorted(self._outbox.items())]
        meta.update(fingerprint=self.fingerprint, fleet=self.url.fleet, outbox=[len(p) for p in outbox])
        arrays["outbox"] = np.frombuffer(b"".join(outbox), np.uint8).copy()
        return meta, {f"fleet.{k}": v for k, v in arrays.items()}

    def restore(self, meta: dict[str, Any], extra: dict[str, np.ndarray]) -> None:
        """Resume from a checkpoint's fleet state (``state()``); the memory is the checkpoint's."""
        if meta.get("device") != self.device or meta.get("fleet") != self.url.fleet:
            raise InputError(
                f"the checkpoint belongs to device {meta.get('device')!r} of fleet {meta.get('fleet')!r}, "
                f"not {self.device!r} of {self.url.fleet!r}: use its own --state folder"
            )
        arrays = {k[len("fleet.") :]: v for k, v in extra.items() if k.startswith("fleet.")}
        try:
            self.ledger = Ledger.restore(meta, arrays, self.ledger.zeros(), forgettable=self.ledger.forgettable)
            blob, offset = arrays["outbox"].tobytes(), 0
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(f"the checkpoint's fleet state is unreadable ({err}): start from --memory") from None
        self.fingerprint = str(meta["fingerprint"])
        for size in meta["outbox"]:
            self._outbox[self._next_out] = blob[offset : offset + size]
            self._next_out += 1
            offset += size

    # -- reporting -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters for summaries and ``--json``."""
        merge = self.merge_ms.values()
        with self._lock:
            rejected = dict(self.rejected)
        outbox = len(self._outbox)
        return {
            "device": self.device,
            "fleet": self.url.fleet,
            "seq": self.ledger.seq,
            "peers": {p: peer.seq for p, peer in sorted(self.ledger.peers.items())},
            "updates": {k: self.counts[k] for k in OUTCOMES if self.counts[k]},
            "rejected": rejected,
            "outbox": outbox,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "merge_ms_p50": float(np.percentile(merge, 50)) if len(merge) else None,
            "merge_ms_p99": float(np.percentile(merge, 99)) if len(merge) else None,
        }


__all__ = ["FleetSync", "FleetURL", "MAX_DELTA", "fingerprint", "topic"]
