"""The web server's front: one thread holds every connection and reads requests; a fixed pool answers them.

Nothing a client sends before its request is complete costs more than a small, fixed amount: the front reads
the request line and headers without blocking, into a buffer of at most ``Limits.header_bytes``, and drops the
connection when they are not complete by a deadline counted from the connection's start (or from the end of the
previous answer on a kept-alive connection), however slowly the bytes come. Only a complete request goes to a
worker, which checks the token first. Idle and slow connections thus hold a file descriptor and a few KB each,
never a thread; there are at most ``Limits.max_connections`` of them (``max_per_address`` per client address),
and when the table is full the connection that has waited longest for its request makes room for the new one,
so a flood of idle connections cannot lock out a real client.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import resource
import selectors
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from fer_edge.serve.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

SELECT_INTERVAL_S = 0.2
ACCEPT_PAUSE_S = 0.5  # out of file descriptors: stop accepting this long, instead of spinning on the error
READ_CHUNK = 4096
FDS_KEPT_FREE = 96  # descriptors left to the rest of the service (measured: about 40 in use with web and MQTT)
MIN_CONNECTIONS = 4


@dataclass(frozen=True)
class Limits:
    max_connections: int = 128
    max_per_address: int = 32
    header_bytes: int = 8192  # request line and headers together (the standard library allows 100 x 64 KB)
    header_lines: int = 32
    request_deadline_s: float = 10.0  # a new connection has this long to send a complete request
    keepalive_s: float = 30.0  # a kept-alive connection has this long to send its next request
    workers: int = 8
    backlog: int = 128


@dataclass
class Counters:
    """What the front did since start; ``refused`` and ``timed_out`` sit beside ``requests``."""

    accepted: int = 0
    requests: int = 0
    refused: int = 0  # connections closed at once: table full, or out of descriptors or threads
    evicted: int = 0  # connections closed to make room for a new one
    timed_out: int = 0
    too_large: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, count: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + count)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {
                name: getattr(self, name)
                for name in ("accepted", "requests", "refused", "evicted", "timed_out", "too_large")
            }


@dataclass
class _Connection:
    sock: socket.socket
    address: str
    deadline: float
    waiting_since: float
    buffer: bytearray = field(default_factory=bytearray)


def connection_cap(configured: int) -> int:
    """``web.max_connections``, lowered where the process's descriptor limit would run out before it: the
    recording, the camera and the broker keep ``FDS_KEPT_FREE`` descriptors whatever the clients do."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - FDS_KEPT_FREE >= configured:
        return configured
    cap = max(MIN_CONNECTIONS, soft - FDS_KEPT_FREE)
    log.warning("web: %d open files allowed (ulimit -n); at most %d connections, not %d", soft, cap, configured)
    return cap


# (socket, client address, the request line and headers, bytes after them) -> keep the connection open
Handler = Callable[[socket.socket, tuple[str, int], bytes], bool]


def request_end(buffer: bytes | bytearray) -> int:
    """Where the request line and headers end (after the blank line); -1 while incomplete."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(mark)) >= 0]
    return min(ends) if ends else -1


class HttpFront:
    """Accepts on ``address``; hands each complete request to ``handler`` on one of ``limits.workers`` threads."""

    def __init__(self, address: tuple[str, int], handler: Handler, limits: Limits) -> None:
        self.limits = limits
        self.counters = Counters()
        self._handler = handler
        self._warn = RateLimitedLog(log)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(limits.backlog)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned: queue.SimpleQueue[tuple[_Connection, bool]] = queue.SimpleQueue()  # (connection, kept)
        self._jobs: queue.SimpleQueue[tuple[_Connection, bytes] | None] = queue.SimpleQueue()
        self._idle: dict[socket.socket, _Connection] = {}
        self._open = 0
        self._per_address: dict[str, int] = {}
        self._closing = threading.Event()
        self._paused_until = 0.0
        self._threads: list[threading.Thread] = []

    # --- life cycle

    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for number in range(self.limits.workers):  # all now: a thread limit is met at start, not under load
            self._spawn(self._work, f"fer-edge-web-{number}")
        self._spawn(self._serve, "fer-edge-web")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self, timeout: float = 2.0) -> None:
        self._closing.set()
        self._wake()
        for _ in range(self.limits.workers):
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def open_connections(self) -> int:
        return self._open

    # --- the front thread

    def _serve(self) -> None:
        try:
            while not self._closing.is_set():
                self._step()
        except Exception:  # noqa: BLE001 - logged once; the live view is gone, the loop and the recording go on
            log.exception("web: the connection thread failed; the live view stops")
        finally:
            for conn in list(self._idle.values()):
                self._drop(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _step(self) -> None:
        if self._paused_until and time.monotonic() >= self._paused_until:
            self._paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        for key, _ in self._selector.select(SELECT_INTERVAL_S):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._read(key.data)
        while True:
            try:
                conn, kept = self._returned.get_nowait()
            except queue.Empty:
                break
            if kept:
                self._hold(conn)
            else:
                self._forget(conn)
        now = time.monotonic()
        for conn in [c for c in self._idle.values() if c.deadline <= now]:
            self.counters.add("timed_out")
            self._drop(conn)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.counters.add("refused")
                    self._warn.warning("accept", "web: cannot accept a connection (%s); pausing", exc.strerror)
                    self._selector.unregister(self._listener)
                    self._paused_until = time.monotonic() + ACCEPT_PAUSE_S
                    return
                continue  # the client gave up already (ECONNABORTED and the like)
            self.counters.add("accepted")
            address = str(peer[0])
            if not self._make_room(address):
                self.counters.add("refused")
                self._warn.warning("full", "web: %d connections open; refusing more", self.open_connections)
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now = time.monotonic()
            conn = _Connection(sock, address, now + self.limits.request_deadline_s, now)
            self._per_address[address] = self._per_address.get(address, 0) + 1
            self._open += 1
            self._hold(conn)

    def _make_room(self, address: str) -> bool:
        """Room for one more connection from ``address``: at the cost of the longest-waiting idle one if needed."""
        if self._per_address.get(address, 0) >= self.limits.max_per_address:
            same = [c for c in self._idle.values() if c.address == address]
            if not same:
                return False
            self._evict(min(same, key=lambda c: c.waiting_since))
        if self.open_connections >= self.limits.max_connections:
            if not self._idle:
                return False
            self._evict(min(self._idle.values(), key=lambda c: c.waiting_since))
        return True

    def _evict(self, conn: _Connection) -> None:
        self.counters.add("evicted")
        self._warn.warning("evict", "web: connection table full; closing the connections that wait longest")
        self._drop(conn)

    def _hold(self, conn: _Connection) -> None:
        if self._closing.is_set():
            self._forget(conn)
            return
        self._idle[conn.sock] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        if conn.buffer:  # a pipelined request came with the previous one
            self._dispatch_if_complete(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buffer += data
        self._dispatch_if_complete(conn)

    def _dispatch_if_complete(self, conn: _Connection) -> None:
        buffer = conn.buffer
        if buffer[:1] and not buffer[:1].isalpha():  # not HTTP at all: a TLS handshake, binary noise
            self._refuse(conn, b"400 Bad Request", "not an HTTP request")
            return
        end = request_end(buffer)
        if end < 0:
            if len(buffer) > self.limits.header_bytes or buffer.count(b"\n") > self.limits.header_lines:
                self._refuse(conn, b"431 Request Header Fields Too Large", "request headers too large")
            return
        if end > self.limits.header_bytes or buffer.count(b"\n", 0, end) > self.limits.header_lines + 1:
            self._refuse(conn, b"431 Request Header Fields Too Large", "request headers too large")
            return
        head, conn.buffer = bytes(buffer[:end]), bytearray(buffer[end:])
        self._selector.unregister(conn.sock)
        del self._idle[conn.sock]
        self.counters.add("requests")
        self._jobs.put((conn, head))

    def _refuse(self, conn: _Connection, status: bytes, why: str) -> None:
        self.counters.add("too_large" if status.startswith(b"431") else "refused")
        self._warn.warning(why, "web: %s from %s: %s", status.decode(), conn.address, why)
        try:
            conn.sock.send(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        if self._idle.pop(conn.sock, None) is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        conn.sock.close()
        self._open -= 1
        left = self._per_address.get(conn.address, 0) - 1
        if left > 0:
            self._per_address[conn.address] = left
        else:
            self._per_address.pop(conn.address, None)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # already woken (the buffer is full) or closed

    # --- the workers

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, head = job
            keep = False
            try:
                conn.sock.setblocking(True)
                keep = self._handler(conn.sock, (conn.address, 0), head)
            except Exception as exc:  # noqa: BLE001 - one request failed; the worker serves the next
                # A client can repeat the request at its own pace: a line a minute per fault, naming where it
                # arose but not the message, which may quote the request; the traceback only when debugging.
                where = traceback.extract_tb(exc.__traceback__)[-1]
                fault = f"{type(exc).__name__} at {os.path.basename(where.filename)}:{where.lineno}"
                self._warn.warning(fault, "web: answering a request failed: %s", fault)
                log.debug("web: answering a request failed", exc_info=True)
            if keep and not self._closing.is_set():
                try:
                    conn.sock.setblocking(False)
                except OSError:
                    keep = False
            if keep:
                now = time.monotonic()
                conn.deadline, conn.waiting_since = now + self.limits.keepalive_s, now
            self._returned.put((conn, keep))
            self._wake()
