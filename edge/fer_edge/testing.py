"""Test fakes: a source that plays a list of frames, a sink that keeps what it is given, a recorder that waits, a
USB camera that can be unplugged, and a clock that moves only when waited on.

Not used by the device itself; tests, benchmarks and tools wire them into a real :class:`~fer_edge.pipeline.Pipeline`.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fer_edge.types import Face, Frame


class ListSource:
    """Frames from a list of BGR arrays (or Frames): the test fake."""

    def __init__(self, images: Iterable[np.ndarray | Frame], fps: float = 30.0):
        self._frames = [
            item if isinstance(item, Frame) else Frame(item, index, index / fps) for index, item in enumerate(images)
        ]
        self.fps = fps
        first = self._frames[0].image if self._frames else np.zeros((1, 1, 3), np.uint8)
        self.size = (first.shape[1], first.shape[0])
        self._next = 0
        self.closed = False
        self.interrupted = False

    def read(self) -> Frame | None:
        if self.closed or self.interrupted or self._next >= len(self._frames):
            return None
        frame = self._frames[self._next]
        self._next += 1
        return frame

    def interrupt(self) -> None:
        self.interrupted = True

    def close(self) -> None:
        self.closed = True


class ListSink:
    """Keeps what it is given: the test fake (``keep_images=False`` keeps only the faces)."""

    def __init__(self, keep_images: bool = True):
        self.keep_images = keep_images
        self.frames: list[Frame] = []
        self.faces: list[list[Face]] = []
        self.closed = False

    def write(self, frame: Frame, faces: list[Face]) -> None:
        if self.closed:
            raise RuntimeError("write after close")
        image = frame.image.copy() if self.keep_images else frame.image[:0, :0]
        self.frames.append(Frame(image, frame.index, frame.timestamp))
        self.faces.append(list(faces))

    def close(self) -> None:
        self.closed = True


class ScriptedFeed:
    """A live feed whose ``latest()`` hands out the given (sequence number, frame) pairs in turn, in any order: a
    reader that took a frame just before another reader took a newer one."""

    def __init__(self, frames: Iterable[tuple[int, Frame]]) -> None:
        self._frames = list(frames)

    def latest(self) -> tuple[int, Frame | None, list[Face]]:
        seq, frame = self._frames.pop(0)
        return seq, frame, []


class GatedRecorder:
    """A recorder core (what :class:`~fer_edge.record.worker.RecorderThread` drives) whose ``write`` waits for
    ``gate`` to open: the test fake for a recorder busy encoding. Keeps the indices of the frames it got and
    the commands it was given, in order."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()  # set when a write starts waiting at the gate
        self.calls: list[int | str] = []  # frame indices, and "video on", "video off", "discard pre-roll"
        self.recording = False
        self.paused = False
        self.segments: list[Path] = []
        self.closed = False

    def write(self, frame: Frame, faces: list[Face], wall: float | None = None) -> None:
        self.entered.set()
        self.gate.wait()
        self.calls.append(frame.index)

    def set_video(self, on: bool) -> None:
        self.calls.append(f"video {'on' if on else 'off'}")

    def discard_preroll(self) -> None:
        self.calls.append("discard pre-roll")

    def source_lost(self) -> None:
        self.calls.append("source lost")

    def close(self) -> None:
        self.closed = True


class VirtualClock:
    """Stands in for a source's interrupt event (``wait``, ``is_set``, ``set``): ``wait(s)`` returns at once and
    moves ``now`` on by s, running on the way the actions scheduled with :meth:`at` (a camera plugged in at
    12.3 s). Keeps the waits asked for, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self._actions: list[tuple[float, int, Callable[[], object]]] = []  # (when, order scheduled, action)
        self._scheduled = 0
        self._set = False

    def at(self, when: float, action: Callable[[], object]) -> None:
        self._scheduled += 1
        heapq.heappush(self._actions, (when, self._scheduled, action))

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if timeout is None:
            raise ValueError("a wait without a timeout would never end on a virtual clock")
        self.waits.append(timeout)
        self.now += timeout
        while self._actions and self._actions[0][0] <= self.now:
            heapq.heappop(self._actions)[2]()
        return self._set

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


class FakeUsbCamera:
    """A USB camera for tests: its device node is the file ``node``, there while the camera is plugged in, and
    :meth:`capture` stands in for ``cv2.VideoCapture``. A capture opens while the node is there (and the camera
    is not ``busy``), hands out ``frames_per_open`` frames, then waits for the next one until the camera is
    unplugged, when its reads fail: a capture never reads again after an unplug, as a real one. ``opens`` counts
    the captures made. Unplug the camera before closing a source reading it, or its reader waits."""

    def __init__(self, node: str | Path, size: tuple[int, int] = (32, 24), fps: float = 15.0, frames_per_open: int = 1):
        self.node = Path(node)
        self.size = size
        self.fps = fps
        self.frames_per_open = frames_per_open
        self.busy = False  # in use by another process: opens fail although the node is there
        self.opens = 0
        self._unplugs = 0
        self._cond = threading.Condition()

    def plug(self, via: str | Path | None = None) -> None:
        """Make the node; with ``via``, make that node and ``node`` a link to it (a /dev/v4l/by-id/ name)."""
        if via is None:
            self.node.touch()
        else:
            Path(via).touch()
            self.node.symlink_to(via)

    def unplug(self) -> None:
        """Remove the node (and the one a link named), and fail the reads of every capture."""
        if self.node.is_symlink():
            self.node.resolve().unlink(missing_ok=True)
        self.node.unlink(missing_ok=True)
        with self._cond:
            self._unplugs += 1
            self._cond.notify_all()

    def capture(self, device: int | str, *backend_and_params: Any) -> _FakeCapture:
        self.opens += 1
        return _FakeCapture(self, self.node.exists() and not self.busy)


class _FakeCapture:
    """One opening of a :class:`FakeUsbCamera`, with the methods of ``cv2.VideoCapture`` a source calls."""

    def __init__(self, camera: FakeUsbCamera, opened: bool) -> None:
        self._camera = camera
        self._opened = opened
        self._unplugs = camera._unplugs
        self._frames_left = camera.frames_per_open

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self._opened

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        import cv2

        width, height = self._camera.size
        return {
            cv2.CAP_PROP_FRAME_WIDTH: width,
            cv2.CAP_PROP_FRAME_HEIGHT: height,
            cv2.CAP_PROP_FPS: self._camera.fps,
        }.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        camera = self._camera
        if not self._opened:
            return False, None
        with camera._cond:
            if self._frames_left == 0:
                camera._cond.wait_for(lambda: camera._unplugs != self._unplugs)
            if camera._unplugs != self._unplugs:
                return False, None
        self._frames_left -= 1
        width, height = camera.size
        return True, np.zeros((height, width, 3), np.uint8)

    def release(self) -> None:
        pass


def count_face_model_runs(detector: Any) -> list[int]:
    """Make each run of a :class:`~fer_edge.vision.detector.BlazeFaceDetector`'s face models add one to the last
    item of the list returned, which starts as ``[0]``: append a 0 to start the next count."""
    runs = [0]
    for runner in detector._runners.values():
        detect = runner.detect

        def counted(image: np.ndarray, region: Any = None, detect: Any = detect) -> Any:
            runs[-1] += 1
            return detect(image, region)

        runner.detect = counted
    return runs
