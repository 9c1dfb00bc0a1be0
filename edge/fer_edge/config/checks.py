"""Value checks for config fields: each takes the converted value and returns None, or what was expected (the
loader adds the key path and the value given)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], "str | None"]

X264_TUNES = ("zerolatency", "fastdecode", "film", "animation", "grain", "stillimage", "psnr", "ssim")
MQTT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_TOPIC_ID_CHARS = 64
MAX_CAMERA_INDEX = 1023  # OpenCV capture index (/dev/video<N>)
MIN_TOKEN_CHARS = 16  # 16 random characters; a short one can be guessed over the network


def positive(value: float) -> str | None:
    return None if value > 0 else "expected a positive number"


def path_given(value: str) -> str | None:
    """A path that is blank would not fail: it would quietly mean the current folder, or the key's default (the
    bundled model, camera 0), as a template whose variable was never set writes it."""
    return None if value.strip() else "expected a path (leave the key out for the default)"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "expected a number >= 0"


def fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "expected a number in (0, 1]"


def unit(value: float) -> str | None:
    return None if 0 <= value < 1 else "expected a number in [0, 1)"


def open_unit(value: float) -> str | None:
    return None if 0 < value < 1 else "expected a number in (0, 1)"


def number_range(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"expected a number in [{low:g}, {high:g}]"

    return check


def positive_up_to(limit: float) -> Check:
    def check(value: float) -> str | None:
        return None if 0 < value <= limit else f"expected a number in (0, {limit:g}]"

    return check


def above_up_to(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low < value <= high else f"expected a number in ({low:g}, {high:g}]"

    return check


def int_range(low: int, high: int) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"expected an integer {low}-{high}"

    return check


def colour(value: tuple[int, ...]) -> str | None:
    return None if all(0 <= c <= 255 for c in value) else "expected three integers 0-255 (B, G, R)"


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"

    return check


def camera_device(value: int | str) -> str | None:
    if isinstance(value, int):
        return None if 0 <= value <= MAX_CAMERA_INDEX else f"expected a camera index 0-{MAX_CAMERA_INDEX} or a URL"
    if not value.strip() or any(ord(c) < 32 for c in value):
        return "expected a camera index, a /dev/video path or a URL on one line"
    return None


def positive_at_most(limit: float) -> Check:
    def check(value: float) -> str | None:
        if value <= 0:
            return "expected a positive number"
        return None if value <= limit else f"expected a number <= {limit:g}"

    return check


def at_most(limit: float) -> Check:
    def check(value: float) -> str | None:
        return None if 0 <= value <= limit else f"expected a number in [0, {limit:g}]"

    return check


def x264_tune(value: str) -> str | None:
    parts = value.split(",")
    if all(part in X264_TUNES for part in parts) and len(set(parts)) == len(parts):
        return None
    return f"expected one or more of {', '.join(X264_TUNES)}, joined by commas"


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError("expected host:port with a port 1-65535 (IPv6: [::1]:8080)")
    return host, int(port)


def listen_address(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def topic_id(value: str) -> str | None:
    """Home Assistant's discovery ids and our topic levels: letters, digits, _ and - only, and short enough
    that every topic built from them stays far below MQTT's 65,535 bytes."""
    if not value or not set(value) <= MQTT_ID_CHARS:
        return "expected letters, digits, _ and - only"
    return None if len(value) <= MAX_TOPIC_ID_CHARS else f"expected at most {MAX_TOPIC_ID_CHARS} characters"


def mqtt_host(value: str) -> str | None:
    """A host name (labels of 1-63 letters, digits, - and _) or an IP address; a URL is refused."""
    if "://" in value or "@" in value:
        return "expected a host name or address, not a URL (put the port in mqtt.port, the user in mqtt.username)"
    text = value
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if not text or len(text) > 253 or not all(labels) or any(len(label) > 63 for label in labels):
        return "expected a host name (labels of 1-63 characters, 253 in all) or an IP address"
    if not all(c.isascii() and (c.isalnum() or c in "-_") for label in labels for c in label):
        return "expected a host name of letters, digits, - and _, or an IP address"
    return None


def mqtt_username(value: str) -> str | None:
    if not value or len(value) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "expected 1-256 characters, no control characters"
    return None


def token_problem(token: str) -> str | None:
    """What is wrong with a token (never the token itself), or None."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"expected at least {MIN_TOKEN_CHARS} characters, got {len(token)}"
    if not all(33 <= ord(c) <= 126 for c in token):  # it travels in an HTTP header, which is not UTF-8
        return "expected printable ASCII (letters, digits, punctuation), no spaces or control characters"
    return None
