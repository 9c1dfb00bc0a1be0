"""The live view: a small HTTP server on its own threads, reading the newest frame from a :class:`LiveFeed`.

Endpoints (all behind the token when one is set): ``/`` the page, ``/api/stats``, ``/api/latest.jpg``,
``/api/stream.mjpeg``, ``/metrics`` (Prometheus text); the review page and its APIs, recordings and thumbnails
are :mod:`fer_edge.serve.review`'s. JPEGs are encoded only when asked for, from the newest frame, once per frame
whatever the number of viewers; a slow viewer skips frames, nothing queues for it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.cookies
import importlib.resources
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from fer_edge.errors import ConfigError, FerEdgeError
from fer_edge.serve import review
from fer_edge.serve.live import LiveFeed
from fer_edge.serve.metrics import metrics_text

log = logging.getLogger(__name__)

COOKIE_NAME = "fer_edge_session"
BOUNDARY = "fer-edge-frame"
SEND_TIMEOUT_S = 10.0  # a viewer that takes no data for this long is dropped
CREDENTIAL_NAME = "web-token"  # systemd LoadCredential= name, read from $CREDENTIALS_DIRECTORY


# --- the token ---------------------------------------------------------------------------------


def read_secret_file(path: Path, key: str) -> str:
    """The first line of a secret file that only its owner (and group) can read; ConfigError otherwise."""
    try:
        mode = path.stat().st_mode
        if mode & 0o007:
            raise ConfigError(f"{key}: {path} is readable by others (mode {mode & 0o777:o}); chmod 600 or 640 it")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    secret = text.strip()
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret


def resolve_secret(value: str | None, file: str | None, credential: str, key: str) -> str | None:
    """The secret from config, else its file, else the systemd credential ``credential``; None if none."""
    if value is not None:
        return value
    if file is not None:
        return read_secret_file(Path(file), f"{key}_file")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / credential).is_file():
        return read_secret_file(Path(directory) / credential, f"{key} (systemd credential {credential})")
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_value(token: str) -> str:
    """What the session cookie holds: derived from the token, so the browser never stores the token itself."""
    return hmac.new(token.encode(), b"fer-edge live view session", hashlib.sha256).hexdigest()


# --- JPEG frames, encoded on demand ----------------------------------------------------------------


class JpegFrames:
    """The newest frame as JPEG, encoded at most once per frame (shared by every viewer)."""

    def __init__(self, feed: LiveFeed, width: int | None, quality: int):
        self.feed = feed
        self.width = width
        self.quality = quality
        self._lock = threading.Lock()
        self._seq = -1
        self._jpeg: bytes | None = None
        self.encoded = 0

    def latest(self) -> tuple[int, bytes | None]:
        seq, frame, _ = self.feed.latest()
        with self._lock:
            if seq != self._seq and frame is not None:
                self._jpeg = encode_jpeg(frame.image, self.width, self.quality)
                self._seq = seq
                self.encoded += 1
            return self._seq, self._jpeg


def encode_jpeg(image, width: int | None, quality: int) -> bytes | None:
    import cv2

    height, full_width = image.shape[:2]
    if width is not None and width < full_width:
        image = cv2.resize(image, (width, max(1, round(height * width / full_width))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes() if ok else None


# --- Prometheus text -------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, app: WebServer):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        super().__init__(address, handler)


class WebServer:
    """Serves the live view from ``feed`` on ``host:port`` (its own daemon threads) until :meth:`close`."""

    def __init__(
        self,
        feed: LiveFeed,
        *,
        host: str,
        port: int,
        token: str | None,
        stream_fps: float = 5.0,
        stream_width: int | None = None,
        jpeg_quality: int = 75,
    ):
        if token is None and not is_loopback(host):
            raise ConfigError(
                f"web.listen: {host} is reachable from other machines; set web.token_file (or "
                f"web.token, or the systemd credential {CREDENTIAL_NAME}), or listen on 127.0.0.1"
            )
        self.feed = feed
        self.host, self.port = host, port
        self.token = token
        self.session = cookie_value(token) if token is not None else None
        self.stream_period = 1.0 / stream_fps
        self.jpegs = JpegFrames(feed, stream_width, jpeg_quality)
        self.page = importlib.resources.files("fer_edge.serve").joinpath("static/live.html").read_bytes()
        self.closing = threading.Event()
        self.viewers = 0
        self._viewers_lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebServer:
        try:
            self._httpd = _Server((self.host, self.port), _Handler, self)
        except OSError as exc:
            raise FerEdgeError(f"web.listen: cannot listen on {self.host}:{self.port} ({exc.strerror})") from None
        self.port = self._httpd.server_address[1]  # port 0: the one the system chose
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="fer-edge-web", daemon=True
        )
        self._thread.start()
        log.info("web: live view on %s%s", self.url, " (token required)" if self.token else "")
        return self

    def close(self) -> None:
        self.closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def stats(self) -> dict:
        stats = self.feed.stats()
        stats["viewers"] = self.viewers
        stats["stream_fps"] = round(1.0 / self.stream_period, 2)
        return stats

    def add_viewer(self, delta: int) -> None:
        with self._viewers_lock:
            self.viewers += delta


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle kept-alive connection is closed after this many seconds
    server_version = "fer-edge"
    sys_version = ""
    server: _Server

    # --- plumbing

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        # The query may hold ?token=: log the path only, and only when debugging.
        log.debug("web: %s %s %s", self.address_string(), self.command, urlsplit(self.path).path)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode(), "application/json")

    def _text(self, status: int, text: str, headers: dict | None = None) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8", headers)

    # --- the token

    def _authorize(self, query: dict) -> bool | None:
        """True: go on; False: 401 sent; None: redirect sent (a ?token= was swapped for the session cookie)."""
        app = self.server.app
        if app.token is None or app.session is None:  # the session is None exactly when the token is
            return True
        header = self.headers.get("Authorization", "")
        if header[:7].lower() == "bearer " and hmac.compare_digest(header[7:].strip().encode(), app.token.encode()):
            return True
        cookies = http.cookies.SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            pass
        if COOKIE_NAME in cookies and hmac.compare_digest(cookies[COOKIE_NAME].value.encode(), app.session.encode()):
            return True
        given = query.get("token", [""])[0]
        if given and hmac.compare_digest(given.encode(), app.token.encode()):
            url = urlsplit(self.path)
            rest = urlencode([(k, v) for k, values in query.items() if k != "token" for v in values])
            self._send(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                {
                    "Location": url.path + (f"?{rest}" if rest else ""),
                    "Set-Cookie": f"{COOKIE_NAME}={app.session}; HttpOnly; SameSite=Strict; Path=/",
                },
            )
            return None
        self._text(
            HTTPStatus.UNAUTHORIZED,
            "401 unauthorized: send Authorization: Bearer TOKEN, or open /?token=TOKEN once\n",
            {"WWW-Authenticate": 'Bearer realm="fer-edge"'},
        )
        return False

    # --- routes

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if not self._authorize(query):
                return
            route = ROUTES.get(url.path)
            if route is not None:
                route(self, query)
            elif url.path.startswith("/recordings/"):
                review.recording_file(self, url.path[len("/recordings/") :], query)
            elif url.path.startswith("/thumbnails/"):
                review.thumbnail(self, url.path[len("/thumbnails/") :], query)
            else:
                self._text(HTTPStatus.NOT_FOUND, "404 not found\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _page(self, query) -> None:
        csp = (
            "default-src 'none'; img-src 'self' blob:; connect-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        self._send(200, self.server.app.page, "text/html; charset=utf-8", {"Content-Security-Policy": csp})

    def _stats(self, query) -> None:
        self._json(self.server.app.stats())

    def _latest(self, query) -> None:
        _, jpeg = self.server.app.jpegs.latest()
        if jpeg is None:
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet\n", {"Retry-After": "1"})
        else:
            self._send(200, jpeg, "image/jpeg")

    def _stream(self, query) -> None:
        app = self.server.app
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.connection.settimeout(SEND_TIMEOUT_S)
        app.add_viewer(1)
        try:
            sent = -1
            while not app.closing.is_set() and not app.feed.closed:
                started = time.monotonic()
                if app.feed.wait_newer(sent, app.stream_period * 4) == sent:
                    continue
                sent, jpeg = app.jpegs.latest()
                if jpeg is not None:
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg
                        + b"\r\n"
                    )
                    self.wfile.flush()
                app.closing.wait(max(0.0, app.stream_period - (time.monotonic() - started)))
        finally:
            app.add_viewer(-1)

    def _metrics(self, query) -> None:
        app = self.server.app
        stats = app.stats()
        text = metrics_text(
            stats,
            {
                "web_viewers": ("gauge", "Live view streams open.", app.viewers),
                "web_jpegs_encoded_total": ("counter", "Frames encoded as JPEG for the live view.", app.jpegs.encoded),
            },
        )
        self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


ROUTES = {
    "/": _Handler._page,
    "/index.html": _Handler._page,
    "/api/stats": _Handler._stats,
    "/api/latest.jpg": _Handler._latest,
    "/api/stream.mjpeg": _Handler._stream,
    "/api/events": review.events,
    "/api/recordings": review.recordings,
    "/api/summary": review.summary,
    "/review": review.page,
    "/metrics": _Handler._metrics,
}
