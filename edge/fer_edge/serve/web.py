"""The live view: a small HTTP server on its own threads, reading the newest frame from a :class:`LiveFeed`.

Endpoints (all behind the token when one is set): ``/`` the page, ``/api/stats``, ``/api/latest.jpg``,
``/api/stream.mjpeg``, ``/metrics`` (Prometheus text), ``/api/session`` (the sign-in page's: a bearer token
swapped for the session cookie); the review page and its APIs, recordings and thumbnails
are :mod:`fer_edge.serve.review`'s. JPEGs are encoded only when asked for, from the newest frame, once per frame
whatever the number of viewers; a slow viewer skips frames, nothing queues for it.

Connections are held and requests read by :class:`~fer_edge.serve.front.HttpFront`, within fixed bounds; each
complete request is answered here on one of a fixed pool of threads, the token checked first. Live streams and
recordings being sent hold their thread while they last, so there are at most ``max_viewers`` and
:data:`MAX_TRANSFERS` of them: the threads left over always answer the live view's frames and the APIs.
"""

from __future__ import annotations

import contextlib
import gzip
import hmac
import importlib.resources
import io
import json
import logging
import select
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np

from fer_edge.errors import FerEdgeError
from fer_edge.serve import review
from fer_edge.serve.access import cookie_value, loopback_host
from fer_edge.serve.front import HttpFront, Limits, connection_cap
from fer_edge.serve.live import LiveFeed
from fer_edge.serve.metrics import metrics_text
from fer_edge.serve.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
# The live page: its own script and styles, and from this server only (blob: for the JPEGs its script fetches).
PAGE_CSP = (
    "default-src 'none'; img-src 'self' blob:; connect-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

__all__ = ["JpegFrames", "WebServer"]

COOKIE_NAME = "fer_edge_session"

BOUNDARY = "fer-edge-frame"
GZIP_FROM = 2048  # bytes of JSON: below, compressing saves less than it costs
SEND_TIMEOUT_S = 10.0  # a viewer that takes no data for this long is dropped
SPARE_WORKERS = 4  # threads for requests beyond the live streams, which hold theirs while they last
# Recordings sent at once: a playing or downloading video holds its thread for as long as it is read, so without a
# cap a few of them would take every thread and the live view would wait
MAX_TRANSFERS = 4
NOT_LOOPBACK = (
    "403 forbidden: without a token this server answers only to localhost, 127.0.0.1 and [::1]; "
    "set a token (web.token_file) to open it by another name\n"
)
INTERNAL_ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# --- JPEG frames, encoded on demand ----------------------------------------------------------------


class JpegFrames:
    """The newest frame as JPEG, encoded at most once per frame (shared by every viewer); never goes back to an
    older frame, whatever order the viewers' threads come in."""

    def __init__(self, feed: LiveFeed, width: int | None, quality: int) -> None:
        self.feed = feed
        self.width = width
        self.quality = quality
        self._lock = threading.Lock()
        self._seq = -1
        self._jpeg: bytes | None = None
        self.encoded = 0

    def latest(self) -> tuple[int, bytes | None]:
        with self._lock:
            seq, frame, _ = self.feed.latest()
            if seq > self._seq and frame is not None:
                jpeg = encode_jpeg(frame.image, self.width, self.quality)
                if jpeg is not None:
                    self._jpeg, self._seq = jpeg, seq
                    self.encoded += 1
            return self._seq, self._jpeg


def encode_jpeg(image: np.ndarray, width: int | None, quality: int) -> bytes | None:
    import cv2

    height, full_width = image.shape[:2]
    if width is not None and width < full_width:
        image = cv2.resize(image, (width, max(1, round(height * width / full_width))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes() if ok else None


# --- the server ------------------------------------------------------------------------------------


def session_cookie(session: str) -> str:
    """The Set-Cookie value that keeps a browser signed in: script cannot read it, other sites cannot send it."""
    return f"{COOKIE_NAME}={session}; HttpOnly; SameSite=Strict; Path=/"


def takes_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip: named (in any case), and not refused with ``q=0``."""
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() != "gzip":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


class _Writer(io.BufferedIOBase):
    """The socket as the handler's ``wfile``: every write is sent whole, at once."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.started = False  # whether an answer has begun: then another would corrupt it

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.started = True
        self._sock.sendall(data)
        return len(data)


class Slots:
    """Up to ``limit`` of one kind of request at once (live streams, recordings being sent), counted across the
    worker threads: each holds its thread for as long as it lasts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """One more, if fewer than ``limit`` are taken; give it back with :meth:`release`."""
        with self._lock:
            if self.taken >= self.limit:
                return False
            self.taken += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.taken -= 1


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
        max_connections: int = 128,
        max_viewers: int = 4,
    ) -> None:
        # host and token passed the pre-start checks (config.preflight), which check-config runs too
        self.feed = feed
        self.host, self.port = host, port
        self.token = token
        self.session = cookie_value(token) if token is not None else None
        self.stream_period = 1.0 / stream_fps
        connections = connection_cap(max_connections)
        self.limits = Limits(
            max_connections=connections,
            max_per_address=max(2, connections // 4),
            workers=max_viewers + MAX_TRANSFERS + SPARE_WORKERS,
        )
        self.jpegs = JpegFrames(feed, stream_width, jpeg_quality)
        static = importlib.resources.files("fer_edge.serve").joinpath("static")
        self.page = static.joinpath("live.html").read_bytes()
        self.signin_page = static.joinpath("signin.html").read_bytes()
        self.closing = threading.Event()
        self.viewer_slots = Slots(max_viewers)
        self.transfer_slots = Slots(MAX_TRANSFERS)
        self.warn = RateLimitedLog(log)
        self._front: HttpFront | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebServer:
        try:
            self._front = HttpFront((self.host, self.port), self._answer, self.limits)
        except OSError as exc:
            raise FerEdgeError(f"web.listen: cannot listen on {self.host}:{self.port} ({exc.strerror})") from None
        self.port = self._front.address[1]  # port 0: the one the system chose
        try:
            self._front.start()
        except RuntimeError as exc:  # no thread to be had: a process limit
            self._front.close()
            raise FerEdgeError(f"web: cannot start the live view's threads ({exc})") from None
        log.info("web: live view on %s%s", self.url, " (token required)" if self.token else "")
        return self

    def close(self) -> None:
        self.closing.set()
        if self._front is not None:
            self._front.close()
            self._front = None

    def _answer(self, sock: socket.socket, client: tuple[str, int], head: bytes) -> bool:
        sock.settimeout(SEND_TIMEOUT_S)
        handler = _Handler(self, sock, client, head)
        return not handler.close_connection

    def stats(self) -> dict:
        stats = self.feed.stats()
        stats["viewers"] = self.viewer_slots.taken
        stats["stream_fps"] = round(1.0 / self.stream_period, 2)
        front = self._front
        if front is not None:
            stats["web"] = {"connections": front.open_connections, **front.counters.as_dict()}
        return stats


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose line and headers the front has read already (``head``)."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a malformed request line still gets a status line: 400, not bare HTML
    server_version = "fer-edge"
    sys_version = ""

    def __init__(self, app: WebServer, sock: socket.socket, client: tuple[str, int], head: bytes) -> None:
        # Not BaseRequestHandler's: no socketserver, and the request is in memory already.
        self.app = app
        self.request = self.connection = sock
        self.client_address = client
        self.rfile = io.BytesIO(head)
        self.wfile = _Writer(sock)
        self.close_connection = True
        try:
            self.handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            self.close_connection = True
            if not self.wfile.started:  # the client gets an answer rather than a connection closed on it
                with contextlib.suppress(OSError):
                    self.wfile.write(INTERNAL_ERROR)
            raise  # the front logs it

    # --- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        # The query may hold ?token=: log the path only, and only when debugging.
        path = urlsplit(getattr(self, "path", "")).path
        log.debug("web: %s %s %s", self.address_string(), getattr(self, "command", None), path)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        # One line per malformed request, at most one a minute per kind; the request line itself may hold a token.
        code = args[0] if args and isinstance(args[0], int) else 0
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error"
        self.app.warn.warning(f"http {code}", "web: %s: %d %s", self.client_address[0], code, phrase)

    def address_string(self) -> str:
        return str(self.client_address[0])

    def end_headers(self) -> None:
        # No route reads a body, and the front would take one for the next request on the connection (what a proxy
        # passes on as one request's body would be answered as another request): the connection ends here.
        headers = getattr(self, "headers", None)
        if headers is not None and not self.close_connection:
            if headers.get("Transfer-Encoding") or headers.get("Content-Length", "0").strip() != "0":
                self.send_header("Connection", "close")
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
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

    def _json(self, value: object, status: int = 200) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()
        # A page of the review asks for ten recordings' events at once, a quarter of a megabyte each on a busy
        # day: a tenth of that compressed, for the Wi-Fi and the phone.
        if len(body) > GZIP_FROM and takes_gzip(self.headers.get("Accept-Encoding", "")):
            packed = gzip.compress(body, compresslevel=5)
            self._send(status, packed, "application/json", {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        else:
            self._send(status, body, "application/json", {"Vary": "Accept-Encoding"})

    def _text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8", headers)

    # --- the token

    def _authorize(self, query: dict[str, list[str]]) -> bool | None:
        """True: go on; False: 401 sent; None: redirect sent (a ?token= was swapped for the session cookie)."""
        app = self.app
        if app.token is None or app.session is None:  # the session is None exactly when the token is
            return True
        header = self.headers.get("Authorization", "")
        given_header = header[7:].strip()
        if (
            header[:7].lower() == "bearer "
            and given_header
            and hmac.compare_digest(given_header.encode(), app.token.encode())
        ):
            return True
        if any(hmac.compare_digest(value.encode(), app.session.encode()) for value in self._session_cookies()):
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
                    "Set-Cookie": session_cookie(app.session),
                },
            )
            return None
        # Then the connection closes: a client without the token that pipelines requests and reads no answer would
        # otherwise hold a worker in each answer's send once the socket buffers are full.
        challenge = {"WWW-Authenticate": 'Bearer realm="fer-edge"', "Connection": "close"}
        if "text/html" in self.headers.get("Accept", ""):  # a browser opening a page (HEAD: the same headers)
            self._send(
                HTTPStatus.UNAUTHORIZED,
                app.signin_page,
                "text/html; charset=utf-8",
                {**challenge, "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"},
            )
        else:
            self._text(
                HTTPStatus.UNAUTHORIZED,
                "401 unauthorized: send Authorization: Bearer TOKEN, or open / in a browser and give the token\n",
                challenge,
            )
        return False

    def _session_cookies(self) -> list[str]:
        """The values of every session cookie sent. Not http.cookies: it stops at the first cookie it cannot
        read (a space or JSON in a value, a name alone), and cookies of every app on this host, whatever its port,
        come in the same header."""
        found = []
        for header in self.headers.get_all("Cookie", []):
            for pair in header.split(";"):
                name, equals, value = pair.partition("=")
                if equals and name.strip() == COOKIE_NAME:
                    found.append(value.strip().strip('"'))
        return found

    # --- routes

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if self.app.token is None and not loopback_host(self.headers.get("Host", "")):
                # With no token, the loopback address is all that keeps others out; a page from another site whose
                # name was pointed at 127.0.0.1 (DNS rebinding) would read the camera through the visitor's browser.
                self._text(HTTPStatus.FORBIDDEN, NOT_LOOPBACK, {"Connection": "close"})
                return
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

    def _page(self, query: dict[str, list[str]]) -> None:
        self._send(200, self.app.page, "text/html; charset=utf-8", {"Content-Security-Policy": PAGE_CSP})

    def _session(self, query: dict[str, list[str]]) -> None:
        """The sign-in page's call: its bearer token (checked already) becomes the session cookie."""
        headers = {"Cache-Control": "no-store"}
        if self.app.session is not None:
            headers["Set-Cookie"] = session_cookie(self.app.session)
        self._send(HTTPStatus.NO_CONTENT, b"", "text/plain", headers)

    def _stats(self, query: dict[str, list[str]]) -> None:
        self._json(self.app.stats())

    def _latest(self, query: dict[str, list[str]]) -> None:
        _, jpeg = self.app.jpegs.latest()
        if jpeg is None:
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet\n", {"Retry-After": "1"})
        else:
            self._send(200, jpeg, "image/jpeg")

    def _stream(self, query: dict[str, list[str]]) -> None:
        app = self.app
        if not app.viewer_slots.take():
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, "too many live streams open\n", {"Retry-After": "10"})
            return
        try:
            self._stream_frames()
        finally:
            app.viewer_slots.release()

    def _stream_frames(self) -> None:
        app = self.app
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = -1
        while not app.closing.is_set() and not app.feed.closed:
            started = time.monotonic()
            if app.feed.wait_newer(sent, app.stream_period * 4) == sent:
                if self._viewer_left():
                    return
                continue
            sent, jpeg = app.jpegs.latest()
            if jpeg is not None:
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
            elif self._viewer_left():
                return
            app.closing.wait(max(0.0, app.stream_period - (time.monotonic() - started)))

    def _viewer_left(self) -> bool:
        """Whether the viewer closed the connection. A write would tell, but while there is no frame (the camera is
        lost, or before its first frame) nothing is written, and a viewer that left would keep its place."""
        # A look that does not wait: the socket has a send timeout, and with one Python waits for data up to it
        # before a recv, MSG_DONTWAIT or not; meanwhile this viewer was sent no frame, and at its end was dropped.
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _metrics(self, query: dict[str, list[str]]) -> None:
        app = self.app
        stats = app.stats()
        text = metrics_text(
            stats,
            {
                "web_viewers": ("gauge", "Live view streams open.", app.viewer_slots.taken),
                "web_jpegs_encoded_total": ("counter", "Frames encoded as JPEG for the live view.", app.jpegs.encoded),
            },
        )
        self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


ROUTES = {
    "/": _Handler._page,
    "/index.html": _Handler._page,
    "/api/session": _Handler._session,
    "/api/stats": _Handler._stats,
    "/api/latest.jpg": _Handler._latest,
    "/api/stream.mjpeg": _Handler._stream,
    "/api/events": review.events,
    "/api/recordings": review.recordings,
    "/api/summary": review.summary,
    "/review": review.page,
    "/metrics": _Handler._metrics,
}
