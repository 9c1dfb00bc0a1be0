"""The MP4 sink: annotated frames -> fragmented MP4 segments, continuously or while faces are present.

It keeps the frames (pre-roll included) in a :class:`~fer_edge.record.ring.FrameRing`, opens and finishes
:class:`~fer_edge.record.segment.VideoSegment` files named by the shared :class:`~fer_edge.record.clock.SegmentClock`,
pauses while the disk floor cannot be met and retries after write errors. Write errors never raise out of ``write``.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fer_edge.errors import RecordingError
from fer_edge.record.clock import SegmentClock
from fer_edge.record.diskspace import MB, DiskGuard
from fer_edge.record.heap import release_free_memory
from fer_edge.record.naming import PART_SUFFIX
from fer_edge.record.pyav import pyav
from fer_edge.record.ring import FrameRing
from fer_edge.record.segment import EncoderSettings, VideoSegment, working_codec
from fer_edge.types import Face, Frame

if TYPE_CHECKING:
    from fer_edge.config import RecordingConfig

log = logging.getLogger(__name__)

MAX_PRE_ROLL_BYTES = 256 * 1024 * 1024  # pre-roll frames are held in RAM: 3 s of 1080p30 would be ~280 MB
RETRY_INTERVAL_S = 5.0
RECENT_SEGMENTS = 100  # finished segments listed by Mp4Sink.segments; the disk guard reads the folder itself


class Mp4Sink:
    """Fragmented MP4 segments of the frames, built from the ``recording`` section and the ``encoder`` settings
    it gives the camera's frames (arriving at ``fps``, of ``frame_size``).

    ``presence_triggered``: video only while faces are present, from ``pre_roll_s`` before the first face to
    ``post_roll_s`` after the last one. ``disk`` makes room before each segment opens, sparing the stems that
    ``open_stems()`` names (the files being written). Each finished segment hands the C heap's free pages back
    (:func:`~fer_edge.record.heap.release_free_memory`), which slows the growth of resident memory
    with the segments written (docs/ROBUSTNESS.md).
    """

    def __init__(
        self,
        recording: RecordingConfig,
        encoder: EncoderSettings,
        fps: float,
        frame_size: tuple[int, int],
        *,
        clock: SegmentClock,
        disk: DiskGuard,
        open_stems: Callable[[], set[str]] = set,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ):
        width, height = frame_size
        if width < 2 or height < 2:
            raise RecordingError(f"frame size {width}x{height}: video needs at least 2x2 pixels")
        self._encoder = encoder
        self.fps = self._encoder.fps
        self.width, self.height = self._encoder.width, self._encoder.height  # odd: last row/column left out
        self._frame_interval = 1 / self.fps - 0.5 / fps if recording.record_fps else 0.0  # closer: not recorded
        self._last_taken_ts = float("-inf")
        self.presence_triggered = recording.presence_triggered
        self.pre_roll_s = recording.pre_roll_s
        self.post_roll_s = recording.post_roll_s
        self._clock = clock
        self._disk = disk
        self._open_stems = open_stems
        self._mono = monotonic_clock

        self._av_error: type[Exception] = pyav().FFmpegError
        self.codec = working_codec(recording.codec, self._encoder)
        log.info("recording: %s, %dx%d at up to %g fps", self.codec, self.width, self.height, self.fps)
        capacity = self._pre_roll_capacity() if self.presence_triggered else 3  # else: the encoder's input buffers
        scaled = recording.record_width is not None and recording.record_width < width
        self._ring = FrameRing(capacity, self.width, self.height, scaled_from=frame_size if scaled else None)
        self._segment: VideoSegment | None = None
        self._rolling_over = False  # between one segment's end and the next one's start
        self._segments: deque[Path] = deque(maxlen=RECENT_SEGMENTS)  # bounded: a service runs for months
        self._last_face_ts = float("-inf")
        self._last_encoded_ts = float("-inf")
        self._paused = False  # disk floor not met
        self._retry_at = float("-inf")  # after a write error
        self._failing = False

    def _pre_roll_capacity(self) -> int:
        """Frames the ring holds for the pre-roll, bounded by memory (which may shorten the pre-roll)."""
        frame_bytes = self.width * self.height * 3 // 2
        capacity = math.ceil(self.pre_roll_s * self.fps) + 2
        if capacity * frame_bytes > MAX_PRE_ROLL_BYTES:
            capacity = max(3, MAX_PRE_ROLL_BYTES // frame_bytes)
            wanted, self.pre_roll_s = self.pre_roll_s, (capacity - 2) / self.fps
            size, limit = f"{self.width}x{self.height}", MAX_PRE_ROLL_BYTES // MB
            log.warning("recording: a %.1f s pre-roll of %s frames needs more than %d MB; shortened to %.1f s",
                        wanted, size, limit, self.pre_roll_s)  # fmt: skip
        return capacity

    # ------------------------------------------------------------ what the recorder reads

    @property
    def segments(self) -> list[Path]:
        """The last ``RECENT_SEGMENTS`` finished segment files, oldest first (deleted ones for disk space are left
        out). Only for inspection: the disk guard finds old recordings by listing the folder."""
        return [p for p in list(self._segments) if p.exists()]  # a copy: the recorder thread appends meanwhile

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def recording(self) -> bool:
        """Whether video is being written; read from other threads (the live view's stats, the metrics), so a
        segment that ends only to start the next one does not count as a stop."""
        return self._segment is not None or self._rolling_over

    @property
    def stem(self) -> str | None:
        return self._segment.stem if self._segment is not None else None

    @property
    def open_path(self) -> Path | None:
        return self._segment.part_path if self._segment is not None else None

    # ------------------------------------------------------------ sink

    def write(self, frame: Frame, faces: list[Face]) -> None:
        ts, faces_present = frame.timestamp, bool(faces)
        if faces_present:
            self._last_face_ts = ts
        if ts - self._last_taken_ts < self._frame_interval:
            return  # recording at a lower frame rate than the camera's
        self._last_taken_ts = ts
        slot = self._ring.push(frame.image, ts)
        if self._paused or self._mono() < self._retry_at:
            return
        try:
            if self.presence_triggered:
                self._write_presence(slot, ts, faces_present)
                return
            if self._segment is None or self._clock.full(self._segment.first_ts, ts):
                self._start_segment(ts)
            self._encode(slot, ts)
        except _Paused:
            return
        except (OSError, self._av_error) as exc:
            self._failed(exc)

    def close(self) -> None:
        """Finalize the open segment (flush, fsync, rename), on the thread that writes."""
        self._finish_segment()

    # ------------------------------------------------------------ what the recorder tells it

    def restart(self) -> None:
        """Frame timestamps went back: finish the open segment and forget the old timeline."""
        self._finish_segment()
        self._last_face_ts = self._last_encoded_ts = self._last_taken_ts = float("-inf")
        self._ring.forget()

    def drop(self) -> None:
        """The folder was deleted under the open segment: forget it; the next frame starts a new one."""
        segment, self._segment = self._segment, None
        if segment is not None:
            segment.drop()

    def discard_preroll(self) -> None:
        """Forget the frames held for a pre-roll: none of them is encoded from now on (an open segment goes on)."""
        self._ring.forget()

    def disk_checked(self, has_room: bool) -> None:
        if has_room and self._paused:
            self._paused = False
            log.info("recording: %.0f MB free again; video recording resumed", self._disk.free_bytes() / MB)
        elif not has_room and not self._paused:
            self._pause()

    # ------------------------------------------------------------ segments

    def _write_presence(self, slot: int, ts: float, faces_present: bool) -> None:
        if self._segment is None:
            if not faces_present:
                return
            pre_roll_from = max(ts - self.pre_roll_s - self._clock.half_frame, self._last_encoded_ts)
            pre_roll = list(self._ring.since(pre_roll_from, slot))
            self._start_segment(self._ring.timestamps[pre_roll[0]] if pre_roll else ts)
            for earlier in pre_roll:
                self._encode(earlier, self._ring.timestamps[earlier])
            self._encode(slot, ts)
            return
        if not faces_present and ts - self._last_face_ts > self.post_roll_s + self._clock.half_frame:
            self._finish_segment()
            return
        # an open segment always holds a frame (a failed first encode abandons it)
        if self._clock.full(self._segment.first_ts, ts):
            self._start_segment(ts)
        self._encode(slot, ts)

    def _encode(self, slot: int, ts: float) -> None:
        segment = self._segment
        assert segment is not None  # called with a segment open
        fragment_written = segment.encode(self._ring.slots[slot], ts)
        self._last_encoded_ts = ts
        if self._failing and fragment_written:
            self._failing = False
            log.info("recording: writing video again (%s)", segment.part_path.name)

    def _start_segment(self, first_ts: float) -> None:
        """Finish the open segment (if any) and open a new one, named by the clock, whose first frame is at
        ``first_ts``."""
        self._rolling_over = self._segment is not None
        try:
            self._finish_segment()
            if not self._disk.make_room(self._open_stems()):
                self._pause()
                raise _Paused()
            stem = self._clock.next_stem()
            path = self._clock.directory / f"{stem}{PART_SUFFIX}"
            self._segment = VideoSegment(path, stem, codec=self.codec, settings=self._encoder)
        finally:
            self._rolling_over = False
        self._clock.video_stem = stem  # its events go to a file of this stem; a stem that failed to open has none
        self._clock.video_start_ts = first_ts
        log.log(logging.DEBUG if self._failing else logging.INFO, "recording: started %s", path.name)

    def _finish_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        final = segment.finish()
        release_free_memory()
        if final is not None:
            self._failing = False
            self._segments.append(final)
            log.info("recording: finished %s (%d frames)", final.name, segment.frames)
        elif not segment.part_path.exists():  # none of it reached the disk: no file, as after a failed write
            self._clock.unwritten_video_stem = segment.stem

    def _failed(self, exc: Exception) -> None:
        segment, self._segment = self._segment, None
        kept = segment.abandon() if segment is not None else None
        if kept is not None:
            self._segments.append(kept)
        elif segment is not None:
            self._clock.unwritten_video_stem = segment.stem
        self._retry_at = self._mono() + RETRY_INTERVAL_S
        disk_full = getattr(exc, "errno", None) == errno.ENOSPC
        message = "disk full" if disk_full else f"{type(exc).__name__}: {exc}"
        if not self._failing:
            log.warning(
                "recording: video write failed (%s); %s; retrying every %g s",
                message,
                f"kept {kept.name}" if kept else "nothing to keep",
                RETRY_INTERVAL_S,
            )
        else:
            log.debug("recording: video write failed again (%s)", message)
        self._failing = True

    def _pause(self) -> None:
        self._paused = True
        log.warning(
            "recording: only %.0f MB free (floor %.0f MB) and no old recording left to delete that would "
            "make room; video recording paused until space returns (events continue)",
            self._disk.free_bytes() / MB,
            self._disk.min_free_bytes / MB,
        )
        self._finish_segment()


class _Paused(OSError):
    """Internal: the disk floor cannot be met, so no segment was opened (already logged)."""

    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "disk floor not met")
