"""Replayed sources: a video file and a folder of images, at their own pace or in real time."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fer_edge.capture.prefetch import Prefetcher
from fer_edge.errors import SourceError
from fer_edge.types import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def quiet_opencv(cv2: Any) -> None:
    # OpenCV and its FFmpeg print their own lines for a missing camera or an undecodable file ("moov atom
    # not found"); we report one clear line instead. FFmpeg reads its level at the first capture
    # (OPENCV_FFMPEG_LOGLEVEL=32 in the environment brings its messages back for debugging).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass


class _Pacer:
    """Sleeps so that the frame at ``at`` seconds into a replay is delivered at ``start + at`` (realtime replays)."""

    def __init__(self, interrupted: threading.Event):
        self.start: float | None = None
        self._interrupted = interrupted

    def wait(self, at: float) -> float:
        now = time.monotonic()
        if self.start is None:
            self.start = now - at
        due = self.start + at
        if due > now:
            self._interrupted.wait(due - now)
            return due
        return now


class VideoFileSource:
    """A video file through OpenCV; timestamps are the frames' presentation times from the file's first frame (a
    phone's variable frame rate included, counted on across loops), or the clock when paced in real time.

    Frames are decoded a few ahead on a thread of their own (:class:`~fer_edge.capture.prefetch.Prefetcher`);
    pacing, indices and timestamps stay with :meth:`read`, on the consumer's side.
    """

    def __init__(self, path: str | os.PathLike, *, realtime: bool = False, loop: bool = False):
        import cv2

        quiet_opencv(cv2)
        self._cv2 = cv2
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise SourceError(f"cannot open video file {self.path} (not a video OpenCV can decode?)")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0
        # The first frame is decoded here: a file whose header opens but whose frames do not decode (cut
        # or overwritten) is refused at start-up, not run as an empty video.
        ok, image = self._capture.read()
        if not ok:
            raise SourceError(f"video file {self.path} has no frame that decodes")
        self._pending: tuple[np.ndarray, float | None] | None = (image, self._position())
        height, width = image.shape[:2]
        self.size = (width, height)
        self.loop = loop
        self._interrupted = threading.Event()
        self._pacer = _Pacer(self._interrupted) if realtime else None
        self._index = 0
        self._at = -1.0 / self.fps  # the last frame's time into the replay
        self._offset: float | None = None  # added to a presentation time: the replay's time of this pass's start
        self._shown: float | None = None  # the last frame's presentation time
        self._decoded = 1  # frames decoded in this pass through the file
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and 0 < count < 2**31 else None  # from the header
        self._ahead: Prefetcher[tuple[np.ndarray, float | None]]
        self._ahead = Prefetcher(self._decode_next, name="fer-edge-decode-file")

    def read(self) -> Frame | None:
        if self._interrupted.is_set():
            return None
        decoded: tuple[np.ndarray, float | None] | None
        if self._pending is not None:
            decoded, self._pending = self._pending, None
            self._ahead.start()  # the second frame decodes while the loop works on the first
        else:
            decoded = self._ahead.get()
        if decoded is None:
            return None
        image, shown = decoded
        index = self._index
        self._index += 1
        self._at = at = self._replay_time(shown)
        timestamp = self._pacer.wait(at) if self._pacer else at
        return None if self._interrupted.is_set() else Frame(image, index, timestamp)

    def _replay_time(self, shown: float | None) -> float:
        """Seconds from the replay's first frame to this one: by presentation time, where the file gives one that
        moves on, else one frame period on."""
        step = 1.0 / self.fps
        if shown is None:
            return self._at + step
        if shown == self._shown:
            return self._at  # the same time again: the recorder holds the frame before for no time
        if self._offset is None or self._shown is None or shown < self._shown:  # the first frame of a pass
            self._offset = self._at + step - shown
        self._shown = shown
        return shown + self._offset

    def _position(self) -> float | None:
        """The presentation time (seconds) of the frame just decoded, where OpenCV knows it."""
        ms = self._capture.get(self._cv2.CAP_PROP_POS_MSEC)
        return ms / 1000.0 if math.isfinite(ms) and ms >= 0 else None

    def _decode_next(self) -> tuple[np.ndarray, float | None] | None:
        """The next image of the file (from the start again when looping) and its presentation time; None at its
        end. On the decode thread."""
        ok, image = self._capture.read()
        if ok:
            self._decoded += 1
            return image, self._position()
        self._warn_if_cut_short()
        if not self.loop:
            return None
        self._capture.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
        ok, image = self._capture.read()
        self._decoded = 1 if ok else 0
        return (image, self._position()) if ok else None

    def _warn_if_cut_short(self) -> None:
        """A damaged file (cut, or with undecodable frames) stops decoding before the frame count its header
        gives; containers round that count, so a shortfall of a few frames is no damage."""
        expected = self.frame_count
        if expected is not None and self._decoded < expected - max(2, expected // 100):
            log.warning(
                "video file %s ended after %d of the %d frames its header announces (damaged or cut?)",
                self.path,
                self._decoded,
                expected,
            )

    def interrupt(self) -> None:
        self._interrupted.set()
        self._ahead.stop()

    def close(self) -> None:
        self._interrupted.set()
        if self._ahead.close():
            self._capture.release()  # not under a decode still in progress: the thread owns the capture until it ends


class ImageFolderSource:
    """The images of a folder in name order, as frames of one size (the first image's)."""

    def __init__(self, path: str | os.PathLike, *, fps: float = 30.0, realtime: bool = False, loop: bool = False):
        import cv2

        self._cv2 = cv2
        folder = Path(path)
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        first = self._load(self._files[0])
        if first is None:
            raise SourceError(f"cannot read image {self._files[0]}")
        self.size = (first.shape[1], first.shape[0])
        self.fps = fps
        self.loop = loop
        self._interrupted = threading.Event()
        self._pacer = _Pacer(self._interrupted) if realtime else None
        self._position = 0
        self._index = 0

    def _load(self, path: Path) -> np.ndarray | None:
        return self._cv2.imread(str(path), self._cv2.IMREAD_COLOR)

    def read(self) -> Frame | None:
        while not self._interrupted.is_set():
            if self._position >= len(self._files):
                if not self.loop:
                    return None
                self._position = 0
            path = self._files[self._position]
            self._position += 1
            image = self._load(path)
            if image is None:
                log.warning("skipping unreadable image %s", path)
                continue
            if (image.shape[1], image.shape[0]) != self.size:
                image = self._cv2.resize(image, self.size, interpolation=self._cv2.INTER_AREA)
            index = self._index
            self._index += 1
            timestamp = self._pacer.wait(index / self.fps) if self._pacer else index / self.fps
            return None if self._interrupted.is_set() else Frame(image, index, timestamp)
        return None

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        pass
