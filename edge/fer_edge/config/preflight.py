"""Checks that ``run`` makes before it opens the camera, for the live view and MQTT, shared with ``check-config``.

``run`` (``serve.integrations``) and ``check-config`` both call :func:`serve_secrets`, so they refuse the same
configs: a listen address others can reach without a token, a token that is empty or short, a secret file that
is missing, not a regular file, readable by others, empty, binary or huge, a TLS CA file that holds no PEM
certificate, a listen address that is not this machine's, and a web port another program listens on (for
``check-config``, not the running fer-edge itself: see :func:`check_bindable`).
``check-config`` adds :func:`check_output_folder`. Files are opened without blocking (a FIFO named as a secret
file must not hang the start) and read only up to a bound; every error names its key and never the secret.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fer_edge.config.checks import parse_listen, token_problem
from fer_edge.errors import ConfigError
from fer_edge.record.folderlock import folder_held

if TYPE_CHECKING:
    from fer_edge.config.device import Config, MqttConfig, RecordingConfig, WebConfig

CREDENTIAL_NAME = "web-token"  # systemd LoadCredential= name, read from $CREDENTIALS_DIRECTORY
MQTT_CREDENTIAL_NAME = "mqtt-password"
MAX_SECRET_BYTES = 4096
MAX_CA_BYTES = 1 << 20  # a CA bundle; Debian's whole ca-certificates.crt is about 200 KB
PROBE_TIMEOUT_S = 2.0  # the running live view answers at once; a program that keeps quiet is not it

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSecrets:
    token: str | None  # the live view's token; None: none needed (loopback) or web off
    password: str | None  # the MQTT password; None: none, or mqtt off


def read_bounded(path: Path, key: str, max_bytes: int, *, private: bool) -> bytes:
    """The bytes of regular file ``path``, at most ``max_bytes``; ConfigError naming ``key`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{key}: {path} is not a regular file")
        if private and info.st_mode & 0o007:
            raise ConfigError(
                f"{key}: {path} is readable by others (mode {info.st_mode & 0o777:o}); chmod 600 or 640 it"
            )
        if info.st_size > max_bytes:
            raise ConfigError(f"{key}: {path} is larger than {max_bytes} bytes")
        data = os.read(fd, max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ConfigError(f"{key}: {path} is larger than {max_bytes} bytes")
    return data


def read_secret_file(path: Path, key: str) -> str:
    """The secret in a file that only its owner (and group) can read: one line of text."""
    data = read_bounded(path, key, MAX_SECRET_BYTES, private=True)
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in secret):
        raise ConfigError(f"{key}: {path} holds more than one line of text")
    return secret


def resolve_secret(value: str | None, file: str | None, credential: str, key: str) -> str | None:
    """The secret from config, else its file, else the systemd credential ``credential``; None if none."""
    if value is not None:
        return value
    if file is not None:
        return read_secret_file(Path(file), f"{key}_file")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / credential).exists():
        return read_secret_file(Path(directory) / credential, f"{key} (systemd credential {credential})")
    return None


def is_loopback(host: str) -> bool:
    """Only this machine can connect: localhost, 127.0.0.0/8 written out in full, or ::1."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # 127.1 and other short forms bind somewhere the check cannot see: not loopback
    return address.is_loopback and not getattr(address, "ipv4_mapped", None)


def check_listen(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"web.listen: {host} is reachable from other machines; set web.token_file (or "
            f"web.token, or the systemd credential {CREDENTIAL_NAME}), or listen on 127.0.0.1"
        )


def check_bindable(host: str, port: int, *, service_may_hold: bool = False, folder: Path | None = None) -> None:
    """``run`` can listen on ``host:port``: the address is this machine's and no other program listens there. The
    socket is set up as the web front sets up its own, so a port the last run left in TIME_WAIT passes.

    With ``service_may_hold`` (``check-config``) a port held by the running fer-edge is only a note: the service
    checked by hand while it runs, or by an install before its restart. It is told by the recordings ``folder``'s
    lock, or, when nothing is recorded (``folder`` None), by the live view answering on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror as exc:
        raise ConfigError(f"web.listen: cannot listen on {host}:{port} ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise ConfigError(f"web.listen: cannot listen on {host}:{port} ({exc.strerror})") from None
        sign = running_service_sign(host, port, folder) if service_may_hold else None
        if sign is None:
            raise ConfigError(
                f"web.listen: {host}:{port} is in use by another program; stop it, or set web.listen to a free port"
            ) from None
        log.info("web.listen: %s:%d is held by the running fer-edge (%s)", host, port, sign)


def running_service_sign(host: str, port: int, folder: Path | None) -> str | None:
    """What shows that fer-edge itself listens on ``host:port``, or None."""
    if folder is not None:
        return f"its recordings folder {folder} is locked" if folder_held(folder) else None
    return "its live view answers there" if serves_live_view(host, port) else None


def serves_live_view(host: str, port: int) -> bool:
    """A fer-edge live view answers a HEAD request on ``host:port`` (its Server header names it)."""
    if host in ("0.0.0.0", "::"):
        host = "::1" if host == "::" else "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as connection:
            connection.sendall(b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = connection.recv(4096)
    except OSError:
        return False
    head = reply.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    return any(line.startswith(b"server: fer-edge") for line in head[1:])


def web_token(web: WebConfig, *, service_may_hold: bool = False, folder: Path | None = None) -> str | None:
    token = resolve_secret(web.token, web.token_file, CREDENTIAL_NAME, "web.token")
    if token is not None and web.token is None:  # a token in the config itself is checked when it is loaded
        problem = token_problem(token)
        if problem is not None:
            source = "web.token_file" if web.token_file is not None else f"web.token ({CREDENTIAL_NAME})"
            raise ConfigError(f"web.token: the token in {source}: {problem}")
    host, port = parse_listen(web.listen)
    check_listen(host, token)
    check_bindable(host, port, service_may_hold=service_may_hold, folder=folder)
    return token


def mqtt_password(mqtt: MqttConfig) -> str | None:
    password = resolve_secret(mqtt.password, mqtt.password_file, MQTT_CREDENTIAL_NAME, "mqtt.password")
    if password is not None and mqtt.username is None:
        raise ConfigError("mqtt.username: a password is set (mqtt.password, its file or credential) but no username")
    if mqtt.tls_ca_file is not None:
        check_certificates(Path(mqtt.tls_ca_file))
    return password


def check_certificates(path: Path) -> None:
    """``path`` holds PEM certificates, as the MQTT client's TLS set-up reads them."""
    data = read_bounded(path, "mqtt.tls_ca_file", MAX_CA_BYTES, private=False)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise ConfigError(f"mqtt.tls_ca_file: {path} holds no PEM certificate") from None


def serve_secrets(cfg: Config, *, service_may_hold: bool = False) -> ServeSecrets:
    """The live view's token and the MQTT password, after every check ``run`` makes on them. ``service_may_hold``
    (``check-config``): the web port may be held by the running fer-edge (see :func:`check_bindable`)."""
    recorded = cfg.recording.enabled or cfg.events.enabled
    folder = Path(cfg.recording.output_dir) if recorded else None
    return ServeSecrets(
        token=web_token(cfg.web, service_may_hold=service_may_hold, folder=folder) if cfg.web.enabled else None,
        password=mqtt_password(cfg.mqtt) if cfg.mqtt.enabled else None,
    )


def check_output_folder(recording: RecordingConfig, events_enabled: bool) -> None:
    """The recordings' folder, or the nearest folder above it that exists, takes a new file."""
    if not (recording.enabled or events_enabled):
        return
    folder = Path(recording.output_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"recording.output_dir: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".fer-edge-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"recording.output_dir: cannot write in {folder} ({exc.strerror})") from None
