"""Faults and abuse, the fast part: bad models, sidecars, configs, sources and arguments, each given to the
real `fer-edge` command in a process of its own. Each must end in one `fer-edge: error:` line and a non-zero
exit: no traceback, no hang (a timeout), no runaway memory (an address-space limit). Then hostile clients of a
running live view (bounded memory, threads and descriptors), and the live view and MQTT configs that
`check-config` must refuse as `run` does. The long part (kills, a model replaced mid-run, a soak) is
tests/test_soak.py, `make soak`."""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fer_edge.contract import file_sha256, sidecar_path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fer_int8.tflite"
FAST_MODEL = REPO / "models" / "fer_fast_int8.tflite"
CLIP = REPO / "assets" / "demo.mp4"
TIMEOUT_S = 30
MEMORY_LIMIT = 3 << 30  # bytes of address space; an alias bomb or an endless read would pass it at once


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def fer_edge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_limit_memory,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


# --- what is broken: each builder makes its files under tmp and returns the command's arguments ---------


def _model_pair(tmp: Path, data: bytes, sidecar: dict | bytes | None = None) -> Path:
    """A model file holding ``data`` and a sidecar: the shipped one with this file's sha256, or ``sidecar``."""
    model = tmp / "model.tflite"
    model.write_bytes(data)
    if isinstance(sidecar, bytes):
        sidecar_path(model).write_bytes(sidecar)
    elif sidecar is not None or data is not None:
        raw = json.loads(sidecar_path(MODEL).read_text())
        raw["sha256"] = file_sha256(model)
        raw.update(sidecar or {})
        sidecar_path(model).write_text(json.dumps(raw))
    return model


def check_model(model: Path) -> list[str]:
    return ["check-config", "--config", str(_write(model.parent / "config.yaml", f"model:\n  path: {model}\n"))]


def _write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _random_bytes(count: int) -> bytes:
    return random.Random(0).randbytes(count)


def check_config(tmp: Path, text: str | bytes) -> list[str]:
    return ["check-config", "--config", str(_write(tmp / "config.yaml", text))]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_source(source: str, *extra: str) -> list[str]:
    return ["run", "--source", source, "--no-record", "--max-frames", "5", *extra]


ALIAS_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)

# The same, all inside one value: where validation quoted the value whole, the error line took all memory.
BOMB_IN_A_VALUE = (
    'source:\n  path: [&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
    + "".join(f", &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi"))
    + "]\n"
)

BAD_MODELS = {
    "missing": (lambda tmp: run_source(str(CLIP), "--model", str(tmp / "nowhere.tflite")), "model not found"),
    "a folder": (lambda tmp: run_source(str(CLIP), "--model", str(tmp)), "is a folder, not a .tflite file"),
    "empty": (lambda tmp: check_model(_model_pair(tmp, b"")), "not a loadable TFLite model"),
    "truncated": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes()[:5000])), "not a loadable"),
    "cut at the end": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes()[:-1000])), "not a loadable"),
    "random bytes": (lambda tmp: check_model(_model_pair(tmp, _random_bytes(100_000))), "not a loadable"),
    "an image": (lambda tmp: check_model(_model_pair(tmp, (REPO / "docs/demo-frame.png").read_bytes())), "loadable"),
}
BAD_SIDECARS = {
    "missing": (
        lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"x") and _unlink_sidecar(tmp)),
        "sidecar not found",
    ),
    "of another model": (
        lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), sidecar_path(FAST_MODEL).read_bytes())),
        "does not match its sidecar checksum",
    ),
    "not JSON": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"labels: [happy]")), "unreadable"),
    "not UTF-8": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"\xff\xfe{}")), "unreadable"),
    "a list": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"[1, 2]")), "expected a JSON object"),
    "empty object": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"{}")), "format"),
    "six labels": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), {"labels": list("abcdef")})), "labels"),
    "huge face margin": (
        lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), {"face_margin": 1e300})),
        "face_margin",
    ),
    "float input": (
        lambda tmp: check_model(
            _model_pair(
                tmp,
                MODEL.read_bytes(),
                {"input": {"shape": [1, 48, 48, 1], "dtype": "float32", "scale": 0.0, "zero_point": 0}},
            )
        ),
        "disagrees with the sidecar",
    ),
    "deeply nested": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"[" * 100_000)), "unreadable"),
}
BAD_CONFIGS = {
    "alias bomb": (lambda tmp: check_config(tmp, ALIAS_BOMB), "expands to more than 10000 values"),
    "alias bomb in a value": (lambda tmp: check_config(tmp, BOMB_IN_A_VALUE), "expands to more than 10000 values"),
    "contains itself": (lambda tmp: check_config(tmp, "source:\n  path: &p [*p]\n"), "contains itself"),
    "2 MB": (lambda tmp: check_config(tmp, "# just a comment\n" * 120_000), "more than a config can be"),
    "/dev/zero": (lambda tmp: ["check-config", "--config", "/dev/zero"], "more than 1000000 bytes"),
    "not UTF-8": (lambda tmp: check_config(tmp, b"source:\n  path: \xff\xfe\n"), "not UTF-8 text"),
    "random bytes": (lambda tmp: check_config(tmp, _random_bytes(4096)), "not"),
    "NUL bytes": (lambda tmp: check_config(tmp, b"source:\n  fps: 3\x00\n"), "not valid YAML"),
    "a list": (lambda tmp: check_config(tmp, "- source\n- model\n"), "expected a mapping of sections, got list"),
    "bad YAML": (lambda tmp: check_config(tmp, "source: [fps: 3\n"), "not valid YAML"),
    "a tab": (lambda tmp: check_config(tmp, "source:\n\tfps: 3\n"), "not valid YAML"),
    "deep nesting": (lambda tmp: check_config(tmp, "[" * 50_000), "not valid YAML"),
    "unknown section": (lambda tmp: check_config(tmp, "sauce:\n  fps: 3\n"), "sauce: unknown key"),
    "missing": (lambda tmp: ["check-config", "--config", str(tmp / "nowhere.yaml")], "cannot read"),
    "a folder": (lambda tmp: ["check-config", "--config", str(tmp)], "cannot read"),
    "fps 1e300": (lambda tmp: check_config(tmp, "source:\n  fps: 1e300\n"), "source.fps: expected a number in"),
    "fps 10**400": (lambda tmp: check_config(tmp, "source:\n  fps: 1" + "0" * 400 + "\n"), "source.fps: expected"),
    "fps .nan": (lambda tmp: check_config(tmp, "source:\n  fps: .nan\n"), "source.fps: expected a number"),
    "width 1e12": (lambda tmp: check_config(tmp, "source:\n  width: 1000000000000\n"), "source.width: expected"),
    "camera index -5": (lambda tmp: check_config(tmp, "source:\n  device: -5\n"), "source.device: expected"),
    "reopen a year": (lambda tmp: check_config(tmp, "source:\n  reopen_max_s: 31536000\n"), "source.reopen_max_s"),
    "threads 1e6": (lambda tmp: check_config(tmp, "model:\n  threads: 1000000\n"), "model.threads: expected"),
    "font 1e308": (lambda tmp: check_config(tmp, "overlay:\n  font_scale: 1e308\n"), "overlay.font_scale"),
    "thickness -1": (lambda tmp: check_config(tmp, "overlay:\n  thickness: -1\n"), "overlay.thickness"),
    "status 1e308 s": (lambda tmp: check_config(tmp, "logging:\n  status_interval_s: 1e308\n"), "logging.status"),
    "level as a list": (lambda tmp: check_config(tmp, "logging:\n  level: [INFO]\n"), "logging.level: expected"),
    "watchdog 2": (lambda tmp: check_config(tmp, "service:\n  watchdog: 2\n"), "service.watchdog: expected true"),
    "events as text": (lambda tmp: check_config(tmp, "events: on please\n"), "events: expected a mapping"),
}
BAD_SOURCES = {
    "missing file": (lambda tmp: run_source(str(tmp / "nowhere.mp4")), "video file not found"),
    "not a video": (lambda tmp: run_source(str(_write(tmp / "notes.mp4", "not a video\n"))), "cannot open video"),
    "random bytes": (lambda tmp: run_source(str(_write(tmp / "noise.mp4", _random_bytes(200_000)))), "video"),
    "empty file": (lambda tmp: run_source(str(_write(tmp / "empty.mp4", b""))), "cannot open video"),
    "empty folder": (lambda tmp: run_source(str(tmp)), "no images in"),
    "unplugged camera": (lambda tmp: run_source("97"), "cannot open camera 97"),
    "missing /dev/video": (lambda tmp: run_source("/dev/video97"), "cannot open camera /dev/video97"),
    "stream nobody serves": (
        lambda tmp: run_source(f"rtsp://admin:s3cret@127.0.0.1:{_closed_port()}/live"),
        "cannot open stream rtsp://admin:***@127.0.0.1",
    ),
}
BAD_ARGUMENTS = {
    "max frames 0": (lambda tmp: run_source(str(CLIP), "--max-frames", "0"), "--max-frames: expected a positive"),
    "max frames text": (lambda tmp: ["run", "--max-frames", "many"], "argument --max-frames: invalid int value"),
    "bench frames -1": (lambda tmp: ["bench", "--source", str(CLIP), "--frames", "-1"], "--frames: expected"),
    "no command": (lambda tmp: [], "the following arguments are required: COMMAND"),
    "unknown command": (lambda tmp: ["fly"], "invalid choice: 'fly'"),
    "unknown option": (lambda tmp: ["run", "--turbo"], "unrecognized arguments: --turbo"),
    "report of nothing": (lambda tmp: ["report", str(tmp / "nowhere.jsonl")], "nowhere.jsonl"),
    "config and source missing": (lambda tmp: ["run", "--config", str(tmp / "a.yaml"), "--source", "b.mp4"], "a.yaml"),
}


def _unlink_sidecar(tmp: Path) -> Path:
    sidecar_path(tmp / "model.tflite").unlink()
    return tmp / "model.tflite"


CASES = {
    f"{group}: {name}": case
    for group, cases in (
        ("model", BAD_MODELS),
        ("sidecar", BAD_SIDECARS),
        ("config", BAD_CONFIGS),
        ("source", BAD_SOURCES),
        ("arguments", BAD_ARGUMENTS),
    )
    for name, case in cases.items()
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(tmp_path, case):
    build, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    result = fer_edge(*build(work), cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert len(errors[0]) < 400, errors[0]
    assert "s3cret" not in result.stderr + result.stdout


# --- the live view and MQTT against abuse: a running `fer-edge run`, clients on loopback ----------------------

TOKEN = "abuse-token-7c3f9e1a"


def _status(pid: int) -> tuple[int, int]:
    """(RSS in MB, threads) of a running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) // 1024, int(status["Threads"])


def _peak_mb(pid: int) -> int:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) // 1024


@pytest.fixture(scope="module")
def live(demo_clip, tmp_path_factory):
    """A realtime, looping run with recording (1 s segments) and the live view behind a token file."""
    from livehelpers import free_port, web_run

    folder = tmp_path_factory.mktemp("abuse-web")
    port = free_port()
    with web_run(demo_clip, folder, port, TOKEN, segment_seconds=1.0) as process:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((folder / "out").glob("*.mp4")):
            time.sleep(0.2)
        yield {"port": port, "folder": folder, "pid": process.pid}


def _stats(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200, body
    return json.loads(body)


def _raw(port: int, data: bytes) -> bytes:
    """The status line and headers the server answers to ``data`` (up to its close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def _raw_body(port: int, data: bytes) -> bytes:
    """The whole answer to ``data``, which asks the server to close after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_malformed_request_gets_a_400_and_logs_one_line(live):
    port, log = live["port"], live["folder"] / "stderr.log"
    for _ in range(200):
        assert _raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    tls_hello = bytes.fromhex("16030100a5010000a10303") + bytes(32)  # what a browser opening https:// sends first
    assert _raw(port, tls_hello).startswith(b"HTTP/1.1 400 ")
    time.sleep(0.5)
    lines = log.read_text().splitlines()
    # the status line itself: a timestamp's milliseconds or a segment's name may hold "400" too
    assert len([line for line in lines if "400 Bad Request" in line]) <= 2, lines[-20:]
    assert "Traceback" not in log.read_text()


def _get(path: str, headers: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: pi\r\nAuthorization: Bearer {TOKEN}\r\n".encode() + headers + b"\r\n"


MALFORMED_REVIEW_REQUESTS = {  # what each is answered: a range of digits that are not ASCII ones is ignored
    "range \u00b2-": ("/recordings/NAME", b"Range: bytes=\xb2-\r\n", b"200"),
    "range 0-\u00b9": ("/recordings/NAME", b"Range: bytes=0-\xb9\r\n", b"200"),
    "range of 5000 digits": ("/recordings/NAME", b"Range: bytes=1" + b"0" * 5000 + b"-\r\n", b"416"),
    "summary from -1e20": ("/api/summary?from=-1e20&to=-1e20", b"", b"400"),
    "summary to 1e300": ("/api/summary?to=1e300", b"", b"400"),
    "events from year 1": ("/api/events?from=0001-01-01T00:00", b"", b"400"),
    "events to year 9999": ("/api/events?from=0&to=9999-12-31T23:59%2B05:00", b"", b"400"),
    "recordings of year 1": ("/api/recordings?day=0001-01-01", b"", b"400"),
    "recordings of the last day": ("/api/recordings?day=9999-12-31", b"", b"400"),
}


def test_malformed_ranges_and_times_in_the_review_are_answered_without_a_traceback(live):
    port, log = live["port"], live["folder"] / "stderr.log"
    name = sorted(path.name for path in (live["folder"] / "out").glob("2*.mp4"))[0]
    deadline = time.monotonic() + 30
    indexed = b'"recording":"2'
    while indexed not in _raw_body(port, _get("/api/events")) and time.monotonic() < deadline:
        time.sleep(0.3)  # events come from the live view until the index holds some: these go to the index
    for path, header, status in MALFORMED_REVIEW_REQUESTS.values():
        for _ in range(20):
            answer = _raw(port, _get(path.replace("NAME", name), header))
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), (path, header[:40], answer[:200])
    time.sleep(0.5)
    text = log.read_text()
    assert "Traceback" not in text and "answering a request failed" not in text, text[-3000:]


def test_a_request_that_fails_unexpectedly_gets_a_500_and_logs_a_line_a_minute(caplog, monkeypatch):
    """What no check foresaw: the client still gets an answer, and repeating the request cannot flood the log."""
    from fer_edge.serve import web
    from fer_edge.serve.live import LiveFeed

    def broken(handler, query):
        raise OverflowError("date value out of range")

    monkeypatch.setitem(web.ROUTES, "/api/broken", broken)
    server = web.WebServer(LiveFeed(), host="127.0.0.1", port=0, token=TOKEN).start()
    try:
        with caplog.at_level(logging.WARNING, logger="fer_edge"):
            for _ in range(50):
                assert _raw(server.port, _get("/api/broken")).startswith(b"HTTP/1.1 500 ")
            assert _stats(server.port)["frames"] == 0  # and the server goes on answering
    finally:
        server.close()
    failed = [record for record in caplog.records if "answering a request failed" in record.getMessage()]
    assert len(failed) == 1 and "OverflowError at test_abuse.py:" in failed[0].getMessage(), caplog.text
    assert not any(record.exc_info for record in caplog.records), caplog.text


def test_header_floods_before_the_token_cost_little_memory(live):
    """60 connections each sending 99 headers of 64 KB, never finishing: the standard library's limits held
    ~6 MB per connection; the front drops each after a few KB."""
    port, pid = live["port"], live["pid"]
    header = b"X-Fill: " + b"a" * (64 * 1024 - 10) + b"\r\n"

    done = threading.Event()
    sent = threading.Semaphore(0)

    def flood() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                try:
                    sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: pi\r\n")
                    for _ in range(99):
                        sock.sendall(header)
                finally:
                    sent.release()
                done.wait(60)  # held open, never finished
        except OSError:
            pass  # closed by the server: what should happen

    threads = [threading.Thread(target=flood) for _ in range(60)]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            assert sent.acquire(timeout=60)
        time.sleep(1.0)
        rss, _ = _status(pid)
        assert rss < 250, f"RSS {rss} MB with the header floods held open"
        assert _stats(port)["frames"] > 0  # an authenticated client is answered meanwhile
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    assert _stats(port)["web"]["too_large"] >= 60


def test_a_thousand_idle_connections_hold_no_threads_and_lock_nobody_out(live):
    port, pid = live["port"], live["pid"]
    before = _stats(port)
    idle = []
    try:
        for _ in range(1200):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break  # the backlog is full: refused, as it should be
        time.sleep(1.0)
        _, threads = _status(pid)
        assert threads <= 100, f"{threads} threads with {len(idle)} idle connections"
        during = _stats(port)  # a real client still gets through: the longest-waiting idle connection made room
        assert during["web"]["connections"] <= 128
        assert during["web"]["evicted"] + during["web"]["refused"] > 0
        assert during["frames"] > before["frames"] and during["recording"]["active"]
    finally:
        for sock in idle:
            sock.close()


def test_a_client_dripping_bytes_is_dropped_at_the_request_deadline(live):
    with socket.create_connection(("127.0.0.1", live["port"]), timeout=5) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # the server closed it: a send fails (the old timeout restarted per byte)
            while time.monotonic() - started < 30:
                sock.sendall(b"X")
                time.sleep(0.5)
        assert time.monotonic() - started < 20


def test_live_streams_are_capped(live):
    port = live["port"]
    request = f"GET /api/stream.mjpeg HTTP/1.1\r\nHost: pi\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    streams = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            assert sock.recv(12) == b"HTTP/1.1 200"
            streams.append(sock)
        assert _raw(port, request).startswith(b"HTTP/1.1 503 ")
        assert _stats(port)["viewers"] == 4  # and the other requests are still answered
    finally:
        for sock in streams:
            sock.close()


def test_a_link_in_the_output_folder_is_neither_listed_nor_served(live):
    port, out = live["port"], live["folder"] / "out"
    secret = _write(live["folder"] / "secret.txt", "not a recording\n")
    (out / "29991231-235959-0001.mp4").symlink_to(secret)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/api/recordings", headers={"Authorization": f"Bearer {TOKEN}"})
    names = [item["name"] for item in json.loads(connection.getresponse().read())["recordings"]]
    assert names and "29991231-235959-0001.mp4" not in names
    connection.request("GET", "/recordings/29991231-235959-0001.mp4", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 404 and b"not a recording" not in response.read()
    connection.close()


# --- live view and MQTT configs: check-config refuses what run refuses, through the same checks -----------------


def _serve_config(tmp: Path, web: dict | None = None, mqtt: dict | None = None, **sections: dict) -> Path:
    raw: dict = {**sections}
    if web is not None:
        raw["web"] = {"enabled": True, **web}
    if mqtt is not None:
        raw["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": _closed_port(), **mqtt}
    return _write(tmp / "serve.yaml", json.dumps(raw))  # JSON is YAML


def _secret(tmp: Path, name: str, data: bytes | int | None, mode: int = 0o600) -> str:
    """A secret file holding ``data``, or that many bytes (sparse), or a folder (None)."""
    path = tmp / name
    if data is None:
        path.mkdir()
    elif isinstance(data, int):
        path.write_bytes(b"a")
        os.truncate(path, data)
    else:
        path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def _fifo(tmp: Path, name: str) -> str:
    os.mkfifo(tmp / name, 0o600)
    return str(tmp / name)


GOOD = b"a-real-token-of-32-characters-ok\n"
SERVE_CONFIGS = {
    "token empty": (lambda tmp: _serve_config(tmp, {"token": ""}), "web.token: expected at least 16 characters"),
    "token short": (lambda tmp: _serve_config(tmp, {"token": "hunter2"}), "web.token: expected at least 16"),
    "0.0.0.0 no token": (lambda tmp: _serve_config(tmp, {"listen": "0.0.0.0:8089"}), "web.listen: 0.0.0.0 is"),
    "[::] no token": (lambda tmp: _serve_config(tmp, {"listen": "[::]:8089"}), "web.listen: :: is reachable"),
    "127.1 no token": (lambda tmp: _serve_config(tmp, {"listen": "127.1:8089"}), "web.listen: 127.1 is reachable"),
    "mapped no token": (
        lambda tmp: _serve_config(tmp, {"listen": "[::ffff:127.0.0.1]:8089"}),
        "web.listen: ::ffff:127.0.0.1 is reachable",
    ),
    "token file missing": (
        lambda tmp: _serve_config(tmp, {"token_file": str(tmp / "nowhere")}),
        "web.token_file: cannot read",
    ),
    "token file 0644": (
        lambda tmp: _serve_config(tmp, {"token_file": _secret(tmp, "t", GOOD, 0o644)}),
        "is readable by others (mode 644)",
    ),
    "token file empty": (lambda tmp: _serve_config(tmp, {"token_file": _secret(tmp, "t", b"\n")}), "is empty"),
    "token file binary": (
        lambda tmp: _serve_config(tmp, {"token_file": _secret(tmp, "t", b"\xff\xfe\x00abc")}),
        "web.token_file: ",
    ),
    "token file short": (
        lambda tmp: _serve_config(tmp, {"token_file": _secret(tmp, "t", b"abc\n")}),
        "web.token: the token in web.token_file: expected at least 16 characters, got 3",
    ),
    "token file a folder": (
        lambda tmp: _serve_config(tmp, {"token_file": _secret(tmp, "t", None, 0o700)}),
        "web.token_file: ",
    ),
    "token file a FIFO": (
        lambda tmp: _serve_config(tmp, {"token_file": _fifo(tmp, "t")}),
        "web.token_file: ",
    ),
    "token file 200 MB": (
        lambda tmp: _serve_config(tmp, {"token_file": _secret(tmp, "t", 200_000_000)}),
        "is larger than 4096 bytes",
    ),
    "mqtt host empty": (lambda tmp: _serve_config(tmp, mqtt={"host": ""}), "mqtt.host: expected a host name"),
    "mqtt host a URL": (
        lambda tmp: _serve_config(tmp, mqtt={"host": "mqtt://user:s3cret@broker"}),
        "mqtt.host: expected a host name or address, not a URL",
    ),
    "mqtt label of 64": (lambda tmp: _serve_config(tmp, mqtt={"host": "h" * 64 + ".lan"}), "mqtt.host: expected"),
    "password, no user": (lambda tmp: _serve_config(tmp, mqtt={"password": "s3cret"}), "mqtt.username: a password"),
    "password file 0644": (
        lambda tmp: _serve_config(tmp, mqtt={"username": "u", "password_file": _secret(tmp, "p", b"s3cret", 0o644)}),
        "mqtt.password_file: ",
    ),
    "password file a FIFO": (
        lambda tmp: _serve_config(tmp, mqtt={"username": "u", "password_file": _fifo(tmp, "p")}),
        "mqtt.password_file: ",
    ),
    "tls_ca_file missing": (
        lambda tmp: _serve_config(tmp, mqtt={"tls": True, "tls_ca_file": str(tmp / "nowhere.pem")}),
        "mqtt.tls_ca_file: cannot read",
    ),
    "tls_ca_file a FIFO": (
        lambda tmp: _serve_config(tmp, mqtt={"tls": True, "tls_ca_file": _fifo(tmp, "ca.pem")}),
        "mqtt.tls_ca_file: ",
    ),
    "tls_ca_file not a certificate": (
        lambda tmp: _serve_config(
            tmp, mqtt={"tls": True, "tls_ca_file": _secret(tmp, "ca.pem", b"not a cert\n", 0o644)}
        ),
        "mqtt.tls_ca_file: ",
    ),
    "listen on another machine's address": (
        lambda tmp: _serve_config(tmp, {"listen": "192.0.2.1:8089", "token": GOOD.decode().strip()}),
        "web.listen: cannot listen on 192.0.2.1:8089 (",
    ),
    "device id of 70000": (lambda tmp: _serve_config(tmp, mqtt={"device_id": "d" * 70_000}), "mqtt.device_id"),
}


@pytest.mark.parametrize("case", list(SERVE_CONFIGS))
def test_check_config_refuses_the_live_view_and_mqtt_configs_that_run_refuses(tmp_path, case):
    build, expected = SERVE_CONFIGS[case]
    config = build(tmp_path)
    lines = []
    for command in (["check-config", "--quiet"], ["run", "--source", str(CLIP), "--max-frames", "1", "--no-record"]):
        result = fer_edge(*command, "--config", str(config), "--model", str(MODEL), cwd=tmp_path)
        errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
        assert "s3cret" not in result.stderr and "a-real-token" not in result.stderr
        lines.append(errors[0])
    assert lines[0] == lines[1]  # one check, one message


def _held_port() -> socket.socket:
    """A listening socket on a free loopback port that never answers: another program's."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder


def test_check_config_and_run_refuse_a_web_port_another_program_holds(tmp_path):
    with _held_port() as holder:
        port = holder.getsockname()[1]
        config = _serve_config(tmp_path, {"listen": f"127.0.0.1:{port}"})
        lines = []
        for command in (["check-config", "--quiet"], ["run", "--source", str(CLIP), "--max-frames", "1"]):
            result = fer_edge(*command, "--config", str(config), "--model", str(MODEL), cwd=tmp_path)
            errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
            assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
            assert len(errors) == 1, result.stderr[-2000:]
            lines.append(errors[0])
    expected = f"web.listen: 127.0.0.1:{port} is in use by another program; stop it, or set web.listen to a free port"
    assert lines[0] == lines[1] == f"fer-edge: error: {expected}"


def test_check_config_notes_a_web_port_held_by_the_running_service(tmp_path):
    """The service checked by hand (or by an install before its restart) while it runs: its recordings folder is
    locked, or, when it records nothing, its live view answers on the port."""
    from fer_edge.record.folderlock import lock_folder
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    with _held_port() as holder:
        port = holder.getsockname()[1]
        recording = {"recording": {"output_dir": str(tmp_path / "out")}}
        config = _serve_config(tmp_path, {"listen": f"127.0.0.1:{port}"}, **recording)
        lock = lock_folder(tmp_path / "out")
        try:
            result = fer_edge("check-config", "--config", str(config), "--model", str(MODEL), cwd=tmp_path)
        finally:
            lock.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"web.listen: 127.0.0.1:{port} is held by the running fer-edge (its recordings folder" in result.stderr

    web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=None).start()
    try:
        nothing_recorded = {"recording": {"enabled": False}, "events": {"enabled": False}}
        config = _serve_config(tmp_path, {"listen": f"127.0.0.1:{web.port}"}, **nothing_recorded)
        result = fer_edge("check-config", "--config", str(config), "--model", str(MODEL), cwd=tmp_path)
    finally:
        web.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"127.0.0.1:{web.port} is held by the running fer-edge (its live view answers there)" in result.stderr


def test_check_config_passes_a_web_port_the_stopped_service_left_in_time_wait(tmp_path):
    """systemd runs check-config (ExecStartPre) right after the old process closed its connections: the server's
    side of each waits in TIME_WAIT, which the live view's own socket options let it bind over."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    config = _serve_config(tmp_path, {"listen": f"127.0.0.1:{port}"})
    result = fer_edge("check-config", "--quiet", "--config", str(config), "--model", str(MODEL), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""


def test_check_config_refuses_an_output_folder_that_cannot_take_files(tmp_path):
    blocker = _write(tmp_path / "a-file", "not a folder\n")
    config = _write(tmp_path / "c.yaml", f"recording:\n  output_dir: {blocker}/out\n")
    result = fer_edge("check-config", "--quiet", "--config", str(config), "--model", str(MODEL), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"fer-edge: error: recording.output_dir: {blocker} is not a folder" in result.stderr


def test_a_fifo_as_a_secret_file_is_refused_at_once(tmp_path):
    from fer_edge.config.preflight import read_secret_file
    from fer_edge.errors import ConfigError

    fifo = Path(_fifo(tmp_path, "token"))
    outcome: list[str] = []

    def read() -> None:
        try:
            read_secret_file(fifo, "web.token_file")
        except ConfigError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(1.0)  # a blocking open of a FIFO with no writer never returns
    assert outcome == [f"web.token_file: {fifo} is not a regular file"]


def test_at_the_descriptor_limit_connections_are_refused_and_recording_goes_on(demo_clip, tmp_path):
    """Under `ulimit -n 128`, 300 idle connections: the connection cap shrinks to fit, so the recording's new
    segments still get their files (the old server took every descriptor and the segments failed)."""
    from livehelpers import free_port, stop, wait_for_port, write_config

    port = free_port()
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.yaml",
        {
            "source": {"realtime": True, "loop": True},
            "recording": {"output_dir": str(out), "segment_seconds": 1.0},
            "web": {"enabled": True, "listen": f"127.0.0.1:{port}", "token": TOKEN},
        },
    )
    with open(tmp_path / "stderr.log", "wb") as err:
        process = subprocess.Popen(
            ["prlimit", "--nofile=128", sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config)]
            + ["--source", str(demo_clip)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    idle = []
    try:
        wait_for_port(port, timeout=30)
        for _ in range(300):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        time.sleep(1.0)
        before = set(out.glob("*.mp4"))
        time.sleep(3.0)
        assert len(set(out.glob("*.mp4")) - before) >= 2  # 1 s segments kept finishing
        stats = _stats(port)
        assert stats["web"]["connections"] <= 32 and stats["recording"]["active"]
    finally:
        for sock in idle:
            sock.close()
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert "at most 32 connections" in log
