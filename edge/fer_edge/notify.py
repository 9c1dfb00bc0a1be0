"""systemd service notifications (``sd_notify``) without libsystemd: one datagram per message.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET``: a filesystem path, or an
abstract socket name written with a leading ``@``. The service sends newline-separated ``KEY=value``
assignments to it: ``READY=1`` once it works, ``WATCHDOG=1`` at least every ``WatchdogSec``,
``STATUS=...`` for ``systemctl status``, ``STOPPING=1`` when it shuts down (sd_notify(3)).

Without ``$NOTIFY_SOCKET`` (a shell, a test, a container) every call is a no-op. A failed send never
raises: the service must keep recording even if systemd is being restarted under it; the first failure
is logged as a warning, later ones at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Speaks the sd_notify datagram protocol to ``address`` (``None``: does nothing).

    ``ping_watchdog=False`` (config ``service.watchdog: false``) keeps ready/status/stopping but never pings.
    """

    def __init__(self, address: str | None, *, watchdog_pid: int | None = None, ping_watchdog: bool = True):
        self.address = address
        self._sock_address = _socket_address(address) if address else None
        self._watchdog_pid = watchdog_pid
        self._ping_watchdog = ping_watchdog
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, ping_watchdog: bool = True) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and _socket_address(address) is None:
            log.warning("NOTIFY_SOCKET=%r is neither a unix socket path nor an @abstract name: not notifying", address)
            address = None
        pid = env.get("WATCHDOG_PID", "")
        return cls(address, watchdog_pid=int(pid) if pid.isdigit() else None, ping_watchdog=ping_watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock_address is not None

    def ready(self, status: str | None = None) -> bool:
        """The service works: systemd marks a ``Type=notify`` unit started."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """Keep-alive for ``WatchdogSec=``; call it only while the work really progresses."""
        if not self._ping_watchdog:
            return False
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return False  # the watchdog belongs to another process (e.g. our parent)
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``."""
        return self.send("STATUS=" + " ".join(text.split()))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; True when it was delivered."""
        if self._sock_address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._sock_address)
        except OSError as exc:
            self._log_failure(exc)
            self.close()  # reconnect on the next message: systemd may have been re-executed
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _log_failure(self, exc: OSError) -> None:
        if self._warned:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return
        self._warned = True
        log.warning("sd_notify to %s failed: %s (further failures are logged at debug level)", self.address, exc)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises), None when off.

    ``$WATCHDOG_PID``, when set, must be this process: otherwise the watchdog is meant for another one.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


def _socket_address(address: str) -> str | bytes | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``, or None when it is not an AF_UNIX address."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # Linux abstract namespace
    if address.startswith("/"):
        return address
    return None  # e.g. "vsock:..." (systemd >= 254 in VMs), which a Pi never gets
