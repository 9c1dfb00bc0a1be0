"""Running ``fer-edge run`` in a child process for the live view and MQTT tests, free ports, one HTTP GET and
headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import select
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


# Debian's Chromium as the tests run it: headless, as root, with nothing of its own going to the network
HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


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
                *HEADLESS,
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


def _moved_above_4(fd: int) -> int:
    """``fd`` as a descriptor above 4, so that the shell moving one pipe to 3 cannot overwrite the other."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class ChromiumPage:
    """One page of Debian's headless Chromium, driven over its DevTools pipe (``--remote-debugging-pipe``: JSON
    messages ending in a NUL byte, read on descriptor 3 and written on 4), for what a person does on a page:
    type, click, wait for what shows."""

    def __init__(self, window: str = "1200,800") -> None:
        binary = need_binary("chromium")
        self._profile = tempfile.TemporaryDirectory()
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        to_browser_read, from_browser_write = (_moved_above_4(fd) for fd in (to_browser_read, from_browser_write))
        self._process = subprocess.Popen(
            [
                "bash",  # dash takes no descriptor above 9
                "-c",
                f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}',
                binary,
                *HEADLESS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={window}",
                "about:blank",
            ],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._profile.name,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk

    def goto(self, url: str) -> None:
        self._call("Page.navigate", {"url": url}, session=True)

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self._call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> object:
        """Poll ``expression`` until it is truthy (errors while the page loads count as not yet); its value. A DOM
        node comes back as an empty dict, which is falsy here: ask for ``!!node``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout} s: {expression}")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        """The page as shown, as a PNG at ``path``."""
        shot = self._call("Page.captureScreenshot", {"format": "png"}, session=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def history(self) -> list[str]:
        """Every address this page's history holds."""
        entries = self._call("Page.getNavigationHistory", session=True)["entries"]
        return [entry["url"] for entry in entries]

    def shutdown(self) -> None:
        """Close the browser as a person would (it writes its profile out); the profile stays until close."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                self._call("Browser.close", timeout=10)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)

    def profile_files_holding(self, text: str) -> list[str]:
        """The files of the browser's profile (its history, caches, session) in which ``text`` is written."""
        root = Path(self._profile.name)
        return sorted(
            str(path.relative_to(root))
            for path in root.rglob("*")
            if path.is_file() and not path.is_symlink() and text.encode() in path.read_bytes()
        )

    def close(self) -> None:
        self.shutdown()
        self._profile.cleanup()

    def __enter__(self) -> ChromiumPage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
