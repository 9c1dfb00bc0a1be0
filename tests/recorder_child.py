"""A process that records synthetic frames with fer_edge.record.recorder.Recorder, for the kill and full-disk tests.

Every frame carries its index as a row of black/white blocks (``draw_frame`` / ``read_index``), so a test can tell
exactly which frames a recording holds. The recorder runs on its thread, as in the app. Prints ``written N`` after
each frame (N frames the recorder thread has written so far), ``closed N`` after a clean close (N frames handed
over). SIGTERM stops the loop and closes the recorder, exit status 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INDEX_BITS = 12


def draw_frame(index: int, width: int, height: int, *, noise: bool = False) -> np.ndarray:
    """A BGR frame: a moving gradient (or noise) with ``index`` in binary as blocks along the top."""
    if noise:
        image = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        x = np.arange(width, dtype=np.int32)[None, :]
        y = np.arange(height, dtype=np.int32)[:, None]
        image = np.empty((height, width, 3), np.uint8)
        image[..., 0] = (x + 2 * index) % 256 // 2 + 32
        image[..., 1] = (y + index) % 256 // 2 + 32
        image[..., 2] = 96
    block = width // (INDEX_BITS + 2)
    image[: block + 8] = 128
    for bit in range(INDEX_BITS):
        value = 255 if (index >> bit) & 1 else 0
        image[4 : 4 + block, (bit + 1) * block : (bit + 2) * block] = value
    return image


def read_index(image: np.ndarray) -> int:
    """The index ``draw_frame`` drew into a (decoded, lossy) BGR frame."""
    width = image.shape[1]
    block = width // (INDEX_BITS + 2)
    inset = block // 4
    index = 0
    for bit in range(INDEX_BITS):
        patch = image[4 + inset : 4 + block - inset, (bit + 1) * block + inset : (bit + 2) * block - inset]
        if patch.mean() > 128:
            index |= 1 << bit
    return index


INJECTED = ("free_bytes", "disk_check_interval_s", "wall_clock", "monotonic_clock")


def recorder_for(
    output_dir, fps: float, frame_size: tuple[int, int], *, events: bool = True, record_video: bool = True, **settings
):
    """A Recorder built the way the app builds one, from its config sections: ``settings`` are ``recording``
    keys, except the injected disk and clocks (``INJECTED``)."""
    from fer_edge.config import EventsConfig, RecordingConfig
    from fer_edge.record.recorder import Recorder

    injected = {key: settings.pop(key) for key in INJECTED if key in settings}
    recording = RecordingConfig(output_dir=str(output_dir), enabled=record_video, **settings)
    return Recorder(recording, EventsConfig(enabled=events), fps, frame_size, **injected)


CHILD = Path(__file__)


def child_env() -> dict:
    """The environment for this script as a child process: it imports its own folder's modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHILD.parent), env.get("PYTHONPATH")]))
    return env


def run_on_full_tmpfs(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """This script with ``args`` on a real 1 MB tmpfs (a private user namespace) that 400 kB of filler leave
    nearly full: its result, and a copy of what it left there. Skips where such a tmpfs cannot be mounted."""
    import pytest

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.decode().strip()}")
    mount, saved = tmp_path / "mnt", tmp_path / "saved"
    mount.mkdir()
    saved.mkdir()
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {mount} && head -c 400000 /dev/zero > {mount}/filler && "
        f"{sys.executable} {CHILD} --dir {mount} {' '.join(args)}; rc=$?; cp -a {mount}/. {saved}/; exit $rc"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=child_env(), timeout=60
    )
    return result, saved


def run_on_tmpfs(tmp_path: Path, size: str, script: str) -> dict:
    """The Python ``script``, given a real tmpfs of ``size`` (a private user namespace) as its ``sys.argv[1]``:
    what it printed, as JSON. Skips where such a tmpfs cannot be mounted."""
    import pytest

    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace: {probe.stderr.decode().strip()}")
    mount = tmp_path / "disk"
    mount.mkdir()
    command = f"mount -t tmpfs -o size={size} tmpfs {mount} && {sys.executable} -c '{script}' {mount}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, env=child_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# A child's start: an events log of three lines, the kernel's file-size limit ready to play a full disk
THREE_EVENT_LINES = """
import resource, signal, sys
from pathlib import Path
from fer_edge.record.events import EventsLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
directory = Path(sys.argv[1])
log = EventsLog(directory)
log.open("20261124-183000-0001")
for frame in range(3):
    log.write(1.0 + frame, frame, [])
"""

REFUSED_WRITE = (
    THREE_EVENT_LINES
    + """soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, ((directory / "events.jsonl").stat().st_size + 10, hard))
log.write(4.0, 3, [])  # the kernel writes 10 bytes of it, then refuses the rest: a partial line on disk
if sys.argv[2] == "retry":
    log.write(5.0, 4, [])
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
    log.retry()
    log.write(6.0, 5, [])
    log.write(7.0, 6, [])
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
print(log.close())
"""
)


def refused_write_run(directory: Path, then: str) -> subprocess.CompletedProcess:
    """An events log in a child process whose fourth line the disk takes only 10 bytes of (a file size limit);
    ``then`` ``"close"``: the file is finished at once; ``"retry"``: one more refused line, then room again and
    two lines more. Prints where the file was finished."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", REFUSED_WRITE, str(directory), then], capture_output=True, text=True, timeout=60, env=env
    )


def main() -> int:
    from fer_edge.types import Box, Face, Frame, Prediction

    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--segment-seconds", type=float, default=300.0)
    parser.add_argument("--min-free-mb", type=float, default=0.0)
    parser.add_argument("--pace-fps", type=float, default=None, help="frames per wall-clock second (default: fps)")
    parser.add_argument("--noise", action="store_true", help="noise frames (large, to fill a disk)")
    parser.add_argument("--retry-s", type=float, default=None, help="video retry interval after a write error")
    parser.add_argument("--delete-at", type=int, default=None, help="delete DIR/filler after this many frames")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    stop = False

    def on_sigterm(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_sigterm)
    if args.retry_s is not None:
        import fer_edge.record.videosink

        fer_edge.record.videosink.RETRY_INTERVAL_S = args.retry_s
    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    face = Face(Box(10, 20, 60, 60), Prediction(labels, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)
    frames = [draw_frame(i, args.width, args.height, noise=args.noise) for i in range(30)]
    # veryfast: the full-disk test sizes its disk to this encoder's output (ultrafast makes noise ~2x larger)
    from fer_edge.record.worker import RecorderThread, queue_capacity

    core = recorder_for(
        args.dir,
        args.fps,
        (args.width, args.height),
        segment_seconds=args.segment_seconds,
        min_free_mb=args.min_free_mb,
        disk_check_interval_s=0.2,
        preset="veryfast",
    )
    # every frame handed over is recorded, as behind a file source: what the tests check is what survives a crash
    recorder = RecorderThread(core, queue_capacity((args.width, args.height), args.fps), drop_when_full=False)
    pace_fps = args.pace_fps if args.pace_fps is not None else args.fps
    start = time.monotonic()
    written = 0
    while written < args.frames and not stop:
        if pace_fps > 0:
            delay = start + written / pace_fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        image = frames[written % 30] if args.noise else draw_frame(written, args.width, args.height)
        recorder.write(Frame(image, written, written / args.fps), [face])
        written += 1
        print(f"written {recorder.handled}", flush=True)
        if args.delete_at is not None and written == args.delete_at:
            (args.dir / "filler").unlink()
    recorder.close()
    print(f"closed {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
