"""The device side of the bridge: answers requests with an adapter (and a backbone for frames).

``BridgeDevice.handle(event)`` turns one decoded packet, or one link error, into the replies to
send; it never touches a transport. ``serve(transport, device)`` is the loop that reads bytes,
feeds the framing, and writes the replies. Every failure becomes an ERROR reply: a bad frame or
bad input never ends the link.

>>> import numpy as np
>>> from edge_runtime.adapters.ncm import NCM
>>> x = np.eye(4, dtype=np.float32)
>>> device = BridgeDevice(NCM().fit(x, np.arange(4)), classes=["a", "b", "c", "d"])
>>> device.handle(Packet(5, Features.quantize(x[2], top_k=2)))[0].body.label
2
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.errors import EdgeRuntimeError
from firmware_bridge.crc import crc32
from firmware_bridge.framing import FrameError, Framing, Packet
from firmware_bridge.messages import (Ack, Body, Capability, Error, ErrorCode, Features, Forget, ForgetScope, Frame,
                                      Hello, HelloReply, OPTION_READ_ONLY, PixelFormat, Prediction, StateChunk,
                                      StateExportRequest, Stats, StatsRequest, Teach)
from firmware_bridge.transport import Transport


class Reply(NamedTuple):
    seq: int
    body: Body


class BridgeDevice:
    """Serve one adapter (fitted, or fitted by the first TEACH) over the bridge protocol.

    Parameters
    ----------
    adapter
        The head that classifies features; ``adapt`` decides whether FRAME/FEATURES adapt it.
    classes
        Class names, announced in HELLO; their number is the adapter's class count.
    backbone
        ``edge_runtime.backbones`` backbone for FRAME requests; without it FRAME is UNSUPPORTED.
    adapt
        Adapt on every unlabelled FRAME/FEATURES unless the request sets OPTION_READ_ONLY.
    model_sha256
        Hex sha256 of the model whose features the adapter holds (from the backbone's card).
    framing
        The framing class; its MAX_PAYLOAD is announced in HELLO and bounds STATE_EXPORT chunks.
    """

    def __init__(self, adapter: Adapter, *, classes: Sequence[str], backbone: Any = None, adapt: bool = True,
                 model_sha256: str = "", framing: type[Framing] = Framing) -> None:
        self.adapter = adapter
        self.classes = list(classes)
        self.backbone = backbone
        self.adapt = adapt
        self.model_sha256 = model_sha256
        self.framing = framing
        self._started = time.monotonic()
        self._counts = dict(frames=0, features=0, teaches=0, forgets=0, errors=0, adapted=0)
        self._compute_us_total = 0
        self._answered = 0
        self._state_blob: Optional[bytes] = None
        self.rx_bytes = 0
        self.tx_bytes = 0

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, event: Packet | FrameError) -> list[Reply]:
        """Replies to one decoded packet or link error (never raises for bad input)."""
        if isinstance(event, FrameError):
            self._counts["errors"] += 1
            return [Reply(event.seq or 0, Error(event.code, event.detail))]
        if event.body.REPLY:
            # Never answer a reply (as ICMP never answers ICMP errors): two peers could otherwise
            # bounce ERRORs forever, e.g. a device on a loopback reading its own output.
            return []
        handler = self._HANDLERS.get(type(event.body))
        if handler is None:
            self._counts["errors"] += 1
            return [Reply(event.seq, Error(ErrorCode.UNKNOWN_TYPE, f"a device does not accept {type(event.body).__name__}"))]
        try:
            return [Reply(event.seq, handler(self, event.body))]
        except (EdgeRuntimeError, ValueError) as err:
            code = ErrorCode.UNSUPPORTED if isinstance(err, _Unsupported) else ErrorCode.BAD_INPUT
            self._counts["errors"] += 1
            return [Reply(event.seq, Error(code, str(err)))]
        except NotImplementedError as err:
            self._counts["errors"] += 1
            return [Reply(event.seq, Error(ErrorCode.UNSUPPORTED, str(err)))]
        except Exception as err:  # a device serves months: one bad request must not end the loop
            self._counts["errors"] += 1
            return [Reply(event.seq, Error(ErrorCode.INTERNAL, f"{type(err).__name__}: {err}"))]

    # -- requests -----------------------------------------------------------------------------------
    def _hello(self, body: Hello) -> HelloReply:
        caps = Capability.FEATURES | Capability.TEACH | Capability.STATE_EXPORT
        if self.backbone is not None:
            caps |= Capability.FRAME
        if type(self.adapter).forget is not Adapter.forget:
            caps |= Capability.FORGET
        if self.adapt:
            caps |= Capability.ADAPTS
        sha = bytes.fromhex(self.model_sha256) if self.model_sha256 else bytes(32)
        dim = self.adapter.dim if hasattr(self.adapter, "_dim") else 0
        return HelloReply(self.framing.MAX_PAYLOAD, dim, len(self.classes), int(caps), sha, self.adapter.name,
                          tuple(self.classes))

    def _features(self, body: Features) -> Prediction:
        self._counts["features"] += 1
        return self._predict(body.to_float32(), body.options, body.top_k, time.perf_counter())

    def _frame(self, body: Frame) -> Prediction:
        self._counts["frames"] += 1
        start = time.perf_counter()
        return self._predict(self._frame_features(body), body.options, body.top_k, start)

    def _predict(self, features: np.ndarray, options: int, top_k: int, start: float) -> Prediction:
        self._check_ready()
        x = as_features(features, self.adapter.dim)
        if self.adapt and not options & OPTION_READ_ONLY:
            probs = self.adapter.adapt(x)[0]
            self._counts["adapted"] += 1
        else:
            probs = self.adapter.predict_proba(x)[0]
        elapsed = int((time.perf_counter() - start) * 1e6)
        self._compute_us_total += elapsed
        self._answered += 1
        order = np.argsort(-probs, kind="stable")[:max(1, min(top_k, len(probs)))]
        top = tuple((int(c), float(probs[c])) for c in order)
        return Prediction(top[0][0], top[0][1], top, elapsed)

    def _teach(self, body: Teach) -> Ack:
        sample = body.sample
        x = sample.to_float32() if isinstance(sample, Features) else self._frame_features(sample)
        x = as_features(x)
        label = as_labels([body.label], 1, len(self.classes))
        if hasattr(self.adapter, "_n_classes"):
            self.adapter.teach(x, label)
        else:
            self.adapter.fit(x, label, n_classes=len(self.classes))
        self._counts["teaches"] += 1
        return Ack(1)

    def _forget(self, body: Forget) -> Ack:
        self._check_ready()
        if body.scope == ForgetScope.ADAPTED:
            removed = self.adapter.forget()
        else:
            removed = self.adapter.forget([body.value])
        self._counts["forgets"] += 1
        return Ack(int(removed))

    def _stats(self, body: StatsRequest) -> Stats:
        return self.stats()

    def stats(self) -> Stats:
        """The counters a STATS request returns."""
        mean = self._compute_us_total // self._answered if self._answered else 0
        return Stats(int((time.monotonic() - self._started) * 1000), mean_compute_us=mean, rx_bytes=self.rx_bytes,
                     tx_bytes=self.tx_bytes, **self._counts)

    def _state_export(self, body: StateExportRequest) -> StateChunk:
        # Offset 0 takes a fresh snapshot; later offsets read that same snapshot, so a host
        # assembling chunks never mixes two states while the device keeps adapting.
        if body.offset == 0 or self._state_blob is None:
            self._state_blob = self.state_bytes()
        blob = self._state_blob
        if body.offset > len(blob):
            raise ValueError(f"STATE_EXPORT offset {body.offset} is past the state's {len(blob)} bytes")
        room = self.framing.MAX_PAYLOAD - 12
        chunk = blob[body.offset:body.offset + min(body.max_len, room)]
        return StateChunk(body.offset, len(blob), crc32(blob), chunk)

    # -- helpers ----------------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """The adapter as a state file (``edge_runtime.state`` format, kind "checkpoint"), as bytes."""
        from edge_runtime.state import write_state

        self._check_ready()
        with tempfile.TemporaryDirectory(prefix="edgert-bridge-") as tmp:
            path = Path(tmp) / "state.npz"
            write_state(path, self.adapter, kind="checkpoint", model_sha256=self.model_sha256, classes=self.classes,
                        meta={"frames": self._counts["frames"] + self._counts["features"], "source": "bridge"})
            return path.read_bytes()

    def _check_ready(self) -> None:
        if not hasattr(self.adapter, "_n_classes"):
            raise ValueError("the adapter holds no memory yet: TEACH labelled samples first")

    def _frame_features(self, frame: Frame) -> np.ndarray:
        import cv2

        if self.backbone is None:
            raise _Unsupported("this device has no backbone (serve with --model) and accepts FEATURES only")
        if frame.format == PixelFormat.JPEG:
            image = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"FRAME holds {len(frame.data)} bytes that OpenCV cannot decode as JPEG")
        elif frame.format == PixelFormat.GRAY8:
            gray = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width)
            image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        else:
            image = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
            if frame.format == PixelFormat.RGB888:
                image = image[:, :, ::-1]
        return self.backbone.features(np.ascontiguousarray(image))

    _HANDLERS: dict[type, Callable[["BridgeDevice", Any], Body]] = {
        Hello: _hello, Features: _features, Frame: _frame, Teach: _teach, Forget: _forget, StatsRequest: _stats,
        StateExportRequest: _state_export}


class _Unsupported(EdgeRuntimeError):
    """A valid request this device cannot serve (answered with ErrorCode.UNSUPPORTED)."""


def serve(transport: Transport, device: BridgeDevice, *, framing: Optional[Framing] = None,
          should_stop: Callable[[], bool] = lambda: False) -> None:
    """Answer requests on ``transport`` until the peer goes away (EOF) or ``should_stop()``."""
    framing = framing or device.framing()
    while not should_stop():
        try:
            data = transport.read(65536)
        except EOFError:
            return
        if not data:
            continue
        device.rx_bytes += len(data)
        for event in framing.feed(data):
            for reply in device.handle(event):
                wire = framing.pack(reply.seq, reply.body)
                device.tx_bytes += len(wire)
                try:
                    transport.write(wire)
                except EOFError:
                    return


__all__ = ["BridgeDevice", "Reply", "serve"]
