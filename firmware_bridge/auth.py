"""Pre-shared keys, the AUTH challenge-response and per-request HMACs (PROTOCOL.md, section 5).

A device with a key answers HELLO with a fresh 16-byte nonce. The host proves the key with
AUTH: its own nonce and ``HMAC-SHA256(key, "edgert host" | device nonce | host nonce)``; the
device answers with ``HMAC-SHA256(key, "edgert device" | device nonce | host nonce)``, so the
host knows the device holds the key too. From then on every frame either side sends is SIGNED:
a u64 counter and ``HMAC-SHA256(key, device nonce | header | payload | counter)`` follow the
payload. The device accepts a request only if its MAC matches and its counter is above the last
one accepted on this connection (replays are refused); each reply carries the counter of the
request it answers. The nonce makes a MAC valid on one connection only.

Sessions hold state and compare MACs; they never touch a transport. Comparisons use
``hmac.compare_digest``.

>>> keys = KeyRing([bytes(range(32))])
>>> device = DeviceSession(keys)
>>> nonce = device.new_nonce()
>>> host = HostSession(keys.keys[0])
>>> reply = device.authenticate(host.auth(nonce))
>>> host.check_device(reply)
>>> device.authenticated
True
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Callable, Optional

from edge_runtime.keys import MAC_SIZE, MIN_KEY_SIZE, frame_signer, read_keys, write_key_file
from edge_runtime.keys import mac as _mac
from firmware_bridge.codes import ErrorCode
from firmware_bridge.messages import Auth, AuthReply

NONCE_SIZE = 16
HOST_LABEL = b"edgert host"
DEVICE_LABEL = b"edgert device"


class AuthError(Exception):
    """A request refused by authentication; ``code`` is the ERROR code to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class KeyRing:
    """The keys a device accepts; ``reload()`` re-reads the file (SIGHUP), sessions keep theirs."""

    def __init__(self, keys: list[bytes], path: Optional[Path] = None) -> None:
        self.keys = list(keys)
        self.path = path

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        return cls(read_keys(path), Path(path))

    def reload(self) -> int:
        """Re-read the key file; returns the number of keys now accepted."""
        if self.path is not None:
            self.keys = read_keys(self.path)
        return len(self.keys)


# -- sessions ----------------------------------------------------------------------------------------
class DeviceSession:
    """The device side of one connection: nonce, matched key, last accepted counter."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self.nonce = b""
        self.authenticated = False
        self.last_counter = 0
        self._sign: Optional[Callable[[bytes], bytes]] = None

    def new_nonce(self) -> bytes:
        """A fresh nonce for a HELLO reply; the connection must AUTH again."""
        self.nonce = os.urandom(NONCE_SIZE)
        self.authenticated = False
        self.last_counter = 0
        self._sign = None
        return self.nonce

    def authenticate(self, auth: Auth) -> AuthReply:
        """Check the host's proof against every key; raises ``AuthError`` (AUTH_FAILED)."""
        if not self.nonce:
            raise AuthError(ErrorCode.AUTH_FAILED, "send HELLO first: AUTH answers the nonce of the HELLO reply")
        for key in self.ring.keys:
            if hmac.compare_digest(_mac(key, HOST_LABEL, self.nonce, auth.host_nonce), auth.proof):
                self.authenticated = True
                self.last_counter = 0
                self._sign = frame_signer(key, self.nonce)
                return AuthReply(_mac(key, DEVICE_LABEL, self.nonce, auth.host_nonce))
        self.new_nonce()  # one guess per nonce: the host must HELLO again
        raise AuthError(ErrorCode.AUTH_FAILED, "AUTH proof matches no key of this device (wrong key file?)")

    def admit(self, counter: Optional[int], mac: bytes, message: bytes) -> None:
        """Accept one request (``counter`` None: it was not signed), or raise ``AuthError``."""
        if not self.authenticated or self._sign is None:
            raise AuthError(ErrorCode.AUTH_REQUIRED, "this device needs a key: HELLO, then AUTH, then signed requests")
        if counter is None:
            raise AuthError(
                ErrorCode.AUTH_REQUIRED,
                "request without HMAC: this connection is authenticated, " "every request must be signed",
            )
        if not hmac.compare_digest(self._sign(message), mac):
            raise AuthError(ErrorCode.BAD_MAC, "request HMAC does not match its bytes (tampered, or another key)")
        if counter <= self.last_counter:
            raise AuthError(
                ErrorCode.REPLAYED,
                f"counter {counter} is not above the last accepted " f"{self.last_counter}: a replayed request",
            )
        self.last_counter = counter

    @property
    def signer(self) -> Optional[Callable[[bytes], bytes]]:
        """MAC function for replies once authenticated (None before)."""
        return self._sign if self.authenticated else None


class HostSession:
    """The host side: proves the key, signs requests with a rising counter, checks replies."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = 0
        self._host_nonce = b""
        self._device_nonce = b""
        self._sign: Optional[Callable[[bytes], bytes]] = None

    def auth(self, device_nonce: bytes) -> Auth:
        """The AUTH request answering a HELLO reply's nonce."""
        if len(device_nonce) != NONCE_SIZE:
            raise AuthError(
                ErrorCode.AUTH_FAILED, f"the device sent a {len(device_nonce)}-byte nonce, " f"expected {NONCE_SIZE}"
            )
        self._device_nonce = device_nonce
        self._host_nonce = os.urandom(NONCE_SIZE)
        self._sign = None
        return Auth(self._host_nonce, _mac(self.key, HOST_LABEL, device_nonce, self._host_nonce))

    def check_device(self, reply: AuthReply) -> None:
        """Verify the device's proof; from now on requests are signed."""
        expected = _mac(self.key, DEVICE_LABEL, self._device_nonce, self._host_nonce)
        if not hmac.compare_digest(expected, reply.proof):
            raise AuthError(ErrorCode.AUTH_FAILED, "the device's AUTH proof is wrong: it does not hold this key")
        self.counter = 0
        self._sign = frame_signer(self.key, self._device_nonce)

    @property
    def signer(self) -> Optional[Callable[[bytes], bytes]]:
        return self._sign

    def next_counter(self) -> int:
        self.counter += 1
        return self.counter

    def check_reply(self, counter: Optional[int], mac: bytes, message: bytes, expected_counter: int) -> bool:
        """True if a signed reply is genuine and answers the request sent with ``expected_counter``."""
        return self._sign is not None and counter == expected_counter and hmac.compare_digest(self._sign(message), mac)


__all__ = [
    "AuthError",
    "DeviceSession",
    "HostSession",
    "KeyRing",
    "MAC_SIZE",
    "MIN_KEY_SIZE",
    "NONCE_SIZE",
    "frame_signer",
    "read_keys",
    "write_key_file",
]
