"""Who may use the live view: the session cookie derived from the token, and the loopback names a server
without a token answers."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

__all__ = ["cookie_value", "loopback_host"]


def cookie_value(token: str) -> str:
    """What the session cookie holds: derived from the token, so the browser never stores the token itself."""
    return hmac.new(token.encode(), b"fer-edge live view session", hashlib.sha256).hexdigest()


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any
    port), or is absent, as no browser sends it."""
    host = host.strip().lower()
    name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    name = name.rstrip(".")
    if name in ("", "localhost") or name.endswith(".localhost"):  # browsers resolve *.localhost themselves
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
