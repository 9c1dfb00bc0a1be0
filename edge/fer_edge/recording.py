"""Crash-safe recording of the annotated frames: fragmented MP4 segments plus the events log.

Why fragmented MP4: a plain MP4 keeps its index (``moov``) in memory until the file is closed, so SIGKILL or power
loss leaves an unplayable file. Here the muxer writes an empty ``moov`` up front and then one self-describing fragment
(``moof`` + ``mdat``) per keyframe; a keyframe is forced every ``fragment_seconds`` and the encoder runs with zero
latency, so at any time only the frames since the last keyframe are not yet on their way to disk. A background
thread fdatasyncs the open files every second for power loss.

Files in ``output_dir`` (created 0640 whatever the umask: they show faces; the folder 0750 when made here):
``<stem>.mp4.part`` while written, renamed to ``<stem>.mp4`` once finalized (fsync first);
``events.jsonl`` (see :mod:`fer_edge.events`) renamed to ``<stem>.jsonl`` with its segment. Stems are
``YYYYmmdd-HHMMSS-NNNN`` in UTC (no daylight-saving jumps, so names sort chronologically; after the clock steps
back, a new name is set a second after the newest one, so they keep recording order). Leftover ``.part`` files
are repaired at start-up by :func:`fer_edge.recovery.recover_leftovers`, which the app calls once before the
recorder opens; one that cannot be repaired is kept unchanged as ``<stem>.mp4.broken``.

The parts: :mod:`fer_edge.segment` (the MP4 segment writer and the encoder choice), :mod:`fer_edge.framering` (the
I420 frames, pre-roll included), :mod:`fer_edge.naming` (stems), :mod:`fer_edge.filesync` (fdatasync thread),
:mod:`fer_edge.diskspace` (the disk floor), :mod:`fer_edge.events` (the events log). The Recorder here composes
them: the segment clock, presence triggering, pauses and retries.

Video timing follows the frames' capture timestamps (variable frame rate), so a Pi that processes fewer frames per
second than the camera delivers still records at true speed; ``fps`` sizes buffers, GOPs and fills gaps when
timestamps do not advance.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fer_edge.diskspace import (
    FOLDER_MODE,
    MB,
    DiskGuard,
    check_floor,
    finished_recordings,
)
from fer_edge.errors import RecordingError  # raised for bad arguments, an unusable folder, no usable encoder
from fer_edge.events import EventsLog
from fer_edge.filesync import FileSyncer
from fer_edge.framering import FrameRing
from fer_edge.naming import PART_SUFFIX, make_stem, stem_time
from fer_edge.pyav import pyav
from fer_edge.recovery import (  # noqa: F401 - public names of the recording API
    count_video_frames,
    recover_partial_recordings,
    repair_fragmented_mp4,
    scan_fragmented_mp4,
)
from fer_edge.segment import EncoderSettings, VideoSegment, check_recording, working_codec
from fer_edge.types import Face, Frame

if TYPE_CHECKING:
    from fer_edge.config import EventsConfig, RecordingConfig

__all__ = [
    "Recorder",
    "RecordingError",
    "check_recording",
    "count_video_frames",
    "recover_partial_recordings",
    "repair_fragmented_mp4",
    "scan_fragmented_mp4",
]

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0
MAX_PRE_ROLL_BYTES = 256 * 1024 * 1024  # pre-roll frames are held in RAM: 3 s of 1080p30 would be ~280 MB
RETRY_INTERVAL_S = 5.0
RECENT_SEGMENTS = 100  # finished segments listed by Recorder.segments; the disk guard reads the folder itself


class Recorder:
    """Pipeline sink: annotated frames -> fragmented MP4 segments, face data -> events log.

    ``presence_triggered``: video only while faces are present, from ``pre_roll_s`` before the first face to
    ``post_roll_s`` after the last one; events are still written for every frame. ``record_video=False`` writes
    events only. Disk: recordings are deleted oldest first to keep ``min_free_mb`` free; when that is impossible,
    video pauses (events go on) until space returns. Write errors never raise out of ``write``.
    """

    def __init__(
        self,
        recording: RecordingConfig,
        events_config: EventsConfig,
        fps: float,
        frame_size: tuple[int, int],
        *,
        free_bytes: Callable[[], int] | None = None,
        disk_check_interval_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ):
        # the config's ranges are checked where it is loaded (fer_edge.config); the frame size comes from the source
        record_video, record_fps, min_free_mb = recording.enabled, recording.record_fps, recording.min_free_mb
        width, height = frame_size
        if not fps > 0:
            raise RecordingError(f"fps must be positive, got {fps}")
        if record_video and (width < 2 or height < 2):
            raise RecordingError(f"frame size {width}x{height}: video needs at least 2x2 pixels")
        self.output_dir = Path(recording.output_dir)
        try:
            self.output_dir.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(f"cannot create output directory {self.output_dir}: {exc}") from None
        if not os.access(self.output_dir, os.W_OK):
            raise RecordingError(f"output directory {self.output_dir} is not writable")

        self._encoder = EncoderSettings.for_recording(recording, frame_size, fps)
        self.fps = self._encoder.fps
        self.width, self.height = self._encoder.width, self._encoder.height  # odd: last row/column left out
        self._frame_interval = 1 / self.fps - 0.5 / fps if record_fps else 0.0  # frames closer are not recorded
        self._last_taken_ts = float("-inf")
        self.segment_seconds = recording.segment_seconds
        self.presence_triggered = recording.presence_triggered
        self.pre_roll_s = recording.pre_roll_s
        self.post_roll_s = recording.post_roll_s
        self.record_video = record_video
        self._half_frame = 0.5 / self.fps
        self._wall = wall_clock
        self._mono = monotonic_clock

        check_floor(self.output_dir, int(min_free_mb * MB))
        newest = finished_recordings(self.output_dir)
        self._newest_stem_time = stem_time(newest[-1][0]) if newest else float("-inf")

        self.codec = recording.codec
        self._av_error: type[Exception] = OSError
        if record_video:
            self._av_error = pyav().FFmpegError
            self.codec = working_codec(recording.codec, self._encoder)
            log.info("recording: %s, %dx%d at up to %g fps", self.codec, self.width, self.height, self.fps)
        self._disk = DiskGuard(
            self.output_dir,
            int(min_free_mb * MB),
            free_bytes=free_bytes,
            check_interval_s=disk_check_interval_s,
            clock=monotonic_clock,
        )
        self._events = EventsLog(self.output_dir) if events_config.enabled else None
        self._events_start_ts = 0.0
        self._sequence = 1
        self._segment: VideoSegment | None = None
        self._segments: deque[Path] = deque(maxlen=RECENT_SEGMENTS)  # bounded: a service runs for months
        self._ring: FrameRing | None = None
        if record_video:
            capacity = 3  # the encoder's input buffers
            if self.presence_triggered:
                capacity = self._pre_roll_capacity()
            scaled = recording.record_width is not None and recording.record_width < width
            self._ring = FrameRing(capacity, self.width, self.height, scaled_from=frame_size if scaled else None)
        self._last_face_ts = float("-inf")
        self._last_encoded_ts = float("-inf")
        self._previous_ts = float("-inf")
        self._paused = False  # disk floor not met
        self._retry_at = float("-inf")  # after a video write error
        self._failing = False
        self._folder_missing = False
        self._syncer = FileSyncer(SYNC_INTERVAL_S)
        self._closed = False

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

    # ------------------------------------------------------------ public

    @property
    def segments(self) -> list[Path]:
        """The last ``RECENT_SEGMENTS`` finished segment files, oldest first (deleted ones for disk space are left
        out). Only for inspection: the disk guard finds old recordings by listing the folder."""
        return [p for p in self._segments if p.exists()]

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def recording(self) -> bool:
        return self._segment is not None

    def write(self, frame: Frame, faces: list[Face]) -> None:
        if self._closed:
            raise RecordingError("write() after close()")
        if frame.timestamp < self._previous_ts - 1.0:
            self._restart_timeline(frame.timestamp)
        self._previous_ts = frame.timestamp
        if self._disk.check_due():
            self._check_disk()
        new_stem = self._write_video(frame, bool(faces)) if self.record_video else None
        if self._events is not None:
            self._write_events(self._events, frame, faces, new_stem)

    def close(self) -> None:
        """Finalize the open segment and events file (fast: flush, fsync, rename). Call it from the loop's thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_segment()
        finally:
            if self._events is not None:
                self._events.close()
            self._syncer.stop()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _restart_timeline(self, ts: float) -> None:
        """Timestamps jumped back (a replayed file looped, a source restarted): start afresh from ``ts``."""
        log.info("recording: frame timestamps went back by %.1f s; starting new files", self._previous_ts - ts)
        self._finish_segment()
        self._last_face_ts = self._last_encoded_ts = self._last_taken_ts = float("-inf")
        if self._ring is not None:
            self._ring.timestamps[:] = [float("-inf")] * self._ring.capacity
        if self._events is not None and self._events.is_open:
            self._events_start_ts = float("-inf")  # rotates at the next events write

    # ------------------------------------------------------------ video

    def _write_video(self, frame: Frame, faces_present: bool) -> str | None:
        ts = frame.timestamp
        if faces_present:
            self._last_face_ts = ts
        if ts - self._last_taken_ts < self._frame_interval:
            return None  # recording at a lower frame rate than the camera's
        self._last_taken_ts = ts
        assert self._ring is not None  # made when recording video
        slot = self._ring.push(frame.image, ts)
        if self._paused or self._mono() < self._retry_at:
            return None
        try:
            if self.presence_triggered:
                return self._write_presence(slot, ts, faces_present)
            new_stem = self._start_segment() if self._segment is None or self._segment_full(self._segment, ts) else None
            self._encode(slot, ts)
            return new_stem
        except _Paused:
            return None
        except (OSError, self._av_error) as exc:
            self._video_failed(exc)
            return None

    def _write_presence(self, slot: int, ts: float, faces_present: bool) -> str | None:
        if self._segment is None:
            if not faces_present:
                return None
            stem = self._start_segment()
            pre_roll_from = max(ts - self.pre_roll_s - self._half_frame, self._last_encoded_ts)
            assert self._ring is not None  # made when recording video
            for earlier in self._ring.since(pre_roll_from, slot):
                self._encode(earlier, self._ring.timestamps[earlier])
            self._encode(slot, ts)
            return stem
        if not faces_present and ts - self._last_face_ts > self.post_roll_s + self._half_frame:
            self._finish_segment()
            return None
        new_stem = self._start_segment() if self._segment_full(self._segment, ts) else None
        self._encode(slot, ts)
        return new_stem

    def _segment_full(self, segment: VideoSegment, ts: float) -> bool:
        # an open segment always holds a frame (a failed first encode abandons it); None would mean empty, not full
        return segment.first_ts is not None and ts - segment.first_ts >= self.segment_seconds - self._half_frame

    def _encode(self, slot: int, ts: float) -> None:
        segment, ring = self._segment, self._ring
        assert segment is not None and ring is not None  # called with a segment open, so when recording video
        fragment_written = segment.encode(ring.slots[slot], ts)
        self._last_encoded_ts = ts
        if self._failing and fragment_written:
            self._failing = False
            log.info("recording: writing video again (%s)", segment.part_path.name)

    def _start_segment(self) -> str:
        """Finish the open segment (if any) and open a new one; returns its stem."""
        self._finish_segment()
        if not self._disk.make_room(self._open_stems()):
            self._pause()
            raise _Paused()
        stem = self._next_stem()
        self._segment = VideoSegment(
            self.output_dir / f"{stem}{PART_SUFFIX}", stem, codec=self.codec, settings=self._encoder
        )
        self._watch_files()
        log.log(logging.DEBUG if self._failing else logging.INFO, "recording: started %s", self._segment.part_path.name)
        return stem

    def _next_stem(self) -> str:
        wall = self._wall()
        if wall < self._newest_stem_time:
            # The wall clock stepped back (a Pi has no RTC; NTP steps it). The disk guard deletes by name,
            # oldest first, so names must keep recording order: name it a second after the newest instead.
            log.warning(
                "recording: the clock (%s UTC) is behind the newest recording's name; naming the next "
                "one after it to keep names in recording order (events keep the clock's time)",
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall)),
            )
            wall = self._newest_stem_time + 1
        stem = make_stem(self.output_dir, wall, self._sequence)
        self._sequence = int(stem.rsplit("-", 1)[1]) + 1
        self._newest_stem_time = max(self._newest_stem_time, stem_time(stem))
        return stem

    def _open_stems(self) -> set[str]:
        """Stems of the files being written, which the disk guard must not delete."""
        stems = {self._segment.stem} if self._segment is not None else set()
        if self._events is not None and self._events.stem:
            stems.add(self._events.stem)
        return stems

    def _finish_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        final = segment.finish()
        self._watch_files()
        if final is not None:
            self._failing = False
            self._segments.append(final)
            log.info("recording: finished %s (%d frames)", final.name, segment.frames)

    def _video_failed(self, exc: Exception) -> None:
        segment, self._segment = self._segment, None
        kept = segment.abandon() if segment is not None else None
        if kept is not None:
            self._segments.append(kept)
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
        self._watch_files()

    # ------------------------------------------------------------ disk

    def _check_disk(self) -> None:
        if not self.output_dir.is_dir():
            self._recreate_output_dir()
        if self._disk.make_room(self._open_stems()):
            if self._paused:
                self._paused = False
                log.info("recording: %.0f MB free again; video recording resumed", self._disk.free_bytes() / MB)
        elif self.record_video and not self._paused:
            self._pause()
        if self._events is not None:
            self._events.retry()

    def _recreate_output_dir(self) -> None:
        """The folder was deleted under us (a cleanup script, an operator): make it again and start new files."""
        try:
            self.output_dir.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            if not self._folder_missing:
                log.warning(
                    "recording: output folder %s is gone and cannot be made again (%s); retrying", self.output_dir, exc
                )
            self._folder_missing = True
            return
        self._folder_missing = False
        log.warning(
            "recording: output folder %s was deleted while recording; made it again and started new files "
            "(the files open when it went are lost)",
            self.output_dir,
        )
        segment, self._segment = self._segment, None
        if segment is not None:
            segment.drop()
        if self._events is not None:
            self._events.drop()
        self._watch_files()

    def _pause(self) -> None:
        self._paused = True
        log.warning(
            "recording: only %.0f MB free (floor %.0f MB) and no old recording left to delete that would "
            "make room; video recording paused until space returns (events continue)",
            self._disk.free_bytes() / MB,
            self._disk.min_free_bytes / MB,
        )
        self._finish_segment()

    # ------------------------------------------------------------ events

    def _write_events(self, events: EventsLog, frame: Frame, faces: list[Face], new_stem: str | None) -> None:
        ts = frame.timestamp
        if new_stem is None and (
            not events.is_open or ts - self._events_start_ts >= self.segment_seconds - self._half_frame
        ):
            new_stem = self._next_stem()
        if new_stem is not None:
            events.rotate(new_stem)
            self._events_start_ts = ts
            self._watch_files()
        events.write(self._wall(), frame.index, faces)

    def _watch_files(self) -> None:
        self._syncer.watch(
            self._segment.part_path if self._segment is not None else None,
            self._events.path if self._events is not None and self._events.is_open else None,
        )


def open_recorder(
    recording: RecordingConfig, events: EventsConfig, fps: float, frame_size: tuple[int, int], **clocks
) -> Recorder:
    """The recording sink from its two config sections (what the app wiring calls)."""
    return Recorder(recording, events, fps, frame_size, **clocks)


class _Paused(OSError):
    """Internal: the disk floor cannot be met, so no segment was opened (already logged)."""

    def __init__(self):
        super().__init__(errno.ENOSPC, "disk floor not met")
