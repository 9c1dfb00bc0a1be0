"""Recording on its own thread: the frame loop only queues frames; a recorder thread encodes and writes them.

The split follows picamera2's encoder/output design: what the loop calls (:meth:`RecorderThread.write`) takes a
lock, appends ``(frame, faces, wall time)`` to a bounded queue and returns; the recorder thread owns the
:class:`~fer_edge.record.recorder.Recorder` and with it the pre-roll ring, the segments, the events log, the disk
guard, every fsync and every rotation. PyAV's encoder and OpenCV's colour conversion release the GIL, so on a
second core the recording runs beside the loop instead of inside it, and a pre-roll burst (seconds of frames
encoded at once when the first face appears) no longer stalls the loop.

The queue holds at most ``capacity`` frames (about two seconds, less for large frames: they are BGR images). When
the recorder falls that far behind a live source (a camera, a replay paced in real time), the oldest queued frame
is dropped, video and events line alike, and counted (:attr:`RecorderThread.dropped`); the status line and the
live stats report the count. A file read as fast as it decodes has nobody to fall behind: there ``write`` waits
for room instead (``drop_when_full=False``), so every frame is recorded.

Frames are handed over, not copied: sources hand out a new image per frame and the loop is done writing into it
(privacy, overlays) before the sinks get it, so the recorder thread may read it later. (A copy of a 1080p frame
measured 0.2 ms on a 2-core x86 workstation, 0.08 ms at 720p; a Pi 4's memory is several times slower.)

An exception on the recorder thread that the recorder does not handle itself (it handles full disks and write
errors: logged once, retried) ends recording; the loop's next ``write`` raises it, so the run ends with the same
one error line as when it was raised on the loop.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fer_edge.errors import RecordingError
from fer_edge.types import Face, Frame

log = logging.getLogger(__name__)

QUEUE_SECONDS = 2.0  # how far the recorder may fall behind before frames are dropped
MAX_QUEUE_BYTES = 128 * 1024 * 1024  # queued frames are BGR: 2 s of 1080p30 would be ~370 MB
MIN_QUEUE_FRAMES = 4
STOP_BUDGET_S = 10.0  # to drain the queue and finalize on stop; systemd's TimeoutStopSec is 15 s
RECORDER_NICENESS = 5  # the queue absorbs the recorder's delays; the loop's are the camera falling behind


class RecordingCore(Protocol):
    """What the thread drives: :class:`~fer_edge.record.recorder.Recorder`, or a test fake."""

    @property
    def recording(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def segments(self) -> list[Path]: ...
    def write(self, frame: Frame, faces: list[Face], wall: float | None = None) -> None: ...
    def set_video(self, on: bool) -> None: ...
    def discard_preroll(self) -> None: ...
    def source_lost(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _Item:
    frame: Frame
    faces: list[Face]
    wall: float


@dataclass(frozen=True)
class _Command:
    """A call the recorder thread makes between frames, in queue order (never dropped)."""

    apply: Callable[[], None]


def queue_capacity(frame_size: tuple[int, int], fps: float) -> int:
    """Frames the queue holds: ``QUEUE_SECONDS`` of them, bounded by ``MAX_QUEUE_BYTES`` of BGR images."""
    width, height = frame_size
    by_time = math.ceil(QUEUE_SECONDS * fps)
    by_memory = MAX_QUEUE_BYTES // max(1, width * height * 3)
    return max(MIN_QUEUE_FRAMES, min(by_time, by_memory))


class RecorderThread:
    """Pipeline sink that queues each frame for ``recorder``, which runs on a thread of its own.

    ``write`` never waits for the recorder; ``close`` drains the queue and finalizes the files within
    ``stop_budget_s``.
    """

    def __init__(
        self,
        recorder: RecordingCore,
        capacity: int,
        *,
        drop_when_full: bool = True,
        stop_budget_s: float = STOP_BUDGET_S,
        wall_clock: Callable[[], float] = time.time,
    ):
        if capacity < 1:
            raise RecordingError(f"queue capacity must be at least 1, got {capacity}")
        self.recorder = recorder
        self.capacity = capacity
        self.drop_when_full = drop_when_full
        self._stop_budget_s = stop_budget_s
        self._wall = wall_clock
        self._queue: deque[_Item | _Command] = deque()
        self._frames_queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self._finished = False  # the recorder thread ended
        self._error: BaseException | None = None  # raised on the recorder thread
        self._error_raised = False  # by write() on the loop already
        self.dropped = 0  # frames dropped because the queue was full
        self.handled = 0  # frames the recorder has written (video and events as configured)
        self._said_dropping = False
        self._thread = threading.Thread(target=self._run, name="fer-edge-recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ what the loop (and other threads) read

    @property
    def recording(self) -> bool:
        return self.recorder.recording

    @property
    def paused(self) -> bool:
        return self.recorder.paused

    @property
    def segments(self) -> list[Path]:
        return self.recorder.segments

    @property
    def queued(self) -> int:
        return self._frames_queued

    def status(self) -> str | None:
        """For the status line: the frames dropped so far, once there are any."""
        dropped = self.dropped
        return f"recording dropped {dropped} frames (recorder behind)" if dropped else None

    # ------------------------------------------------------------ sink, on the loop's thread

    def _raise_pending(self) -> None:
        """Raise, on the loop's thread, what failed on the recorder thread (once it is raised, close() does not)."""
        if self._error is not None:
            self._error_raised = True
            raise self._error

    def write(self, frame: Frame, faces: list[Face]) -> None:
        self._raise_pending()
        if self._closing:
            raise RecordingError("write() after close()")
        item = _Item(frame, faces, self._wall())
        with self._cond:
            if self._frames_queued >= self.capacity:
                if self.drop_when_full:
                    self._drop_oldest()
                else:
                    self._cond.wait_for(lambda: self._frames_queued < self.capacity or self._finished)
                    self._raise_pending()
            self._queue.append(item)
            self._frames_queued += 1
            self._cond.notify_all()

    def set_video(self, on: bool) -> None:
        """Video recording on or off (events go on); applied on the recorder thread, in frame order."""
        self._command(lambda: self.recorder.set_video(on))

    def discard_preroll(self) -> None:
        """Forget the pre-roll held so far, and the frames queued before this call, as pre-roll: privacy went on,
        and they were captured without it. Frames written after this call are the only pre-roll."""
        self._command(self.recorder.discard_preroll)

    def source_lost(self) -> None:
        """The source lost its camera: the open files are finished (on the recorder thread, after the frames
        queued before); the next frame starts new ones."""
        self._command(self.recorder.source_lost)

    def close(self) -> None:
        """Drain the queue, finalize the files (on the recorder thread) and end it, within the stop budget."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self._stop_budget_s)
        if self._thread.is_alive():
            log.error(
                "recording: not finished within %.0f s (%d frames still queued); the open files are repaired "
                "at the next start",
                self._stop_budget_s,
                self._frames_queued,
            )
        if self.dropped:
            log.info("recording: %d frames were dropped because the recorder fell behind", self.dropped)
        if not self._error_raised:
            self._raise_pending()  # failed while draining, or while finalizing: the loop's close reports it

    def __enter__(self) -> RecorderThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _command(self, apply: Callable[[], None]) -> None:
        with self._cond:
            if self._closing:
                return
            self._queue.append(_Command(apply))
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        """Called under the lock with the queue full: drop the oldest frame (commands stay)."""
        for position, entry in enumerate(self._queue):
            if isinstance(entry, _Item):
                del self._queue[position]
                break
        self._frames_queued -= 1
        self.dropped += 1
        if not self._said_dropping:
            self._said_dropping = True
            log.warning("recording: the recorder fell %d frames behind; dropping the oldest (counted)", self.capacity)

    # ------------------------------------------------------------ the recorder thread

    def _next(self) -> _Item | _Command | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None  # closing, and drained
            entry = self._queue.popleft()
            if isinstance(entry, _Item):
                self._frames_queued -= 1
                self._cond.notify_all()  # a write waiting for room
            return entry

    def _run(self) -> None:
        _lower_priority(RECORDER_NICENESS)  # this thread's and the encoder threads it starts
        try:
            while (entry := self._next()) is not None:
                if isinstance(entry, _Command):
                    entry.apply()
                    continue
                self.recorder.write(entry.frame, entry.faces, entry.wall)
                self.handled += 1
        except Exception as exc:  # noqa: BLE001 - handed to the loop, which ends the run with it
            log.debug("recording thread failed", exc_info=True)
            self._error = exc
        finally:
            try:
                self.recorder.close()
            except Exception as exc:  # noqa: BLE001 - the loop's close reports it
                log.error("recording: closing failed: %s", exc)
                if self._error is None:
                    self._error = exc
            with self._cond:
                self._queue.clear()
                self._frames_queued = 0
                self._finished = True
                self._cond.notify_all()


def _lower_priority(niceness: int) -> None:
    """Make the calling thread (a Linux task of its own) ``niceness`` nicer; threads it starts inherit that."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except (OSError, AttributeError):  # not Linux, or not allowed: the same priority as the loop, as before
        log.debug("recording: cannot lower the recorder thread's priority", exc_info=True)
