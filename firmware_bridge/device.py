"""The device side of the bridge: answers requests with an adapter (and a backbone for frames).

``BridgeDevice.handle_batch(packets)`` turns decoded requests into replies, in order; it never
touches a transport and is the only code that changes the adapter. Every request is checked in
full before anything changes (width, finite values, range, label, image), so a bad request gets
one BAD_INPUT line and leaves the memory as it was. With a ``Journal`` every change is recorded
*before* it is made (a change whose record cannot be written is refused with STORAGE and never
made) and the batch's TEACH/FORGET records are made durable with one fsync before any ACK is
returned; a failed fsync is answered by a checkpoint (the rewrite) or, if that fails too, STORAGE.

TEACH_ONCE and FORGET_ONCE carry the client's request id: the device keeps the last
``max_requests`` ids it applied (in the journal records and the checkpoints, so across restarts)
and answers a repeat with the first reply, once that is durable, instead of applying it again.

Connections (framing, authentication, the serving loop) are ``firmware_bridge.link``'s.

>>> import numpy as np
>>> from edge_runtime.adapters.ncm import NCM
>>> x = np.eye(4, dtype=np.float32)
>>> device = BridgeDevice(NCM().fit(x, np.arange(4)), classes=["a", "b", "c", "d"])
>>> device.handle(Packet(5, Features.quantize(x[2], top_k=2)))[0].body.label
2
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features
from edge_runtime.errors import EdgeRuntimeError, InputError
from firmware_bridge.codes import OPTION_READ_ONLY, Capability, ErrorCode, ForgetScope
from firmware_bridge.crc import crc32
from firmware_bridge.framing import FrameError, Framing, Packet
from firmware_bridge.journal import Journal, StorageError, describe_oserror
from firmware_bridge.messages import (
    Ack,
    Body,
    Error,
    Hello,
    HelloReply,
    StateChunk,
    StateExportRequest,
    Stats,
    StatsRequest,
)
from firmware_bridge.pixels import decode_frame
from firmware_bridge.records import AdaptOp, ForgetOp, Op, Record, TeachOp
from firmware_bridge.request_ids import MAX_REQUESTS, RequestIds
from firmware_bridge.samples import Features, Forget, ForgetOnce, Frame, Prediction, Teach, TeachOnce

# Feature values beyond this are refused: their squares approach float32's range, and no backbone's
# pooled features come near it (EfficientNet-Lite's are ReLU6 outputs, at most 6).
MAX_FEATURE = 1e12
CHECKPOINT_RETRY_S = 5.0  # after a failed checkpoint (disk full), wait this long before the next try


class Reply(NamedTuple):
    seq: int
    body: Body


class _Unsupported(EdgeRuntimeError):
    """A valid request this device cannot serve (answered with ErrorCode.UNSUPPORTED)."""


class BridgeDevice:
    """Serve one adapter (fitted, or fitted by the first TEACH) over the bridge protocol.

    Parameters
    ----------
    adapter
        The head that classifies features; ``adapt`` decides whether FRAME/FEATURES adapt it.
    classes
        Class names, announced in HELLO; their number is the adapter's class count.
    backbone
        ``edge_runtime.model`` backbone for FRAME requests; without it FRAME is UNSUPPORTED.
    adapt
        Adapt on every unlabelled FRAME/FEATURES unless the request sets OPTION_READ_ONLY.
    model_sha256
        Hex sha256 of the model whose features the adapter holds (from the backbone's card).
    framing
        The framing class; its MAX_PAYLOAD is announced in HELLO and bounds STATE_EXPORT chunks.
    dim
        Feature width requests must have. Taken from the adapter's memory or the backbone's card
        when those exist; required for an empty adapter without a backbone.
    journal
        Where changes are recorded (``firmware_bridge.journal``); None keeps them in memory only.
    max_requests
        How many request ids (TEACH_ONCE, FORGET_ONCE) are remembered with their first reply.
    """

    def __init__(
        self,
        adapter: Adapter,
        *,
        classes: Sequence[str],
        backbone: Any = None,
        adapt: bool = True,
        model_sha256: str = "",
        framing: type[Framing] = Framing,
        dim: Optional[int] = None,
        journal: Optional[Journal] = None,
        max_requests: int = MAX_REQUESTS,
    ) -> None:
        self.adapter = adapter
        self.classes = list(classes)
        self.backbone = backbone
        self.adapt = adapt
        self.model_sha256 = model_sha256
        self.framing = framing
        self.journal = journal
        known = [
            int(w)
            for w in (
                adapter.dim if self.ready else None,
                backbone.card.feature_dim if backbone is not None else None,
                dim,
            )
            if w is not None
        ]
        if not known:
            raise InputError("the feature width is unknown: an empty adapter needs --dim D (or --model)")
        if len(set(known)) > 1:
            raise InputError(f"feature widths disagree: memory, model card and --dim give {sorted(set(known))}")
        self.dim = known[0]
        self._started = time.monotonic()
        self._counts = dict(frames=0, features=0, teaches=0, forgets=0, errors=0, adapted=0)
        self._compute_us_total = 0
        self._answered = 0
        self._state_blob: Optional[bytes] = None
        self._state_version = -1  # ``version`` the snapshot was taken at
        self.version = 0  # changes made to the adapter (a snapshot of an unchanged adapter is reused)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.requests = RequestIds(max_requests)
        self.repeats = 0  # requests answered from the table instead of applied again
        self.storage_errors = 0
        self._checkpoint_retry_at = 0.0
        self._rescue_retry_at = 0.0

    @property
    def _forget(self) -> dict[ForgetScope, Callable[[int], int]]:
        return _forget_verbs(self.adapter)

    @property
    def ready(self) -> bool:
        """True once the adapter holds a memory (fitted, restored, or built by a TEACH)."""
        return self.adapter.fitted

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, event: Packet | FrameError) -> list[Reply]:
        """Replies to one decoded packet or link error (never raises for bad input)."""
        if isinstance(event, FrameError):
            self.count_error()
            return [Reply(event.seq or 0, Error(event.code, event.detail))]
        return self.handle_batch([event])[0]

    def handle_batch(self, packets: Sequence[Packet]) -> list[list[Reply]]:
        """Replies to each request, in order; the journal is committed once, before any reply is returned."""
        replies = [self._handle(packet) for packet in packets]
        if self.journal is not None and any(isinstance(r.body, Ack) for rs in replies for r in rs):
            try:
                self.make_durable()
            except StorageError as err:  # nothing in this batch may be acknowledged
                self.storage_errors += 1
                print(f"edgert bridge: {err}", file=sys.stderr)
                replies = [
                    [
                        Reply(
                            r.seq,
                            Error(
                                ErrorCode.STORAGE,
                                f"{err}; the change is applied but not on disk "
                                f"yet: send it again with the same request id",
                            ),
                        )
                        if isinstance(r.body, Ack)
                        else r
                        for r in rs
                    ]
                    for rs in replies
                ]
        elif self.journal is not None:
            try:
                self.journal.commit()
            except StorageError as err:
                print(f"edgert bridge: {err}", file=sys.stderr)
        return replies

    def make_durable(self) -> None:
        """Every record so far on stable storage: one fsync, or after a failed one (never retried on
        the same descriptor) a checkpoint holding them all. ``StorageError`` if neither worked."""
        journal = self.journal
        if journal is None:
            return
        if not journal.needs_rescue:
            try:
                journal.commit()
                return
            except StorageError as err:
                print(
                    f"edgert bridge: {err}: rewriting every record since the last checkpoint as a new one",
                    file=sys.stderr,
                )
        self._rescue()

    def _rescue(self) -> None:
        """After a lost fsync: the memory as a new checkpoint (fresh file, fsync, rename)."""
        journal = self.journal
        assert journal is not None
        if not self.ready:
            raise StorageError("journal fsync failed and there is no memory to checkpoint yet")
        if time.monotonic() < self._rescue_retry_at:
            raise StorageError("journal fsync failed and the checkpoint that replaces it too; retry later")
        try:
            self.checkpoint({"rescued": True})
        except OSError as err:
            self._rescue_retry_at = time.monotonic() + 1.0
            raise StorageError(
                f"journal fsync failed and the checkpoint that replaces it too: " f"{describe_oserror(err)}", err
            ) from None

    def _handle(self, packet: Packet) -> list[Reply]:
        if packet.body.REPLY:
            # Never answer a reply (as ICMP never answers ICMP errors): two peers could otherwise
            # bounce ERRORs forever, e.g. a device on a loopback reading its own output.
            return []
        handler = self._HANDLERS.get(type(packet.body))
        if handler is None:
            self.count_error()
            return [
                Reply(
                    packet.seq, Error(ErrorCode.UNKNOWN_TYPE, f"a device does not accept {type(packet.body).__name__}")
                )
            ]
        try:
            return [Reply(packet.seq, handler(self, packet.body))]
        except StorageError as err:
            self.storage_errors += 1
            code, message = ErrorCode.STORAGE, str(err)
        except (_Unsupported, NotImplementedError) as err:
            code, message = ErrorCode.UNSUPPORTED, str(err)
        except (EdgeRuntimeError, ValueError) as err:
            code, message = ErrorCode.BAD_INPUT, str(err)
        except Exception as err:  # a device serves months: one defect must not end the loop, but it is ours
            traceback.print_exc(file=sys.stderr)
            code, message = ErrorCode.INTERNAL, f"{type(err).__name__} serving {type(packet.body).__name__}: {err}"
        self.count_error()
        return [Reply(packet.seq, Error(code, message))]

    def count_error(self) -> None:
        self._counts["errors"] += 1

    # -- requests -----------------------------------------------------------------------------------
    def _hello(self, body: Hello) -> HelloReply:
        caps = Capability.FEATURES | Capability.TEACH | Capability.STATE_EXPORT
        if self.backbone is not None:
            caps |= Capability.FRAME
        if self._forget:
            caps |= Capability.FORGET
        if self.adapt:
            caps |= Capability.ADAPTS
        if self.journal is not None:
            caps |= Capability.DURABLE
        caps |= Capability.IDEMPOTENT
        sha = bytes.fromhex(self.model_sha256) if self.model_sha256 else bytes(32)
        return HelloReply(
            self.framing.MAX_PAYLOAD,
            self.dim,
            len(self.classes),
            int(caps),
            sha,
            self.adapter.name,
            tuple(self.classes),
        )

    def _features(self, body: Features) -> Prediction:
        start = time.perf_counter()
        x = self._checked(body.to_float32())
        self._counts["features"] += 1
        return self._predict(x, body.options, body.top_k, start)

    def _frame(self, body: Frame) -> Prediction:
        start = time.perf_counter()
        x = self._checked(self._frame_features(body))
        self._counts["frames"] += 1
        return self._predict(x, body.options, body.top_k, start)

    def _predict(self, x: np.ndarray, options: int, top_k: int, start: float) -> Prediction:
        self._check_ready()
        probs = None
        if self.adapt and not options & OPTION_READ_ONLY:
            try:
                probs = self.apply(AdaptOp(x))
                self._counts["adapted"] += 1
            except StorageError:  # the disk is full: predict without adapting rather than not at all
                probs = None
        if probs is None:
            probs = self.adapter.predict_proba(x)[0]
        elapsed = int((time.perf_counter() - start) * 1e6)
        self._compute_us_total += elapsed
        self._answered += 1
        order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
        top = tuple((int(c), float(probs[c])) for c in order)
        return Prediction(top[0][0], top[0][1], top, elapsed)

    def _teach(self, body: Teach) -> Ack:
        if not 0 <= body.label < len(self.classes):
            raise InputError(
                f"TEACH label {body.label} is outside this device's {len(self.classes)} classes "
                f"(0..{len(self.classes) - 1})"
            )
        sample = body.sample
        rid = body.request_id if isinstance(body, TeachOnce) else 0
        if rid and rid in self.requests:  # a repeat: features are compared, a frame is not run again
            seen = (
                TeachOp(body.label, self._checked(sample.to_float32())[0], rid)
                if isinstance(sample, Features)
                else None
            )
            return self._repeat(rid, seen)
        x = self._checked(sample.to_float32() if isinstance(sample, Features) else self._frame_features(sample))
        count = self.apply(TeachOp(body.label, x[0], rid))
        self._counts["teaches"] += 1
        return Ack(int(count))

    def _repeat(self, rid: int, op: Optional[Op]) -> Ack:
        """The first reply to request ``rid`` (once its record is durable), never a second change."""
        count, seq = self.requests.first_reply(rid, op)
        self.repeats += 1
        if self.journal is not None and seq > self.journal.synced_seq:
            self.make_durable()
        return Ack(count)

    def restore_requests(self, meta: dict[str, Any]) -> int:
        """The request ids a checkpoint remembered (``checkpoint`` stores them); returns how many."""
        return self.requests.restore(meta.get("request_ids") or [])

    def _forget_request(self, body: Forget) -> Ack:
        self._check_ready()
        if body.scope not in self._forget:
            raise _Unsupported(
                f"adapter {self.adapter.name} cannot forget {body.scope.name.lower()} "
                f"(it supports: {', '.join(s.name for s in self._forget) or 'nothing'})"
            )
        rid = body.request_id if isinstance(body, ForgetOnce) else 0
        op = ForgetOp(int(body.scope), body.value, rid)
        if rid and rid in self.requests:
            return self._repeat(rid, op)
        removed = self.apply(op)
        self._counts["forgets"] += 1
        return Ack(int(removed))

    def _stats(self, body: StatsRequest) -> Stats:
        return self.stats()

    def stats(self) -> Stats:
        """The counters a STATS request returns."""
        mean = self._compute_us_total // self._answered if self._answered else 0
        return Stats(
            int((time.monotonic() - self._started) * 1000),
            mean_compute_us=mean,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            **self._counts,
        )

    def _state_export(self, body: StateExportRequest) -> StateChunk:
        # Offset 0 takes a fresh snapshot; later offsets read that same snapshot, so a host
        # assembling chunks never mixes two states while the device keeps adapting.
        if self._state_blob is None or (body.offset == 0 and self._state_version != self.version):
            self._state_blob = self.state_bytes()
            self._state_version = self.version
        blob = self._state_blob
        if body.offset > len(blob):
            raise InputError(f"STATE_EXPORT offset {body.offset} is past the state's {len(blob)} bytes")
        room = self.framing.MAX_PAYLOAD - 12
        chunk = blob[body.offset : body.offset + min(body.max_len, room)]
        return StateChunk(body.offset, len(blob), crc32(blob), chunk)

    # -- changes: the one path for live requests and journal replay -------------------------------
    def apply(self, op: Op, *, record: bool = True, seq: int = 0) -> Any:
        """Journal one checked operation (with ``record``) and then make it: a change whose record
        cannot be written raises ``StorageError`` and is not made. ``seq``: a replayed record's."""
        journal = self.journal if record else None
        if journal is not None:
            if journal.needs_rescue:
                self._rescue()  # a lost fsync: nothing new before a checkpoint holds what came before
            seq = journal.append(op)
        try:
            result = self._change(op)
        except BaseException:
            if journal is not None:
                journal.undo(seq)
            raise
        self.version += 1
        rid = getattr(op, "rid", 0)
        if rid:
            self.requests.remember(rid, op, result, seq)
        return result

    def _change(self, op: Op) -> Any:
        if isinstance(op, TeachOp):
            label = np.array([op.label])
            if self.ready:
                self.adapter.teach(op.x[None], label)
            else:
                self.adapter.fit(op.x[None], label, n_classes=len(self.classes))
                self.adapter.prepare()  # compile now: the next frames are served at full speed
            result: Any = 1
        elif isinstance(op, ForgetOp):
            result = self._forget[ForgetScope(op.scope)](op.value)
        else:
            result = self.adapter.adapt(op.x)[0]
        return result

    def replay(self, ops: Sequence[Op | Record]) -> None:
        """Apply journal records at start-up (they are already on disk: nothing is written).

        A record whose change fails is reported and skipped: it was never acknowledged (its live
        change failed the same way), and the device must start.
        """
        for item in ops:
            seq, op = (item.seq, item.op) if isinstance(item, Record) else (0, item)
            try:
                self.apply(op, record=False, seq=seq)
            except Exception as err:
                print(f"edgert bridge: journal record {seq}: {type(err).__name__}: {err}; skipped", file=sys.stderr)

    def checkpoint(self, meta: Optional[dict[str, Any]] = None) -> Any:
        """Compact the journal into a new checkpoint now (None if there is nothing new to hold)."""
        if self.journal is None or not self.ready:
            return None
        frames = self._counts["frames"] + self._counts["features"]
        return self.journal.checkpoint(
            self.adapter,
            self.classes,
            {"source": "bridge", "frames": frames, "request_ids": self.requests.entries(), **(meta or {})},
        )

    def maintain(self) -> None:
        """Between batches: compact the journal when it is due (a failed write is reported, not fatal,
        and tried again ``CHECKPOINT_RETRY_S`` later)."""
        if (
            self.journal is not None
            and self.ready
            and self.journal.due()
            and time.monotonic() >= self._checkpoint_retry_at
        ):
            try:
                self.checkpoint()
            except (OSError, EdgeRuntimeError) as err:
                self._checkpoint_retry_at = time.monotonic() + CHECKPOINT_RETRY_S
                print(f"edgert bridge: checkpoint failed, the journal keeps every change: {err}", file=sys.stderr)

    # -- helpers ----------------------------------------------------------------------------------
    def _checked(self, raw: np.ndarray) -> np.ndarray:
        """Features as the adapter takes them, (1, d) float32 normalised, or ``InputError`` naming the fault."""
        x = np.asarray(raw, np.float32).reshape(-1)
        if x.shape[0] != self.dim:
            raise InputError(f"features have width {x.shape[0]}, this device expects {self.dim}")
        finite = np.isfinite(x)
        if not finite.all():
            raise InputError(f"feature {int(np.flatnonzero(~finite)[0])} of {self.dim} is NaN or infinite")
        peak = np.abs(x)
        if peak.max() > MAX_FEATURE:
            i = int(peak.argmax())
            raise InputError(f"feature {i} is {x[i]:.3g}: values must lie within +-{MAX_FEATURE:.0e}")
        return as_features(x, self.dim)

    def state_bytes(self) -> bytes:
        """The adapter as a state file (``edge_runtime.state`` format, kind "checkpoint"), as bytes."""
        from edge_runtime.state import encode_state

        self._check_ready()
        return encode_state(
            self.adapter,
            kind="checkpoint",
            model_sha256=self.model_sha256,
            classes=self.classes,
            meta={"frames": self._counts["frames"] + self._counts["features"], "source": "bridge"},
        )

    def _check_ready(self) -> None:
        if not self.ready:
            raise InputError("the adapter holds no memory yet: TEACH labelled samples first")

    def _frame_features(self, frame: Frame) -> np.ndarray:
        if self.backbone is None:
            raise _Unsupported("this device has no backbone (serve with --model) and accepts FEATURES only")
        return self.backbone.features(decode_frame(frame))

    _HANDLERS: dict[type, Callable[["BridgeDevice", Any], Body]] = {
        Hello: _hello,
        Features: _features,
        Frame: _frame,
        Teach: _teach,
        Forget: _forget_request,
        TeachOnce: _teach,
        ForgetOnce: _forget_request,
        StatsRequest: _stats,
        StateExportRequest: _state_export,
    }


def _forget_verbs(adapter: Adapter) -> dict[ForgetScope, Callable[[int], int]]:
    """The FORGET scopes an adapter supports, as calls (``Adapter.can_forget_items`` says which
    spelling of ``forget`` it takes: a kNN memory removes stored items, DMN empties its rings)."""
    if not adapter.can_forget:
        return {}
    if adapter.can_forget_items:
        return {
            ForgetScope.ADAPTED: lambda _value: adapter.forget(origin="pseudo"),
            ForgetScope.ITEM: lambda value: adapter.forget(ids=[value]),
        }
    return {ForgetScope.ADAPTED: lambda _value: adapter.forget()}


__all__ = ["BridgeDevice", "MAX_FEATURE", "Reply"]
