"""A Mosquitto broker of one's own, on loopback: for tests, the bench and trying a fleet out.

``Broker(folder, fleet, devices)`` writes into ``folder`` a password file (one random password per
device and observer, hashed with ``mosquitto_passwd -U``), an ACL and a config, then runs Debian's
``mosquitto -c CONF`` on a free loopback port. The ACL lets a logged-in user read the fleets'
topics and write only ``edgert/<fleet>/<model>/<kind>/<its own name>``, so a device cannot publish
as another; anonymous clients are refused. ``fleet`` names the default fleet of ``url``; other
fleets on the same broker are reached with ``url_for``. Persistence is on (``mosquitto.db`` in the folder,
saved every 30 s and at a clean stop), like a broker a team would run: a SIGKILL loses the
retained messages and queues since the last save, which the fleet must survive.

The broker is stopped by its pid (``stop``), killed with SIGKILL (``kill``) and started again on
the same port (``start``).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge_runtime.errors import EdgeRuntimeError

OBSERVER = "observer"


def find_mosquitto() -> str:
    """The ``mosquitto`` binary (Debian installs it in /usr/sbin, often off a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise EdgeRuntimeError("mosquitto is not installed: `apt-get install mosquitto` (make setup does it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_private(path: Path, text: str) -> Path:
    """A new file only its owner may read (mode 0600), as key and password files must be."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class Broker:
    """A Mosquitto process with a generated config (see the module docstring).

    >>> Broker("/tmp/b", "shop", ["cam/1"])
    Traceback (most recent call last):
    ...
    edge_runtime.errors.EdgeRuntimeError: device name 'cam/1' must be letters, digits, '-', '_' or '.'
    """

    def __init__(self, folder: str | Path, fleet: str, devices: list[str], *, port: int | None = None) -> None:
        for name in [fleet, *devices]:
            check_name(name, "fleet" if name == fleet else "device")
        self.folder = Path(folder)
        self.fleet = fleet
        self.devices = list(devices)
        self.port = port or free_port()
        self.passwords = {name: secrets.token_hex(16) for name in [*self.devices, OBSERVER]}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.url_for(self.fleet)

    def url_for(self, fleet: str) -> str:
        return f"mqtt://127.0.0.1:{self.port}/{check_name(fleet, 'fleet')}"

    def password_file(self, user: str) -> Path:
        """A 0600 file holding ``user``'s password (for ``--fleet-password-file``)."""
        return write_private(self.folder / f"{user}.password", self.passwords[user] + "\n")

    def _configure(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        passwd = write_private(self.folder / "passwd", "".join(f"{u}:{p}\n" for u, p in self.passwords.items()))
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
        acl = self.folder / "acl"
        acl.write_text(
            "# every user reads the fleets; each writes only under its own name\n"
            "pattern read edgert/#\npattern write edgert/+/+/+/%u\n"
        )
        conf = self.folder / "mosquitto.conf"
        # `user` is the current one: as root Mosquitto would otherwise switch to user mosquitto,
        # which cannot read this folder.
        conf.write_text(
            f"per_listener_settings false\nallow_anonymous false\n"
            f"password_file {passwd}\nacl_file {acl}\n"
            f"listener {self.port} 127.0.0.1\n"
            f"persistence true\npersistence_location {self.folder}/\nautosave_interval 30\n"
            f"max_queued_messages 10000\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"log_dest file {self.folder}/mosquitto.log\n"
        )
        return conf

    def start(self, timeout: float = 20.0) -> "Broker":
        """Run the broker and wait until it accepts connections."""
        conf = self._configure() if not (self.folder / "mosquitto.conf").is_file() else self.folder / "mosquitto.conf"
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EdgeRuntimeError(f"mosquitto exited ({self.process.returncode}): {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)  # polling a port that is not open yet; nothing to wait on
        self.stop()
        raise EdgeRuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        log = self.folder / "mosquitto.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            text += self.process.stderr.read().decode(errors="replace")
        return " | ".join(text.strip().splitlines()[-5:])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def kill(self) -> None:
        """SIGKILL: no clean save, as a power cut or the OOM killer would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its state and exits)."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)
        self.process.wait(30)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_name(name: str, what: str) -> str:
    """A fleet or device name: one MQTT topic level and a broker user name."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise EdgeRuntimeError(f"{what} name {name!r} must be letters, digits, '-', '_' or '.'")
    return name


__all__ = ["Broker", "OBSERVER", "check_name", "find_mosquitto", "free_port", "write_private"]
