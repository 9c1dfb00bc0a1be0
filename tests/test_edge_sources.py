"""Frame sources: generated video files, image folders, realtime pacing, a missing camera, the factory."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from fer_edge.capture.sources import (
    NODE_POLL_S,
    WAIT_SLICE_S,
    ImageFolderSource,
    OpenCvCaptureSource,
    VideoFileSource,
    open_source,
    resolve_kind,
    source_overrides,
    video_node,
)
from fer_edge.config import load_config
from fer_edge.errors import SourceError
from fer_edge.testing import FakeUsbCamera, ListSource, VirtualClock
from fer_edge.types import Frame, SourceWaiting

FRAMES = 24


def level(i: int) -> int:
    return 20 + 9 * i  # each generated frame has its own grey level


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    """A 24-frame 160x120 MJPG video at 20 fps; frame i is a flat grey of level(i)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (160, 120))
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(np.full((120, 160, 3), level(i), np.uint8))
    writer.release()
    return path


def read_all(source, limit: int = 1000) -> list[Frame]:
    frames = []
    while len(frames) < limit:
        frame = source.read()
        if frame is None:
            break
        frames.append(frame)
    return frames


def test_video_file_source_reads_every_frame_in_order(small_video):
    source = VideoFileSource(small_video)
    assert source.size == (160, 120) and source.fps == pytest.approx(20.0)
    frames = read_all(source)
    source.close()
    assert len(frames) == FRAMES
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.timestamp for f in frames] == pytest.approx([i / 20.0 for i in range(FRAMES)])
    assert all(f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [round(float(f.image.mean())) for f in frames] == pytest.approx([level(i) for i in range(FRAMES)], abs=3)


def test_video_file_source_loops(small_video):
    source = VideoFileSource(small_video, loop=True)
    frames = read_all(source, limit=2 * FRAMES + 5)
    source.close()
    assert len(frames) == 2 * FRAMES + 5
    assert [f.index for f in frames] == list(range(2 * FRAMES + 5))
    assert frames[FRAMES].image.mean() == pytest.approx(frames[0].image.mean(), abs=1)


def test_realtime_pacing_plays_at_the_native_rate(small_video):
    source = VideoFileSource(small_video, realtime=True)
    started = time.monotonic()
    frames = read_all(source, limit=10)
    elapsed = time.monotonic() - started
    source.close()
    # Frame i is released no earlier than i / fps after the first: a lower bound only (sleep never returns early).
    assert elapsed >= 9 / 20.0 * 0.95
    assert frames[-1].timestamp - frames[0].timestamp >= 9 / 20.0 * 0.95


def test_missing_or_undecodable_video_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="video file not found"):
        VideoFileSource(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="cannot open video file"):
        VideoFileSource(junk)


def test_a_video_whose_frames_do_not_decode_is_refused_at_open(demo_clip, tmp_path):
    """The MP4's index is intact (it opens, with its size and rate) but its frame data is zeroed, as a file
    overwritten or cut in the middle: refused with one line rather than played as an empty video."""
    data = bytearray(demo_clip.read_bytes())
    media = data.index(b"mdat") + 4
    moov = data.index(b"moov") - 4
    assert media < moov  # this clip keeps its index at the end
    data[media:moov] = bytes(moov - media)
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(data)
    assert cv2.VideoCapture(str(zeroed)).isOpened()
    with pytest.raises(SourceError, match=f"^video file {zeroed} has no frame that decodes$"):
        VideoFileSource(zeroed)


def test_image_folder_plays_images_in_name_order_at_one_size(tmp_path):
    for i, name in enumerate(["b.png", "a.jpg", "c.png"]):
        cv2.imwrite(str(tmp_path / name), np.full((60 + 20 * i, 80, 3), 50 * (i + 1), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "d_broken.png").write_bytes(b"\x89PNG broken")
    source = ImageFolderSource(tmp_path, fps=10)
    assert source.size == (80, 80)  # a.jpg is first in name order, 80x80
    frames = read_all(source)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [round(float(f.image.mean()) / 50) for f in frames] == [2, 1, 3]  # a, b, c
    assert all(f.image.shape == (80, 80, 3) for f in frames)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    looping = ImageFolderSource(tmp_path, loop=True)
    assert len(read_all(looping, limit=7)) == 7


def test_empty_or_missing_image_folder_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(tmp_path)
    with pytest.raises(SourceError, match="image folder not found"):
        ImageFolderSource(tmp_path / "missing")


def test_missing_camera_is_one_clear_source_error():
    with pytest.raises(SourceError) as caught:
        OpenCvCaptureSource(99, reopen_initial_s=0.01, reopen_max_s=0.02)
    assert str(caught.value).startswith("cannot open camera 99")
    assert "\n" not in str(caught.value)


def test_list_source_is_a_fake_with_the_source_interface():
    images = [np.full((10, 20, 3), i, np.uint8) for i in range(3)]
    source = ListSource(images, fps=10)
    assert source.size == (20, 10) and source.fps == 10
    frames = read_all(source)
    assert [f.index for f in frames] == [0, 1, 2] and frames[2].timestamp == pytest.approx(0.2)
    source.close()
    assert source.closed


def test_source_argument_maps_to_config(tmp_path, small_video):
    assert source_overrides("picamera2") == {"source.kind": "picamera2"}
    assert source_overrides("0") == {"source.kind": "opencv", "source.device": "0"}
    assert source_overrides("rtsp://cam:554/live") == {"source.kind": "opencv", "source.device": "rtsp://cam:554/live"}
    by_id = "/dev/v4l/by-id/usb-Cam_1234-video-index0"  # a link that stays with the camera, as /dev/video2 does not
    assert source_overrides(by_id) == {"source.kind": "opencv", "source.device": by_id}
    assert source_overrides(str(tmp_path)) == {"source.kind": "images", "source.path": str(tmp_path)}
    assert source_overrides(str(small_video)) == {"source.kind": "file", "source.path": str(small_video)}


def test_factory_builds_the_configured_backend(small_video, tmp_path):
    video = open_source(load_config(None, {"source.kind": "file", "source.path": str(small_video)}).source)
    assert isinstance(video, VideoFileSource)
    video.close()
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    folder = open_source(load_config(None, {"source.path": str(tmp_path)}).source)  # auto + folder
    assert isinstance(folder, ImageFolderSource)
    with pytest.raises(SourceError, match="source.path: required"):
        open_source(load_config(None, {"source.kind": "file"}).source)


def test_auto_without_path_prefers_picamera2_when_installed(monkeypatch):
    cfg = SimpleNamespace(kind="auto", path=None)
    monkeypatch.setitem(sys.modules, "picamera2", None)  # never import the real one in tests
    assert resolve_kind(cfg) == "opencv"
    stand_in = types.ModuleType("picamera2")  # installed: found, and still never imported for real
    stand_in.__spec__ = importlib.machinery.ModuleSpec("picamera2", None)
    monkeypatch.setitem(sys.modules, "picamera2", stand_in)
    assert resolve_kind(cfg) == "picamera2"


def test_picamera2_backend_without_picamera2_is_a_source_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        open_source(load_config(None, {"source.kind": "picamera2"}).source)


class ScriptedCapture:
    """Stands in for cv2.VideoCapture: each open takes the next outcome; an open capture gives 2 frames, then fails."""

    outcomes: list[bool] = []

    def __init__(self, device, *backend_and_params):
        self.opened = ScriptedCapture.outcomes.pop(0)
        self.frames_left = 2

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def set(self, prop, value):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_WIDTH: 32, cv2.CAP_PROP_FRAME_HEIGHT: 24, cv2.CAP_PROP_FPS: 15.0}.get(prop, 0.0)

    def read(self):
        if self.frames_left == 0:
            return False, None
        self.frames_left -= 1
        return True, np.zeros((24, 32, 3), np.uint8)

    def release(self):
        pass


class RecordedWaits:
    """Replaces the source's interrupt event: records back-off waits instead of sleeping."""

    def __init__(self, interrupted_after: int | None = None):
        self.waits: list[float] = []
        self.interrupted_after = interrupted_after

    def wait(self, seconds):
        self.waits.append(seconds)
        return self.interrupted_after is not None and len(self.waits) > self.interrupted_after

    def is_set(self):
        return False

    def set(self):
        pass


def test_lost_camera_is_reopened_with_exponential_back_off(monkeypatch):
    """Without a device node to watch (a stream, or a camera OpenCV opens some other way), back-off alone."""
    monkeypatch.setattr(cv2, "VideoCapture", ScriptedCapture)
    ScriptedCapture.outcomes = [True, False, False, False, True]
    source = OpenCvCaptureSource(0, 32, 24, 15, reopen_initial_s=1.0, reopen_max_s=3.0, device_node=None)
    assert source.size == (32, 24) and source.fps == 15.0
    source._interrupted = waits = RecordedWaits()
    reads = [source.read() for _ in range(7)]
    # 2 frames, camera lost, reopened on the 4th try (the loop hears after each failed one), 2 more
    assert [r.index if isinstance(r, Frame) else r.reason for r in reads] == [
        0,
        1,
        "camera 0 lost; next try in 2 s",
        "camera 0 lost; next try in 3 s",
        "camera 0 lost; next try in 3 s",
        2,
        3,
    ]
    assert waits.waits == [1.0, 2.0, 3.0, 3.0]
    assert ScriptedCapture.outcomes == []


def test_a_long_back_off_hands_the_loop_a_waiting_note_every_few_seconds(monkeypatch):
    """The loop pings the systemd watchdog between reads: no read may block for a whole 30 s back-off."""
    monkeypatch.setattr(cv2, "VideoCapture", ScriptedCapture)
    ScriptedCapture.outcomes = [True, False, True]
    source = OpenCvCaptureSource(0, 32, 24, 15, reopen_initial_s=4.0, reopen_max_s=12.0, device_node=None)
    source._interrupted = waits = RecordedWaits()
    reads = [source.read() for _ in range(6)]
    assert [r.index if isinstance(r, Frame) else r.reason for r in reads] == [
        0,
        1,
        "camera 0 lost; next try in 8 s",
        "camera 0 lost; next try in 3 s",
        2,
        3,
    ]
    assert waits.waits == [4.0, WAIT_SLICE_S, 3.0]  # the 8 s back-off in two slices


def test_interrupt_ends_the_wait_for_a_lost_camera(monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", ScriptedCapture)
    ScriptedCapture.outcomes = [True, False]
    source = OpenCvCaptureSource(0, 32, 24, 15, reopen_initial_s=0.5, reopen_max_s=8.0, device_node=None)
    source._interrupted = RecordedWaits(interrupted_after=1)
    assert source.read() is not None and source.read() is not None
    assert isinstance(source.read(), SourceWaiting)  # lost; one failed reopen
    assert source.read() is None  # then stop() interrupted the back-off
    source.close()


def test_a_local_camera_is_watched_through_its_device_node(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert video_node(0) == Path("/dev/video0") and video_node(12) == Path("/dev/video12")
    assert video_node("/dev/v4l/by-id/usb-Cam-video-index0") == Path("/dev/v4l/by-id/usb-Cam-video-index0")
    assert video_node("rtsp://cam:554/live") is None and video_node("http://cam/video.mjpg") is None
    monkeypatch.setattr(sys, "platform", "darwin")  # AVFoundation: an index names no file
    assert video_node(0) is None


def unplug_and_replug(
    camera, monkeypatch, replug_at, *, device=0, via=None, replug_via=None, busy=False, clock=None, **source_kwargs
):
    """Read a frame, unplug the camera at virtual time 0, plug it back at ``replug_at``; then read until a frame
    comes. The reasons the source gave while it waited, the virtual times of its opens, and the clock."""
    camera.plug(via)
    opened_at = []

    def capture(*args):
        opened_at.append(clock.now)
        return camera.capture(*args)

    monkeypatch.setattr(cv2, "VideoCapture", capture)
    clock = clock or VirtualClock()
    source = OpenCvCaptureSource(device, 32, 24, 15, reopen_initial_s=1.0, reopen_max_s=30.0, **source_kwargs)
    source._interrupted = clock
    assert isinstance(source.read(), Frame)
    camera.unplug()
    del opened_at[:]

    def replug():
        camera.plug(replug_via)
        camera.busy = busy

    clock.at(replug_at, replug)
    reasons = []
    while not isinstance(read := source.read(), Frame):
        assert isinstance(read, SourceWaiting) and clock.now < 600
        reasons.append(read.reason)
    camera.unplug()
    source.close()
    return reasons, opened_at, clock


def test_a_camera_plugged_back_in_is_reopened_within_one_wait_slice(tmp_path, monkeypatch, caplog):
    """Unplugged for 100 s, the back-off alone tries at 1, 3, 7, 15, 31, 61 and 91 s, then at 121 s: 20.8 s of a
    camera that is there unread. Watching its node, nothing is opened while it is gone, and it is read 0.3 s
    after it is back."""
    camera = FakeUsbCamera(tmp_path / "video0")
    with caplog.at_level("INFO", logger="fer_edge.capture.sources"):
        reasons, opened_at, clock = unplug_and_replug(camera, monkeypatch, 100.2, device_node=camera.node)
    assert opened_at == [100.5] and clock.now - 100.2 == pytest.approx(0.3)
    assert set(clock.waits) == {NODE_POLL_S}  # no read keeps the loop (and systemd's watchdog) waiting long
    assert set(reasons) == {f"camera 0 lost; waiting for {camera.node} to appear"}
    assert caplog.messages[1:] == ["camera 0 stopped delivering frames; reopening", "camera 0 reopened"]

    unwatched = FakeUsbCamera(tmp_path / "video1")
    _, opened_at, clock = unplug_and_replug(unwatched, monkeypatch, 100.2, device_node=None)
    assert opened_at == [1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0, 121.0] and clock.now - 100.2 == pytest.approx(20.8)


def test_a_camera_named_by_id_is_followed_to_the_node_it_comes_back_as(tmp_path, monkeypatch):
    """A /dev/v4l/by-id/ link goes with the camera and comes back pointing at whichever /dev/videoN it gets."""
    link = tmp_path / "usb-Cam_1234-video-index0"
    camera = FakeUsbCamera(link)
    reasons, opened_at, _ = unplug_and_replug(
        camera,
        monkeypatch,
        42.1,
        device=str(link),
        via=tmp_path / "video0",
        replug_via=tmp_path / "video2",
        device_node=link,
    )
    assert opened_at == [42.5]
    assert set(reasons) == {f"camera {link} lost; waiting for {link} to appear"}


def test_a_node_that_is_back_but_does_not_open_is_retried_with_back_off(tmp_path, monkeypatch):
    """In use by another process (or not a camera): a node that is there does not make the source try at each
    look; the back-off, started over for the node that came back, spaces the attempts."""
    camera = FakeUsbCamera(tmp_path / "video0")
    clock = VirtualClock()
    clock.at(40.0, lambda: setattr(camera, "busy", False))
    reasons, opened_at, _ = unplug_and_replug(
        camera, monkeypatch, 10.2, busy=True, clock=clock, device_node=camera.node
    )
    assert opened_at == [10.5, 11.5, 13.5, 17.5, 25.5, 41.5]
    assert reasons[-1] == "camera 0 lost; next try in 1 s" and "camera 0 lost; next try in 16 s" in reasons


def test_a_camera_opened_without_its_node_there_is_retried_with_back_off_only(tmp_path, monkeypatch):
    """This OpenCV opened the camera some other way than that node: the node's absence says nothing."""
    camera = FakeUsbCamera(tmp_path / "video0")
    _, opened_at, _ = unplug_and_replug(camera, monkeypatch, 5.2, device_node=tmp_path / "video9")
    assert opened_at == [1.0, 3.0, 7.0]


def test_a_camera_missing_at_start_is_waited_for_when_asked(tmp_path, monkeypatch, caplog):
    """The service's way (``run --wait-for-camera``): a USB camera plugged in after the start is read within one
    look at its node, at the size asked for, instead of an error line and a restart every 10 s."""
    camera = FakeUsbCamera(tmp_path / "video0", size=(32, 24))
    monkeypatch.setattr(cv2, "VideoCapture", camera.capture)
    with pytest.raises(SourceError, match="cannot open camera 0"):
        OpenCvCaptureSource(0, 64, 48, 15, device_node=camera.node)
    with caplog.at_level("INFO", logger="fer_edge.capture.sources"):
        source = OpenCvCaptureSource(0, 64, 48, 15, device_node=camera.node, wait_at_start=True)
        source._interrupted = clock = VirtualClock()
        clock.at(7.2, camera.plug)
        reasons = []
        while not isinstance(read := source.read(), Frame):
            assert isinstance(read, SourceWaiting) and clock.now < 60
            reasons.append(read.reason)
    assert clock.now == pytest.approx(7.5) and camera.opens == 3  # refused, waiting from the start, plugged in
    assert source.size == (64, 48) and read.image.shape == (48, 64, 3) and read.index == 0
    assert set(reasons) == {f"camera 0 not opened yet; waiting for {camera.node} to appear"}
    assert caplog.messages == [
        "cannot open camera 0 at start (not connected, or in use by another process?); waiting for it",
        "camera 0 opened",
    ]
    camera.unplug()
    source.close()


def test_interrupt_ends_the_wait_for_an_unplugged_camera(tmp_path, monkeypatch):
    camera = FakeUsbCamera(tmp_path / "video0")
    camera.plug()
    monkeypatch.setattr(cv2, "VideoCapture", camera.capture)
    source = OpenCvCaptureSource(0, 32, 24, 15, device_node=camera.node)
    source._interrupted = clock = VirtualClock()
    assert isinstance(source.read(), Frame)
    camera.unplug()
    clock.at(3.2, clock.set)
    while (read := source.read()) is not None:
        assert isinstance(read, SourceWaiting)
    assert clock.now == 3.5 and camera.opens == 1
    source.close()


def test_interrupt_ends_every_replay_source_even_while_it_paces_or_loops(small_video, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 20, 3), 80, np.uint8))
    replays = {
        "file": VideoFileSource(small_video, realtime=True, loop=True),
        "images": ImageFolderSource(tmp_path, fps=0.5, realtime=True, loop=True),  # one frame per 2 s
        "list": ListSource([np.zeros((4, 4, 3), np.uint8)] * 5),
    }
    for kind, source in replays.items():
        assert source.read() is not None, kind
        if kind == "images":
            threading.Timer(0.2, source.interrupt).start()
            started = time.monotonic()
            assert source.read() is None  # the pacing wait for the second frame ended early
            assert time.monotonic() - started < 1.9
        else:
            source.interrupt()
            assert source.read() is None, kind
        assert source.read() is None, kind
        source.close()


def test_an_undecodable_video_is_one_error_line_without_ffmpeg_chatter(tmp_path):
    """FFmpeg writes "moov atom not found" to stderr itself; the user should see only our line."""
    broken = tmp_path / "no-index.mp4"  # an MP4 header, then nothing FFmpeg can index
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(4096))
    probe = (
        "from fer_edge.errors import SourceError\n"
        "from fer_edge.capture.sources import VideoFileSource\n"
        "try:\n    VideoFileSource(__import__('sys').argv[1])\n"
        "except SourceError as exc:\n    print(exc, file=__import__('sys').stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", probe, str(broken)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stderr.splitlines() == [f"cannot open video file {broken} (not a video OpenCV can decode?)"]


STREAM_URL = "rtsp://admin:s3cret@127.0.0.1:{port}/stream"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_stream_that_does_not_open_is_named_without_its_password(caplog):
    url = STREAM_URL.format(port=_closed_port())
    with caplog.at_level("DEBUG"), pytest.raises(SourceError) as caught:
        OpenCvCaptureSource(url, reopen_initial_s=0.01, reopen_max_s=0.02)
    assert "s3cret" not in str(caught.value) and "s3cret" not in caplog.text
    assert "rtsp://admin:***@127.0.0.1" in str(caught.value)


def test_a_lost_stream_is_reported_without_its_password(monkeypatch, caplog):
    monkeypatch.setattr(cv2, "VideoCapture", ScriptedCapture)
    ScriptedCapture.outcomes = [True, False, True]
    with caplog.at_level("DEBUG"):
        source = OpenCvCaptureSource(STREAM_URL.format(port=554), 32, 24, 15, reopen_initial_s=1.0, reopen_max_s=3.0)
        source._interrupted = RecordedWaits()
        reads = [source.read() for _ in range(5)]
    waiting = [r.reason for r in reads if isinstance(r, SourceWaiting)]  # the status line shows this
    assert waiting == ["camera rtsp://admin:***@127.0.0.1:554/stream lost; next try in 2 s"]
    assert "s3cret" not in caplog.text and "admin:***@" in caplog.text


def test_a_stream_that_stops_sending_is_given_up_well_before_the_watchdog(caplog):
    """An MJPEG camera that keeps its connection open and sends nothing more (hung, or its Wi-Fi gone without
    a FIN): FFmpeg's own 30 s wait would hold the loop as long as systemd's watchdog waits for it."""
    import socket

    jpeg = cv2.imencode(".jpg", np.full((24, 32, 3), 128, np.uint8))[1].tobytes()
    server = socket.create_server(("127.0.0.1", 0))
    stalled = threading.Event()
    held = []

    def camera():
        while not stalled.is_set() or not held:
            connection, _ = server.accept()
            held.append(connection)
            connection.recv(4096)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n")
            while not stalled.wait(0.05):
                part = b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                connection.sendall(part + jpeg + b"\r\n")

    threading.Thread(target=camera, daemon=True).start()
    source = OpenCvCaptureSource(f"http://127.0.0.1:{server.getsockname()[1]}/video.mjpg", 32, 24, 20)
    try:
        assert isinstance(source.read(), Frame)
        stalled.set()
        longest = 0.0
        while True:  # frames read ahead before the stall come first
            started = time.monotonic()
            read = source.read()
            longest = max(longest, time.monotonic() - started)
            if isinstance(read, SourceWaiting):
                break
        assert longest < 20, f"a read held the loop {longest:.1f} s"
    finally:
        source.interrupt()
        source.close()
        server.close()
        for connection in held:
            connection.close()


@pytest.fixture(scope="module")
def cut_clip(demo_clip, tmp_path_factory):
    """The demo clip with its index first (faststart), cut in half: it opens, and decoding stops early."""
    import av

    folder = tmp_path_factory.mktemp("cut")
    whole = folder / "whole.mp4"
    with av.open(str(demo_clip)) as source, av.open(str(whole), "w", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return whole, cut


def test_a_clip_that_ends_before_its_header_says_is_a_warning(cut_clip, caplog):
    whole, cut = cut_clip
    with caplog.at_level("WARNING", logger="fer_edge.capture.sources"):
        frames = read_all(VideoFileSource(whole))
    assert len(frames) == 420 and caplog.text == ""
    with caplog.at_level("WARNING", logger="fer_edge.capture.sources"):
        frames = read_all(VideoFileSource(cut))
    assert 50 < len(frames) < 400
    assert f"ended after {len(frames)} of the 420 frames its header announces (damaged or cut?)" in caplog.text


def test_check_config_prints_a_stream_url_without_its_password(tmp_path, model_path, capsys):
    from fer_edge.cli import main

    config = tmp_path / "config.yaml"
    url = STREAM_URL.format(port=554)
    config.write_text(f"source:\n  kind: opencv\n  device: {url}\nmodel:\n  path: {model_path}\n")
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "device: rtsp://admin:***@127.0.0.1:554/stream" in out
