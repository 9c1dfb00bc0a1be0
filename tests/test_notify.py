"""sd_notify: a real AF_UNIX datagram socket stands in for systemd's notification socket."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_edge.notify import SystemdNotifier, watchdog_interval_s

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "demo.mp4"
MODEL = REPO / "models" / "fer_int8.tflite"


class NotifySocket:
    """Bound like systemd's: a path in tmp or an abstract name; collects the datagrams."""

    def __init__(self, address: str):
        self.address = address  # the $NOTIFY_SOCKET value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)

    def receive(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    address = str(tmp_path / "notify.sock") if request.param == "path" else f"@fer-edge-test-{uuid.uuid4().hex}"
    listener = NotifySocket(address)
    yield listener
    listener.close()


@pytest.fixture
def service_socket(tmp_path):
    """The notification socket of the end-to-end tests: a path, as systemd uses."""
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_each_message_arrives_as_one_datagram(notify_socket):
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.enabled
    assert notifier.ready()
    assert notify_socket.receive() == "READY=1"
    assert notifier.watchdog()
    assert notify_socket.receive() == "WATCHDOG=1"
    assert notifier.status("12.5 fps, frames 300,\nfaces 4")
    assert notify_socket.receive() == "STATUS=12.5 fps, frames 300, faces 4"  # one line, as systemctl shows it
    assert notifier.stopping()
    assert notify_socket.receive() == "STOPPING=1"
    assert notifier.ready(status="camera open")
    assert notify_socket.receive() == "READY=1\nSTATUS=camera open"


def test_without_notify_socket_everything_is_a_no_op(tmp_path):
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert not any([notifier.ready(), notifier.watchdog(), notifier.status("x"), notifier.stopping()])
    assert not SystemdNotifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_unsupported_address_disables_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fer_edge.notify"):
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert len(caplog.records) == 1 and "vsock:2:1234" in caplog.records[0].getMessage()


def test_send_errors_never_raise_and_are_logged_once(tmp_path, caplog):
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.DEBUG, logger="fer_edge.notify"):
        results = [notifier.ready(), notifier.watchdog(), notifier.watchdog(), notifier.stopping()]
    assert results == [False] * 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nobody-listens.sock" in warnings[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 3


def test_recovers_when_the_socket_comes_back(tmp_path):
    address = str(tmp_path / "notify.sock")
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": address})
    assert not notifier.watchdog()  # systemd not there (yet, or being re-executed)
    listener = NotifySocket(address)
    try:
        assert notifier.watchdog()
        assert listener.receive() == "WATCHDOG=1"
    finally:
        listener.close()


def test_watchdog_meant_for_another_process_is_not_pinged(notify_socket):
    other = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert not other.watchdog()
    mine = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog()
    assert notify_socket.receive() == "WATCHDOG=1"
    assert notify_socket.drain() == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<other>"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env, expected):
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    env = {key: pids.get(value, value) for key, value in env.items()}
    assert watchdog_interval_s(env) == expected


# --- end to end: the real CLI in a child process, as systemd runs it ---------------------------------


def _child_env(notify_address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = notify_address
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "edge"), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def _killed_if_left(child: subprocess.Popen) -> Iterator[None]:
    """However the test ends, no child is left running."""
    try:
        yield
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _stopped(child: subprocess.Popen) -> str:
    """Stop the child as systemd stops the service (SIGTERM); its stderr."""
    child.send_signal(signal.SIGTERM)
    return child.communicate(timeout=30)[1]


def _kinds(messages: list[str]) -> list[str]:
    """Each datagram reduced to its first key: READY, WATCHDOG, STATUS, STOPPING."""
    return [message.split("=", 1)[0] for message in messages]


def test_cli_run_notifies_ready_after_the_first_frame_and_pings_while_frames_flow(service_socket, tmp_path):
    # --realtime paces the clip at 30 fps, so 75 frames take about 2.5 s: long enough for several pings.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_edge.cli",
            "run",
            "--source",
            str(CLIP),
            "--model",
            str(MODEL),
            "--output",
            str(tmp_path / "rec"),
            "--realtime",
            "--max-frames",
            "75",
        ],
        env=_child_env(service_socket.address),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    kinds = _kinds(service_socket.drain())
    assert kinds.count("READY") == 1
    assert "WATCHDOG" not in kinds[: kinds.index("READY")]  # never a ping before the first frame
    assert kinds.count("WATCHDOG") >= 2
    assert "WATCHDOG" not in kinds[kinds.index("STOPPING") :]  # a last STATUS line may follow STOPPING


def test_cli_never_reports_ready_when_no_frame_arrives(service_socket, tmp_path):
    """The pipeline is built and its loop starts, but the first read fails: no READY, no pings."""
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "0001.jpg").write_bytes(b"not a JPEG")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_edge.cli",
            "run",
            "--source",
            str(tmp_path / "frames"),
            "--model",
            str(MODEL),
            "--output",
            str(tmp_path / "rec"),
            "--max-frames",
            "10",
        ],
        env=_child_env(service_socket.address),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"fer-edge: error: cannot read image {tmp_path / 'frames' / '0001.jpg'}" in result.stderr
    kinds = _kinds(service_socket.drain())
    assert "READY" not in kinds and "WATCHDOG" not in kinds


# A child that runs the real app on the real clip, but whose source hangs after 20 frames the way a
# wedged camera driver does (read() blocks until the pipeline is stopped). It prints STALLED when the hang
# begins: every ping sent before that is already queued on the socket (AF_UNIX datagrams are delivered
# synchronously), so anything arriving afterwards would be a ping from a loop that receives no frames.
STALLING_CHILD = textwrap.dedent(
    """
    import sys, threading
    from fer_edge import app, cli

    real_open = app.open_source

    class HangingSource:
        def __init__(self, inner, frames_before_hang):
            self.inner, self.left, self.released = inner, frames_before_hang, threading.Event()
            self.fps, self.size = inner.fps, inner.size

        def read(self):
            if self.left == 0:
                print("STALLED", flush=True)
                self.released.wait()
                return None
            self.left -= 1
            return self.inner.read()

        def interrupt(self):
            self.released.set()

        def close(self):
            self.inner.close()

    app.open_source = lambda cfg: HangingSource(real_open(cfg), 20)
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_a_hung_source_stops_the_watchdog_pings_and_sigterm_still_exits_cleanly(service_socket, tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STALLING_CHILD,
            "run",
            "--source",
            str(CLIP),
            "--model",
            str(MODEL),
            "--output",
            str(tmp_path / "rec"),
        ],
        env=_child_env(service_socket.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _killed_if_left(child):
        assert child.stdout.readline().strip() == "STALLED", child.stderr.read() if child.poll() is not None else ""
        before = _kinds(service_socket.drain())
        assert before.count("READY") == 1 and "WATCHDOG" in before
        time.sleep(2.5)  # more than twice the pipeline's ping interval: a live loop would have pinged
        assert "WATCHDOG" not in _kinds(service_socket.drain())
        stderr = _stopped(child)
    assert child.returncode == 0, stderr
    after = _kinds(service_socket.drain())
    assert "STOPPING" in after and "WATCHDOG" not in after


def test_a_camera_missing_at_start_keeps_the_service_up_and_waiting(service_socket, tmp_path):
    """``run --wait-for-camera`` (the unit's ExecStart) with no camera: READY, a status line saying what it waits
    for, watchdog pings while it waits, and a clean stop, where a plain ``run`` fails with one error line."""
    camera = "/dev/video1023"  # no such node here; OpenCV opens nothing
    command = [sys.executable, "-m", "fer_edge.cli", "run", "--source", camera, "--model", str(MODEL)]
    command += ["--output", str(tmp_path / "rec")]
    plain = subprocess.run(command, env=_child_env(service_socket.address), capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert f"fer-edge: error: cannot open camera {camera}" in plain.stderr
    assert "READY" not in _kinds(service_socket.drain())

    child = subprocess.Popen(
        [*command, "--wait-for-camera"], env=_child_env(service_socket.address), stderr=subprocess.PIPE, text=True
    )
    with _killed_if_left(child):
        messages = [service_socket.receive(timeout=60)]
        deadline = time.monotonic() + 30
        while not any(m.startswith("STATUS=waiting") for m in messages) and time.monotonic() < deadline:
            messages.append(service_socket.receive(timeout=30))
        stderr = _stopped(child)
    assert child.returncode == 0, stderr
    assert messages[0] == "READY=1", messages
    assert f"STATUS=waiting: camera {camera} not opened yet; waiting for {camera} to appear" in messages
    assert "WATCHDOG=1" in messages
    assert f"cannot open camera {camera} at start (not connected, or in use by another process?)" in stderr
    assert "Traceback" not in stderr
    assert not list((tmp_path / "rec").glob("*.mp4"))  # no frame, no recording
