"""Test fakes: a source that plays a list of frames, a sink that keeps what it is given, a recorder that waits.

Not used by the device itself; tests, benchmarks and tools wire them into a real :class:`~fer_edge.pipeline.Pipeline`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
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
