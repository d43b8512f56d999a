"""The host side: one request at a time over any transport, replies matched by sequence number.

TEACH and FORGET go as TEACH_ONCE / FORGET_ONCE with a random request id when the device
announces IDEMPOTENT (its HELLO is asked once, before the first of them): a request resent after a
damaged reply, or sent again by the caller after a dropped connection (``request_id=``, the id of
the ``BridgeError``), is applied once. To a device without request ids a TEACH or FORGET is never
resent (it may have been applied): the link error is raised. An unlabelled FEATURES/FRAME resent
after a link error is marked READ_ONLY, so the device never adapts twice on one sample.

With a key the client authenticates on its first request (HELLO, then AUTH answering the
device's nonce), signs every later request with a rising counter, and accepts a reply only if
it is signed for that request (an unsigned ERROR is still reported: it changes nothing).

>>> import numpy as np
>>> from firmware_bridge.transport import open_transport
>>> link = open_transport("loop://")  # a loopback: the client reads its own request back
>>> client = BridgeClient(link)
>>> client.send(Features.quantize(np.ones(4, np.float32)))
1
>>> client.receive().body.values
array([127, 127, 127, 127], dtype=int8)
>>> link.close()
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import replace
from typing import Optional

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from firmware_bridge.auth import AuthError, HostSession
from firmware_bridge.codes import OPTION_READ_ONLY, Capability, ErrorCode, FeatureDtype, ForgetScope, PixelFormat
from firmware_bridge.crc import crc32
from firmware_bridge.framing import FrameError, Framing, Packet
from firmware_bridge.messages import (
    Ack,
    Auth,
    AuthReply,
    Body,
    Error,
    Hello,
    HelloReply,
    StateChunk,
    StateExportRequest,
    Stats,
    StatsRequest,
)
from firmware_bridge.samples import Features, Forget, ForgetOnce, Frame, Prediction, Teach, TeachOnce
from firmware_bridge.transport import Transport


class BridgeError(EdgeRuntimeError):
    """The device answered ERROR, or did not answer in time.

    ``request_id`` is the id a failed TEACH/FORGET was sent with (0: none): pass it again
    (``teach(..., request_id=err.request_id)``) and the device applies the request at most once.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = 0


def new_request_id() -> int:
    """A random non-zero u64 request id."""
    return secrets.randbits(64) or 1


class BridgeClient:
    """Requests to a device on ``transport``; each call waits for the reply with the same seq.

    A reply that is an ERROR raises ``BridgeError`` (with ``.code``). Link-level errors the
    device reports (bad CRC of our frame) make the call resend, up to ``retries`` times. With
    ``key`` (from ``firmware_bridge.auth.read_keys``) requests are authenticated and signed.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        framing: type[Framing] = Framing,
        timeout: float = 5.0,
        retries: int = 2,
        key: Optional[bytes] = None,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._framing = framing()
        self._seq = 0
        self._pending: deque[Packet | FrameError] = deque()
        self._session = HostSession(key) if key is not None else None
        self._counters: dict[int, int] = {}  # seq -> counter of the signed request sent with it
        self.capabilities: Optional[int] = None  # the device's, from its HELLO
        self.last_request_id = 0  # the id of the last TEACH/FORGET sent with one
        # A leading delimiter ends whatever partial frame the device may hold from before we came.
        self.transport.write(b"\x00")

    @property
    def authenticated(self) -> bool:
        return self._session is not None and self._session.signer is not None

    # -- raw requests -------------------------------------------------------------------------------
    def frame(self, body: Body) -> tuple[int, bytes]:
        """(seq, bytes) of the next request, signed once authenticated (except HELLO and AUTH); not sent."""
        self._seq = (self._seq + 1) & 0xFFFF
        session = self._session
        if session is not None and session.signer is not None and not isinstance(body, (Hello, Auth)):
            counter = session.next_counter()
            self._counters = {self._seq: counter}
            return self._seq, self._framing.pack(self._seq, body, counter=counter, sign=session.signer)
        return self._seq, self._framing.pack(self._seq, body)

    def send(self, body: Body) -> int:
        """Write one request (see ``frame``); returns its sequence number."""
        seq, wire = self.frame(body)
        self.transport.write(wire)
        return seq

    def receive(self, timeout: Optional[float] = None) -> Packet | FrameError:
        """The next packet or link error from the device."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pending:
            if time.monotonic() > deadline:
                raise BridgeError(f"no reply from {self.transport.url} within {self.timeout:g} s")
            try:
                data = self.transport.read(65536)
            except EOFError as err:
                raise BridgeError(f"the device closed the link: {err}") from None
            self._pending.extend(self._framing.feed(data))
        return self._pending.popleft()

    def request(self, body: Body) -> Body:
        """Send ``body`` and return the device's reply body (raising on ERROR)."""
        if self._session is not None and not self.authenticated and not isinstance(body, (Hello, Auth)):
            self.hello()
        renewed = False
        # A TEACH/FORGET without a request id must not be sent twice: the first may have been applied.
        once = not isinstance(body, (Teach, Forget)) or isinstance(body, (TeachOnce, ForgetOnce))
        for attempt in range(self.retries + 1):
            if attempt and isinstance(body, (Features, Frame)):
                body = replace(body, options=body.options | OPTION_READ_ONLY)  # never adapt twice on a sample
            try:
                seq = self.send(body)
            except EOFError as err:
                raise self._closed(err) from None
            while True:
                event = self.receive()
                if isinstance(event, Packet) and event.seq == seq and not isinstance(event.body, Error):
                    self._check_signed(event, seq)
                    return event.body
                if isinstance(event, Packet) and isinstance(event.body, Error) and event.body.code in _CLOSING:
                    raise BridgeError(
                        f"device error {_code_name(event.body.code)}: {event.body.message}", event.body.code
                    )  # the device is closing this connection
                if isinstance(event, Packet) and event.seq == seq:
                    if event.body.code == ErrorCode.AUTH_REQUIRED and self.authenticated and not renewed:
                        # The device lost this session (restarted behind a serial line): prove the key again.
                        renewed = True
                        self.hello()
                        break
                    raise BridgeError(
                        f"device error {_code_name(event.body.code)}: {event.body.message}", event.body.code
                    )
                link_error = isinstance(event, FrameError) or (
                    isinstance(event.body, Error) and event.body.code in _LINK_ERRORS
                )
                if link_error:
                    if not once:
                        raise BridgeError(
                            f"{type(body).__name__} may or may not have been applied: a link error "
                            f"({_event_name(event)}) arrived while it was in flight, and this device "
                            f"takes no request ids, so it is not sent again",
                            ErrorCode.MALFORMED,
                        )
                    break  # our frame or the reply was damaged on the line: send again
                # else: a stale reply to an earlier, abandoned request; keep waiting for ours
        raise BridgeError(
            f"{type(body).__name__} failed {self.retries + 1} times on {self.transport.url}: " f"the line is too noisy"
        )

    def _closed(self, err: EOFError) -> BridgeError:
        """The device closed the link under a write: what it said last (BUSY, TIMEOUT), if anything."""
        try:
            while True:
                event = self.receive(timeout=0.5)
                if isinstance(event, Packet) and isinstance(event.body, Error):
                    return BridgeError(
                        f"device error {_code_name(event.body.code)}: {event.body.message}", event.body.code
                    )
        except BridgeError:
            pass
        return BridgeError(f"the device closed the link: {err}")

    def _check_signed(self, event: Packet, seq: int) -> None:
        """In an authenticated session a reply must be signed for the request it answers."""
        counter = self._counters.get(seq)
        if counter is None or self._session is None:
            return
        signed = event.signed
        if signed is None or not self._session.check_reply(signed.counter, signed.mac, signed.message, counter):
            raise BridgeError(
                f"the reply to request {seq} is not signed for it: tampered on the way, or not " f"from the device",
                ErrorCode.BAD_MAC,
            )

    # -- verbs --------------------------------------------------------------------------------------
    def hello(self) -> HelloReply:
        """The device's capabilities; with a key, also authenticate to it (the reply carries its nonce)."""
        hello = self._expect(self.request(Hello(self._framing.MAX_PAYLOAD)), HelloReply)
        self.capabilities = hello.capabilities
        if self._session is not None:
            if not hello.nonce:
                raise BridgeError(
                    f"{self.transport.url} has no key (its HELLO carries no nonce): "
                    f"drop --key-file, or serve the device with one",
                    ErrorCode.AUTH_FAILED,
                )
            try:
                reply = self._expect(self.request(self._session.auth(hello.nonce)), AuthReply)
                self._session.check_device(reply)
            except AuthError as err:
                raise BridgeError(str(err), err.code) from None
        return hello

    def classify(
        self, features: np.ndarray, *, dtype: FeatureDtype = FeatureDtype.INT8, top_k: int = 1, read_only: bool = False
    ) -> Prediction:
        """Send one feature vector; the device predicts (and adapts unless ``read_only``)."""
        body = Features.quantize(features, dtype, options=OPTION_READ_ONLY if read_only else 0, top_k=top_k)
        return self._expect(self.request(body), Prediction)

    def classify_frame(self, image: np.ndarray | bytes, *, top_k: int = 1, read_only: bool = False) -> Prediction:
        """Send a frame: JPEG bytes, or a BGR uint8 (h, w, 3) / grey (h, w) array sent raw."""
        return self._expect(self.request(self._frame(image, top_k=top_k, read_only=read_only)), Prediction)

    def teach(
        self,
        label: int,
        sample: np.ndarray | bytes,
        *,
        dtype: FeatureDtype = FeatureDtype.FLOAT32,
        request_id: Optional[int] = None,
    ) -> int:
        """Teach one labelled sample: a 1-D float feature vector, or a frame (see ``classify_frame``).

        ``request_id``: the id of an earlier attempt that failed (``BridgeError.request_id``), so that
        the device applies the sample once whatever happened to that attempt.
        """
        is_features = isinstance(sample, np.ndarray) and sample.ndim == 1
        body = Features.quantize(sample, dtype) if is_features else self._frame(sample)
        if not self.idempotent:
            return self._expect(self._once(Teach(label, body), 0), Ack).count
        rid = request_id or new_request_id()
        return self._expect(self._once(TeachOnce(label, body, rid), rid), Ack).count

    def forget(
        self, scope: ForgetScope = ForgetScope.ADAPTED, value: int = 0, *, request_id: Optional[int] = None
    ) -> int:
        if not self.idempotent:
            return self._expect(self._once(Forget(scope, value), 0), Ack).count
        rid = request_id or new_request_id()
        return self._expect(self._once(ForgetOnce(scope, value, rid), rid), Ack).count

    @property
    def idempotent(self) -> bool:
        """Whether the device takes request ids (asks its HELLO the first time)."""
        if self.capabilities is None:
            self.hello()
        return bool((self.capabilities or 0) & Capability.IDEMPOTENT)

    def _once(self, body: Body, rid: int) -> Body:
        self.last_request_id = rid
        try:
            return self.request(body)
        except BridgeError as err:
            err.request_id = rid
            raise

    def stats(self) -> Stats:
        return self._expect(self.request(StatsRequest()), Stats)

    def export_state(self, chunk: int = 16 * 1024, attempts: int = 3) -> bytes:
        """The device's adapter as a state file (``edge_runtime.state`` format), checked by CRC-32.

        A device keeps one snapshot: when another host starts an export meanwhile, the chunks
        stop matching the first one's CRC and the transfer starts again (``attempts`` times).
        """
        for _ in range(attempts):
            first = self._expect(self.request(StateExportRequest(0, chunk)), StateChunk)
            parts, got = [first.data], len(first.data)
            while got < first.total:
                part = self._expect(self.request(StateExportRequest(got, chunk)), StateChunk)
                if part.offset != got or not part.data:
                    raise BridgeError(
                        f"STATE_EXPORT chunk at {part.offset} with {len(part.data)} bytes, " f"expected {got}"
                    )
                if part.total != first.total or part.crc32 != first.crc32:
                    break  # another export took a new snapshot
                parts.append(part.data)
                got += len(part.data)
            blob = b"".join(parts)
            if len(blob) == first.total and crc32(blob) == first.crc32:
                return blob
        raise BridgeError(
            f"exported state failed its CRC-32 {attempts} times: other hosts kept exporting, or the " f"line is bad"
        )

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _frame(image: np.ndarray | bytes, *, top_k: int = 1, read_only: bool = False) -> Frame:
        options = OPTION_READ_ONLY if read_only else 0
        if isinstance(image, (bytes, bytearray)):
            return Frame(PixelFormat.JPEG, 0, 0, bytes(image), options, top_k)
        image = np.ascontiguousarray(image, dtype=np.uint8)
        fmt = PixelFormat.GRAY8 if image.ndim == 2 else PixelFormat.BGR888
        return Frame(fmt, image.shape[1], image.shape[0], image.tobytes(), options, top_k)

    @staticmethod
    def _expect(body: Body, cls: type) -> Body:
        if not isinstance(body, cls):
            raise BridgeError(f"expected {cls.__name__} from the device, got {type(body).__name__}")
        return body


_LINK_ERRORS = (ErrorCode.BAD_CRC, ErrorCode.MALFORMED, ErrorCode.OVERSIZED)
_CLOSING = (ErrorCode.BUSY, ErrorCode.TIMEOUT)


def _event_name(event: Packet | FrameError) -> str:
    if isinstance(event, FrameError):
        return event.code.name
    return _code_name(event.body.code) if isinstance(event.body, Error) else type(event.body).__name__


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


__all__ = ["BridgeClient", "BridgeError", "new_request_id"]
