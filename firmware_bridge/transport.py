"""Byte transports chosen by URL: serial (pyserial), TCP, stdio, or a pair of file descriptors.

- a device path (``/dev/ttyUSB0``, ``/dev/pts/3``, ``COM4``) or any pyserial URL (``loop://``,
  ``socket://host:port``, ``rfc2217://...``): ``serial.serial_for_url`` at ``baudrate``;
- ``tcp://host:port``: a TCP client; with ``listen=True`` a server that binds ``host``
  (``tcp://:9000`` binds 127.0.0.1: exposing a device to the network is an explicit choice);
- ``stdio://``: this process's stdin and stdout (a bridge behind ssh or socat).

A transport moves bytes only; framing is ``firmware_bridge.framing``. ``read`` returns what has
arrived (at most ``size`` bytes, waiting at most the timeout for the first one; ``b""`` on
timeout) and raises ``EOFError`` once the peer has gone.

>>> link = open_transport("loop://", timeout=0.1)
>>> link.write(b"\\x01\\x02\\x00")
>>> link.read(64)
b'\\x01\\x02\\x00'
>>> link.close()
"""

from __future__ import annotations

import os
import select
import socket
from typing import Optional
from urllib.parse import urlsplit

from edge_runtime.errors import EdgeRuntimeError


class Transport:
    """Blocking byte pipe with a read timeout (seconds)."""

    url: str

    def read(self, size: int = 4096) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class SerialTransport(Transport):
    def __init__(self, url: str, *, baudrate: int = 115200, timeout: float = 0.1) -> None:
        import serial

        self.url = url
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=None)
        except (serial.SerialException, ValueError) as err:
            raise EdgeRuntimeError(
                f"cannot open serial port {url}: {err} (check the path and permissions, "
                f"e.g. add yourself to the dialout group)"
            ) from None

    def read(self, size: int = 4096) -> bytes:
        import serial

        try:
            # Wait up to the timeout for one byte, then take whatever else is already buffered.
            first = self._port.read(1)
            if not first:
                return b""
            waiting = min(self._port.in_waiting, size - 1)
            return first + (self._port.read(waiting) if waiting > 0 else b"")
        except serial.SerialException as err:
            raise EOFError(f"{self.url}: {err}") from None
        except OSError as err:  # a pty whose other end closed reports EIO
            raise EOFError(f"{self.url}: {err}") from None

    def write(self, data: bytes) -> None:
        import serial

        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as err:
            raise EOFError(f"{self.url}: {err}") from None

    def close(self) -> None:
        self._port.close()


class FdTransport(Transport):
    """Two file descriptors: stdin/stdout, a pipe pair, or the controller side of a pty."""

    def __init__(
        self, read_fd: int, write_fd: int, *, timeout: float = 0.1, url: str = "fd://", owns: bool = False
    ) -> None:
        self.url = url
        self._read_fd, self._write_fd = read_fd, write_fd
        self._timeout = timeout
        self._owns = owns

    def read(self, size: int = 4096) -> bytes:
        ready, _, _ = select.select([self._read_fd], [], [], self._timeout)
        if not ready:
            return b""
        try:
            data = os.read(self._read_fd, size)
        except OSError as err:  # EIO from a pty whose other side closed
            raise EOFError(f"{self.url}: {err}") from None
        if not data:
            raise EOFError(f"{self.url}: end of stream")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._write_fd, view) :]
        except OSError as err:
            raise EOFError(f"{self.url}: {err}") from None

    def close(self) -> None:
        if self._owns:
            for fd in {self._read_fd, self._write_fd}:
                os.close(fd)


class TcpTransport(Transport):
    def __init__(self, sock: socket.socket, *, timeout: float = 0.1, url: str = "tcp://") -> None:
        self.url = url
        self._sock = sock
        self._sock.settimeout(timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def connect(cls, host: str, port: int, *, timeout: float = 0.1) -> "TcpTransport":
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
        except OSError as err:
            raise EdgeRuntimeError(f"cannot connect to tcp://{host}:{port}: {err.strerror or err}") from None
        return cls(sock, timeout=timeout, url=f"tcp://{host}:{port}")

    def read(self, size: int = 4096) -> bytes:
        try:
            data = self._sock.recv(size)
        except socket.timeout:
            return b""
        except OSError as err:
            raise EOFError(f"{self.url}: {err}") from None
        if not data:
            raise EOFError(f"{self.url}: connection closed")
        return data

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as err:
            raise EOFError(f"{self.url}: {err}") from None

    def close(self) -> None:
        self._sock.close()


class TcpListener:
    """A listening socket; ``accept()`` gives one ``TcpTransport`` per connecting host."""

    def __init__(self, host: str, port: int, *, timeout: float = 0.1) -> None:
        self._timeout = timeout
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            raise EdgeRuntimeError(f"cannot listen on tcp://{host}:{port}: {err.strerror or err}") from None
        self._sock.listen(1)
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"tcp://{self.host}:{self.port}"

    def accept(self, wait: Optional[float] = None) -> Optional[TcpTransport]:
        """The next connection, or None if none came within ``wait`` seconds (None: wait forever)."""
        self._sock.settimeout(wait)
        try:
            sock, peer = self._sock.accept()
        except socket.timeout:
            return None
        return TcpTransport(sock, timeout=self._timeout, url=f"tcp://{peer[0]}:{peer[1]}")

    def close(self) -> None:
        self._sock.close()


def parse_tcp(url: str) -> tuple[str, int]:
    """(host, port) of ``tcp://host:port``; an empty host is 127.0.0.1.

    >>> parse_tcp("tcp://:9000"), parse_tcp("tcp://0.0.0.0:7")
    (('127.0.0.1', 9000), ('0.0.0.0', 7))
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or port is None:
        raise EdgeRuntimeError(f"bad TCP URL {url!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:9000")
    return parts.hostname or "127.0.0.1", port


def is_loopback(host: str) -> bool:
    """True if ``host`` (an address or a name) reaches this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, True, False, True)
    """
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def open_transport(url: str, *, baudrate: int = 115200, timeout: float = 0.1) -> Transport:
    """A connected transport for ``url`` (see the module docstring). For a TCP server use ``TcpListener``."""
    if url == "stdio://":
        return FdTransport(0, 1, timeout=timeout, url=url)
    if url.startswith("tcp://"):
        host, port = parse_tcp(url)
        return TcpTransport.connect(host, port, timeout=timeout)
    return SerialTransport(url, baudrate=baudrate, timeout=timeout)


__all__ = [
    "FdTransport",
    "SerialTransport",
    "TcpListener",
    "TcpTransport",
    "Transport",
    "is_loopback",
    "open_transport",
    "parse_tcp",
]
