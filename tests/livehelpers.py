"""Running ``fer-edge run`` in a child process for the live view and MQTT tests, free ports, one HTTP GET and
headless Chromium."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def need_binary(name: str) -> str:
    """The path of ``name``; skips loudly when it is missing (.ci/run installs it)."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if path is None:
        pytest.skip(
            f"{name} NOT INSTALLED: this test needs Debian's {name} package (apt-get install {name}; "
            f".ci/run installs it)"
        )
    return path


def write_config(path: Path, sections: dict) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def start_run(config: Path, source: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``fer-edge run --config CONFIG --source SOURCE`` in the background, stderr to ``log``."""
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config), "--source", str(source)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
        )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


@contextlib.contextmanager
def web_run(
    source: Path,
    folder: Path,
    port: int,
    token: str,
    segment_seconds: float,
    sections: dict | None = None,
    **web: object,
) -> Iterator[subprocess.Popen]:
    """A realtime, looping run of ``source`` recording ``segment_seconds`` segments into ``folder/out``, with the
    live view on ``port`` behind ``token`` in a 0600 file; yields the process once the port answers. On exit it
    must stop cleanly, with no traceback and no token in its log. ``sections`` are more of the config."""
    token_file = folder / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    web = {"enabled": True, "listen": f"127.0.0.1:{port}", "token_file": str(token_file), **web}
    config = write_config(
        folder / "config.yaml",
        {
            "source": {"realtime": True, "loop": True},
            "recording": {"output_dir": str(folder / "out"), "segment_seconds": segment_seconds},
            "web": web,
            **(sections or {}),
        },
    )
    log = folder / "stderr.log"
    process = start_run(config, source, log)
    try:
        wait_for_port(port, timeout=30)
        yield process
    finally:
        assert stop(process) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert token not in text and "Traceback" not in text, text[-3000:]


def http_get(port: int, path: str, token: str | None, headers: dict | None = None):
    """(response, status, headers, body) of one GET to 127.0.0.1:``port``, with ``token`` as a bearer token."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    connection.request("GET", path, headers=sent)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response, response.status, response.headers, body


def chromium(
    url: str, *args: str, window: str = "1200,800", budget_ms: int = 4000, timeout: float = 90
) -> subprocess.CompletedProcess:
    """Debian's headless Chromium on ``url`` with a fresh profile, ``budget_ms`` of virtual time and ``args``
    (``--dump-dom``, ``--screenshot=PATH``)."""
    binary = need_binary("chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                f"--window-size={window}",
                f"--virtual-time-budget={budget_ms}",
                *args,
                url,
            ],
            capture_output=True,
            timeout=timeout,
            cwd=profile,
        )
