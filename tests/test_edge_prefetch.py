"""Decoding ahead: a video file's next frames decode on a thread of their own while the loop works on the last."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from fer_edge.capture.prefetch import DEPTH
from fer_edge.capture.sources import VideoFileSource
from fer_edge.types import Frame
from tests.videos import decode_opencv

WAIT_S = 10.0  # a generous bound for the decode thread to get somewhere; never a speed check


class GatedCapture:
    """Wraps the source's cv2.VideoCapture: counts and records its reads, lets the test hold them at a gate, and
    can fail the read of one frame (a decoder error mid-file)."""

    def __init__(self, capture: cv2.VideoCapture, *, fail_at: int | None = None) -> None:
        self._capture = capture
        self.reads = 0
        self.threads: set[int] = set()
        self.fail_at = fail_at
        self.gate = threading.Event()
        self.gate.set()
        self.progress = threading.Condition()

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.gate.wait(WAIT_S)
        self.threads.add(threading.get_ident())
        with self.progress:
            self.reads += 1
            self.progress.notify_all()
        if self.fail_at is not None and self.reads == self.fail_at:
            raise cv2.error("simulated decoder failure")
        return self._capture.read()

    def wait_for_reads(self, count: int) -> bool:
        with self.progress:
            return self.progress.wait_for(lambda: self.reads >= count, WAIT_S)

    def __getattr__(self, name: str):
        return getattr(self._capture, name)


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fer-edge-decode") and t.is_alive()]


def test_the_next_frames_are_decoded_before_the_loop_asks_for_them(demo_clip):
    source = VideoFileSource(demo_clip)  # the first frame decoded at open
    capture = source._capture = GatedCapture(source._capture)
    first = source.read()
    assert first is not None and first.index == 0
    # while the loop works on frame 0, frames 1.. are decoded without another read()
    assert capture.wait_for_reads(DEPTH), "nothing decoded ahead"
    capture.gate.clear()  # the decoder may not decode another frame now
    ahead = [source.read() for _ in range(DEPTH)]
    assert [f.index for f in ahead] == list(range(1, DEPTH + 1))  # handed out without a decode
    capture.gate.set()
    source.close()
    assert decode_threads() == []


def test_order_and_timestamps_match_the_synchronous_decoder_on_a_real_clip(demo_clip):
    expected = decode_opencv(demo_clip)
    source = VideoFileSource(demo_clip)
    capture = source._capture = GatedCapture(source._capture)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    assert len(frames) == len(expected) == 420
    assert [f.index for f in frames] == list(range(420))
    assert [f.timestamp for f in frames] == pytest.approx([i / source.fps for i in range(420)], abs=1e-6)
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, expected))
    assert threading.get_ident() not in capture.threads  # decoded on the decode thread, not the loop's


def test_a_decoder_error_mid_file_is_raised_at_its_frame_and_then_the_stream_ends(demo_clip):
    source = VideoFileSource(demo_clip)
    capture = source._capture = GatedCapture(source._capture, fail_at=3)  # the 4th frame (the 1st was at open)
    assert source.read().index == 0
    assert capture.wait_for_reads(3), "nothing decoded ahead"  # the decoder met the error already...
    assert [source.read().index for _ in range(2)] == [1, 2]  # ...the frames before it come first
    with pytest.raises(cv2.error, match="simulated decoder failure"):
        source.read()
    assert source.read() is None
    source.close()
    assert decode_threads() == []


def test_interrupt_wakes_a_reader_waiting_for_a_decode_and_close_ends_the_thread(demo_clip):
    source = VideoFileSource(demo_clip, loop=True)
    capture = source._capture = GatedCapture(source._capture)
    assert source.read() is not None
    assert capture.wait_for_reads(DEPTH)
    assert len(decode_threads()) == 1  # decoding ahead, a thread of its own
    capture.gate.clear()
    for _ in range(DEPTH):
        assert source.read() is not None
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(source.read()))
    reader.start()  # waits: the decoder is held at the gate
    source.interrupt()
    reader.join(WAIT_S)
    assert not reader.is_alive() and results == [None]
    assert source.read() is None
    capture.gate.set()
    source.close()
    assert decode_threads() == []


def test_close_while_decoding_ahead_leaves_no_thread(demo_clip):
    source = VideoFileSource(demo_clip, loop=True, realtime=True)
    capture = source._capture = GatedCapture(source._capture)
    assert source.read() is not None
    assert capture.wait_for_reads(DEPTH)
    source.close()  # the decoder waits for room in a full queue: close wakes and joins it
    assert decode_threads() == []
    assert source.read() is None


def frame_number(frame: Frame) -> int:
    return int(frame.image[0, 0, 0]) + 256 * int(frame.image[0, 0, 1])


class EndlessCapture:
    """Stands in for cv2.VideoCapture of a camera: frame n is a flat grey of level n; counts its reads."""

    def __init__(self, device: object) -> None:
        self.reads = 0
        self.progress = threading.Condition()

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 32, cv2.CAP_PROP_FRAME_HEIGHT: 24, cv2.CAP_PROP_FPS: 15.0}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray]:
        with self.progress:
            image = np.full((24, 32, 3), self.reads % 256, np.uint8)
            image[..., 1] = self.reads // 256 % 256  # frame numbers past 255
            self.reads += 1
            self.progress.notify_all()
        return True, image

    def release(self) -> None:
        pass


def test_a_camera_is_read_ahead_the_loop_gets_the_newest_frame_and_close_ends_the_reader(monkeypatch):
    from fer_edge.capture.sources import LIVE_DEPTH, OpenCvCaptureSource

    monkeypatch.setattr(cv2, "VideoCapture", EndlessCapture)
    source = OpenCvCaptureSource(0, 32, 24, 15)
    capture = source._capture
    first = source.read()
    assert first is not None and first.index == 0
    start = frame_number(first)
    with capture.progress:  # the camera is read on while the loop works on the first frame
        assert capture.progress.wait_for(lambda: capture.reads >= start + 12, WAIT_S)
        read_by_then = capture.reads
    frames = [source.read() for _ in range(5)]
    assert [f.index for f in frames] == [1, 2, 3, 4, 5]
    levels = [frame_number(f) for f in frames]
    # among the newest frames read, not the one after the first: the loop is handed no stale backlog
    assert levels[0] >= read_by_then - 1 - LIVE_DEPTH, (start, read_by_then, levels)
    assert levels == sorted(set(levels)), levels  # in the camera's order, none twice
    assert source._ahead.dropped >= 12 - 1 - LIVE_DEPTH
    assert source.status() == f"camera frames skipped {source._ahead.dropped} (loop behind the camera)"
    assert first.timestamp < frames[0].timestamp  # stamped when read, in order
    source.close()
    assert decode_threads() == []
    assert source.read() is None
