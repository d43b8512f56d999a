"""One connection to a device: the framing (bytes in, packets out) and, with a key, the
authentication session; ``serve(transport, device)`` is the loop for one peer (serial, stdio).

``firmware_bridge.server`` serves many TCP peers through the same ``Link`` and
``BridgeDevice.handle_batch``; the device itself never sees bytes or keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple, Optional

from firmware_bridge.auth import AuthError, DeviceSession, KeyRing
from firmware_bridge.codes import Capability, ErrorCode
from firmware_bridge.device import BridgeDevice, Reply
from firmware_bridge.framing import FrameError, Packet
from firmware_bridge.messages import Auth, Body, Error, Hello, HelloReply
from firmware_bridge.transport import Transport


class Step(NamedTuple):
    """One received frame's answer: given at once (``replies``) or by the device (request ``index``).

    ``sign`` and ``counter`` sign the answer to a signed request; ``nonce`` goes into a HELLO reply.
    """

    replies: Optional[list[Reply]] = None
    index: int = -1  # type: ignore[assignment]
    sign: Optional[Callable[[bytes], bytes]] = None
    counter: Optional[int] = None
    nonce: bytes = b""


class Link:
    """One connection: the framing and, on a keyed device, its authentication session.

    ``plan(data)`` decodes received bytes into the requests the device must serve and the
    answers known at once (link errors, HELLO nonces, AUTH, refused MACs), in arrival order;
    ``render(steps, replies)`` turns them into bytes, signing replies to signed requests.
    """

    def __init__(self, device: BridgeDevice, keys: Optional[KeyRing] = None) -> None:
        self.device = device
        self.framing = device.framing()
        self.session = DeviceSession(keys) if keys is not None else None

    def plan(self, data: bytes) -> tuple[list[Packet], list[Step]]:
        requests: list[Packet] = []
        steps: list[Step] = []
        for event in self.framing.feed(data):
            if isinstance(event, FrameError):
                steps.append(self._refused(event))
                continue
            if event.body.REPLY:
                continue
            try:
                answer, nonce = self._screen(event)
            except AuthError as err:
                self.device.count_error()
                steps.append(Step([Reply(event.seq, Error(err.code, str(err)))]))
                continue
            if answer is not None:
                steps.append(Step([Reply(event.seq, answer)]))
                continue
            signed = event.signed
            steps.append(
                Step(
                    None,
                    len(requests),
                    self.session.signer if self.session and signed else None,
                    signed.counter if signed else None,
                    nonce,
                )
            )
            requests.append(event)
        return requests, steps

    def _refused(self, event: FrameError) -> Step:
        """A frame the framing refused. A signed one on a keyed device is checked first: tampered is BAD_MAC."""
        self.device.count_error()
        signed = event.signed
        if signed is None or self.session is None:
            return Step([Reply(event.seq or 0, Error(event.code, event.detail))])
        try:
            self.session.admit(signed.counter, signed.mac, signed.message)
        except AuthError as err:
            return Step([Reply(event.seq or 0, Error(err.code, str(err)))])
        return Step(
            [Reply(event.seq or 0, Error(event.code, event.detail))], sign=self.session.signer, counter=signed.counter
        )

    def _screen(self, event: Packet) -> tuple[Optional[Body], bytes]:
        """(an answer given at once or None, a new HELLO nonce or b""); ``AuthError`` if refused.

        Session state changes here, in arrival order, so a HELLO and an AUTH that arrive in one
        read are checked against the nonce that HELLO's reply will carry.
        """
        body = event.body
        if self.session is None:
            if event.signed is not None or isinstance(body, Auth):
                raise AuthError(ErrorCode.UNSUPPORTED, "this device has no key: send unsigned requests, no AUTH")
            return None, b""
        if isinstance(body, Hello):
            return None, self.session.new_nonce()
        if isinstance(body, Auth):
            return self.session.authenticate(body), b""
        signed = event.signed
        self.session.admit(
            signed.counter if signed else None, signed.mac if signed else b"", signed.message if signed else b""
        )
        return None, b""

    def render(self, steps: list[Step], replies: list[list[Reply]]) -> bytes:
        out = []
        for step in steps:
            for reply in step.replies if step.replies is not None else replies[step.index]:
                body = reply.body
                if step.nonce and isinstance(body, HelloReply):  # a keyed device: AUTH required, over this nonce
                    body = replace(body, nonce=step.nonce, capabilities=body.capabilities | Capability.AUTH)
                out.append(self.framing.pack(reply.seq, body, counter=step.counter, sign=step.sign))
        wire = b"".join(out)
        self.device.tx_bytes += len(wire)
        return wire


def serve(
    transport: Transport,
    device: BridgeDevice,
    *,
    keys: Optional[KeyRing] = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Answer requests from one peer on ``transport`` until it goes away (EOF) or ``should_stop()``.

    ``should_stop`` is checked between requests: a request that has arrived is always answered.
    """
    link = Link(device, keys)
    while not should_stop():
        try:
            data = transport.read(65536)
        except EOFError:
            return
        if not data:
            continue
        device.rx_bytes += len(data)
        requests, steps = link.plan(data)
        wire = link.render(steps, device.handle_batch(requests))
        device.maintain()
        if wire:
            try:
                transport.write(wire)
            except EOFError:
                return


__all__ = ["Link", "Step", "serve"]
