"""Faults and abuse, the long part (`make soak`, excluded from `make test`): random SIGKILLs of a recording
service, the model replaced in place mid-run, and a soak whose memory and descriptor counts must stay flat.
Each runs the real `fer-edge run` on the demo clip, looped. Lengths come from the environment:
SOAK_KILLS (default 24), SOAK_SECONDS (default 180). The figures each test prints go to docs/ROBUSTNESS.md."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fer_int8.tflite"
FAST_MODEL = REPO / "models" / "fer_fast_int8.tflite"
CLIP = REPO / "assets" / "demo.mp4"

pytestmark = pytest.mark.soak


def _config(tmp: Path, model: Path, output: Path, *, realtime: bool, segment_s: float = 2.0) -> Path:
    config = tmp / "config.yaml"
    config.write_text(
        f"source:\n  kind: file\n  path: {CLIP}\n  loop: true\n  realtime: {str(realtime).lower()}\n"
        f"model:\n  path: {model}\n"
        f"recording:\n  output_dir: {output}\n  segment_seconds: {segment_s}\n  fragment_seconds: 0.5\n"
        "  min_free_mb: 0\nlogging:\n  status_interval_s: 1\n"
    )
    return config


def _start(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "a") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config), *extra],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decoded_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_random_sigkills_never_touch_a_finished_recording(tmp_path):
    kills = int(os.environ.get("SOAK_KILLS", "24"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")))
    output = tmp_path / "out"
    config = _config(tmp_path, MODEL, output, realtime=False, segment_s=2.0)
    log = tmp_path / "stderr.log"
    finished: dict[str, str] = {}  # name -> sha256 of every .mp4 seen finished
    for kill in range(kills):
        process = _start(config, log)
        time.sleep(rng.uniform(1.0, 6.0))  # start-up, mid-segment, at a segment's end: anywhere
        assert process.poll() is None, log.read_text()[-3000:]
        process.kill()
        process.wait()
        for video in output.glob("*.mp4"):
            digest = finished.setdefault(video.name, _sha256(video))
            assert digest == _sha256(video), f"{video.name} changed after kill {kill + 1}"
    last = _start(config, log, "--max-frames", "30")  # repairs what the last kill left, then ends
    assert last.wait(timeout=120) == 0, log.read_text()[-3000:]
    videos = sorted(output.glob("*.mp4"))
    for name, digest in finished.items():
        assert _sha256(output / name) == digest, f"{name} changed"
    assert not list(output.glob("*.part")) and not list(output.glob("*.broken"))
    frames = {video.name: _decoded_frames(video) for video in videos}
    assert all(count > 0 for count in frames.values()), frames
    assert "Traceback" not in log.read_text()
    print(
        f"\nSOAK kills: {kills} SIGKILLs survived, {len(videos)} recordings, {sum(frames.values())} frames, "
        f"{len(finished)} finished before a later kill and unchanged, 0 .part and 0 .broken left"
    )


def test_a_model_replaced_in_place_again_and_again_never_stops_the_run(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(MODEL.read_bytes())
    (tmp_path / "model.json").write_bytes(MODEL.with_suffix(".json").read_bytes())
    config = _config(tmp_path, model, tmp_path / "out", realtime=True)
    log = tmp_path / "stderr.log"
    process = _start(config, log)
    replacements = 0
    try:
        deadline = time.monotonic() + 60
        while "fps" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        for replacement in [FAST_MODEL, MODEL] * 5:
            with open(model, "r+b") as target:  # what cp does: truncate, then write, in place
                target.truncate(0)
                target.write(replacement.read_bytes())
            replacements += 1
            time.sleep(1.0)
            assert process.poll() is None, log.read_text()[-3000:]
    finally:
        code = _stop(process)
    assert code == 0, log.read_text()[-3000:]
    print(f"\nSOAK model: replaced in place {replacements} times during one run; it kept running and exited 0")


def _sample(pid: int) -> tuple[int, int, int]:
    """RSS in kB, open descriptors, threads of a running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def test_a_soak_keeps_memory_and_descriptors_flat(tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "180"))
    output = tmp_path / "out"
    config = _config(tmp_path, MODEL, output, realtime=False, segment_s=5.0)
    log = tmp_path / "stderr.log"
    process = _start(config, log)
    samples = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(5)
            assert process.poll() is None, log.read_text()[-3000:]
            samples.append((time.monotonic() - started, *_sample(process.pid)))
    finally:
        code = _stop(process)
    assert code == 0, log.read_text()[-3000:]
    warm = [s for s in samples if s[0] >= seconds / 4]  # after start-up and the first segments
    rss_first, rss_last = warm[0][1], warm[-1][1]
    fds = [s[2] for s in warm]
    threads = [s[3] for s in warm]
    processed = re.search(r"processed (\d+) frames .* ([\d.]+) fps", log.read_text())
    segments = len(list(output.glob("*.mp4")))
    print(
        f"\nSOAK flat: {seconds:.0f} s, {processed.group(1)} frames at {processed.group(2)} fps, "
        f"{segments} segments; RSS {rss_first} -> {rss_last} kB "
        f"({100 * (rss_last - rss_first) / rss_first:+.1f}%), peak {max(s[1] for s in warm)} kB; "
        f"descriptors {min(fds)}-{max(fds)}; threads {min(threads)}-{max(threads)}"
    )
    assert rss_last <= rss_first * 1.10, samples
    assert max(fds) - min(fds) <= 2, samples
    assert max(threads) - min(threads) <= 1, samples


def test_a_live_view_soak_under_abuse_keeps_memory_threads_and_frames_flat(tmp_path, demo_clip):
    """The live view with a viewer, and rounds of abuse (200 idle connections, 20 header floods held open, 50
    malformed requests) for SOAK_SECONDS / 2: memory stays flat (before: ~150 MB higher after each flood), the
    thread count bounded (before: one per connection) and the clip plays at its 30 fps throughout."""
    import socket
    import threading

    sys.path.insert(0, str(Path(__file__).parent))
    from livehelpers import free_port, wait_for_port

    seconds = float(os.environ.get("SOAK_SECONDS", "180")) / 2
    token = "soak-token-0123456789abcdef"
    port = free_port()
    config = _config(tmp_path, MODEL, tmp_path / "out", realtime=True, segment_s=5.0)
    with open(config, "a") as text:
        text.write(f"web:\n  enabled: true\n  listen: 127.0.0.1:{port}\n  token: {token}\n")
    log = tmp_path / "stderr.log"
    process = _start(config, log)
    wait_for_port(port, timeout=30)
    viewer = socket.create_connection(("127.0.0.1", port), timeout=10)
    viewer.sendall(f"GET /api/stream.mjpeg HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    stop = threading.Event()

    def watch() -> None:
        try:
            while not stop.is_set() and viewer.recv(65536):
                pass
        except OSError:
            pass

    threading.Thread(target=watch, daemon=True).start()
    header = b"X-Fill: " + b"a" * 65526 + b"\r\n"

    def abuse_round() -> None:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
        floods = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                sock.sendall(b"GET / HTTP/1.1\r\n" + header * 20)
            except OSError:
                pass
            floods.append(sock)
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GARBAGE\r\n\r\n")
                sock.recv(100)
        time.sleep(1.0)
        for sock in idle + floods:
            sock.close()

    samples = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            abuse_round()
            time.sleep(2)
            assert process.poll() is None, log.read_text()[-3000:]
            samples.append((time.monotonic() - started, *_sample(process.pid)))
    finally:
        stop.set()
        viewer.close()
        code = _stop(process)
    assert code == 0, log.read_text()[-3000:]
    warm = [s for s in samples if s[0] >= seconds / 4]
    rss_first, rss_last = warm[0][1], warm[-1][1]
    threads = [s[3] for s in samples]
    fps = [float(f) for f in re.findall(r"([\d.]+) fps, frames", log.read_text())[2:]]
    print(
        f"\nSOAK live view: {seconds:.0f} s, {len(samples)} abuse rounds; RSS {rss_first} -> {rss_last} kB "
        f"({100 * (rss_last - rss_first) / rss_first:+.1f}%), peak {max(s[1] for s in samples)} kB; "
        f"threads {min(threads)}-{max(threads)}; fps {min(fps):.1f}-{max(fps):.1f}"
    )
    assert rss_last <= rss_first * 1.10 and max(s[1] for s in samples) < 250 * 1024, samples
    assert max(threads) <= 40, samples
    assert min(fps) >= 25, fps
    assert "Traceback" not in log.read_text()
