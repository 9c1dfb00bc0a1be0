"""Crash-safe recording of the annotated frames: fragmented MP4 segments plus the events log.

Why fragmented MP4: a plain MP4 keeps its index (``moov``) in memory until the file is closed, so SIGKILL or power
loss leaves an unplayable file. Here the muxer writes an empty ``moov`` up front and then one self-describing fragment
(``moof`` + ``mdat``) per keyframe; a keyframe is forced every ``fragment_seconds`` and the encoder runs with zero
latency, so at any time only the frames since the last keyframe are not yet on their way to disk. A background
thread fdatasyncs the open files every second for power loss.

Files in ``output_dir`` (created 0640 whatever the umask: they show faces; the folder 0750 when made here):
``<stem>.mp4.part`` while written, renamed to ``<stem>.mp4`` once finalized (fsync first);
``events.jsonl`` (see :mod:`fer_edge.record.events`) renamed to ``<stem>.jsonl`` with its segment. Stems are
``YYYYmmdd-HHMMSS-NNNN`` in UTC (no daylight-saving jumps, so names sort chronologically; after the clock steps
back, a new name is set a second after the newest one, so they keep recording order, at most a day ahead of the
clock). Leftover ``.part`` files are repaired at start-up by :func:`fer_edge.record.recovery.recover_leftovers`,
which the app calls once before the recorder opens; one that cannot be repaired is kept unchanged as
``<stem>.mp4.broken``.

The parts: two sinks, :class:`~fer_edge.record.videosink.Mp4Sink` (presence triggering, pauses, retries; its segment
writer and encoder choice in :mod:`fer_edge.record.segment`, its frames in :mod:`fer_edge.record.ring`) and
:class:`~fer_edge.record.events.EventsSink`, or a :class:`NullSink` for a part that is off; one
:class:`~fer_edge.record.clock.SegmentClock` that names their segments and says when one is full;
:mod:`fer_edge.record.filesync` (fdatasync thread) and :mod:`fer_edge.record.diskspace` (the disk floor).
The Recorder here composes them and owns what they share: the folder, the disk floor, the sync thread and the
frames' timeline. The app runs it on a thread of its own (:mod:`fer_edge.record.worker`): the frame loop only
queues frames, and every encode, write, fsync and rotation happens on the recorder thread.

Video timing follows the frames' capture timestamps (variable frame rate), so a Pi that processes fewer frames per
second than the camera delivers still records at true speed; ``fps`` sizes buffers, GOPs and fills gaps when
timestamps do not advance.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fer_edge.errors import RecordingError  # raised for bad arguments, an unusable folder, no usable encoder
from fer_edge.pipeline import Sink
from fer_edge.record.clock import SegmentClock
from fer_edge.record.diskspace import FOLDER_MODE, MB, DiskGuard, check_floor
from fer_edge.record.events import EventsSink
from fer_edge.record.filesync import FileSyncer
from fer_edge.record.recovery import (  # noqa: F401 - public names of the recording API
    count_video_frames,
    recover_partial_recordings,
    repair_fragmented_mp4,
    scan_fragmented_mp4,
)
from fer_edge.record.segment import EncoderSettings, check_recording
from fer_edge.record.videosink import Mp4Sink
from fer_edge.record.worker import RecorderThread, queue_capacity
from fer_edge.types import Face, Frame

if TYPE_CHECKING:
    from fer_edge.config import EventsConfig, RecordingConfig

__all__ = [
    "NullSink",
    "Recorder",
    "RecorderThread",
    "RecordingError",
    "check_recording",
    "count_video_frames",
    "recover_partial_recordings",
    "repair_fragmented_mp4",
    "scan_fragmented_mp4",
]

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0


class RecordingSink(Sink, Protocol):
    """What the Recorder asks of its MP4 and events sinks, beyond a pipeline sink's write and close."""

    @property
    def stem(self) -> str | None: ...  # of the file being written
    @property
    def open_path(self) -> Path | None: ...
    def write(self, frame: Frame, faces: list[Face], wall: float | None = None) -> None: ...
    def restart(self) -> None: ...  # frame timestamps went back
    def drop(self) -> None: ...  # the folder was deleted under the open file
    def disk_checked(self, has_room: bool) -> None: ...


class NullSink:
    """A recording part that is switched off: writes nothing, holds no file."""

    stem: str | None = None
    open_path: Path | None = None
    recording = False
    paused = False

    @property
    def segments(self) -> list[Path]:
        return []

    def write(self, frame: Frame, faces: list[Face], wall: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def discard_preroll(self) -> None:
        pass

    def restart(self) -> None:
        pass

    def drop(self) -> None:
        pass

    def disk_checked(self, has_room: bool) -> None:
        pass


class Recorder:
    """Pipeline sink: annotated frames -> fragmented MP4 segments (``recording.enabled``), face data -> events log
    (``events.enabled``); events are written for every frame, also while presence-triggered video waits for a face.

    Disk: recordings are deleted oldest first to keep ``min_free_mb`` free; when that is impossible, video pauses
    (events go on) until space returns. Write errors never raise out of ``write``.
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
        if not fps > 0:
            raise RecordingError(f"fps must be positive, got {fps}")
        self.output_dir = Path(recording.output_dir)
        try:
            self.output_dir.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(f"cannot create output directory {self.output_dir}: {exc}") from None
        if not os.access(self.output_dir, os.W_OK):
            raise RecordingError(f"output directory {self.output_dir} is not writable")
        self._mount_root = mount_root(self.output_dir)  # where its disk is mounted: the folder is only made again on it
        min_free_bytes = int(recording.min_free_mb * MB)
        check_floor(self.output_dir, min_free_bytes)
        self._disk = DiskGuard(
            self.output_dir,
            min_free_bytes,
            free_bytes=free_bytes,
            check_interval_s=disk_check_interval_s,
            clock=monotonic_clock,
        )
        encoder = EncoderSettings.for_recording(recording, frame_size, fps)
        self.clock = SegmentClock(self.output_dir, recording.segment_seconds, encoder.fps, wall_clock=wall_clock)
        self.events: RecordingSink = NullSink()
        if events_config.enabled:
            self.events = EventsSink(self.clock, wall_clock=wall_clock, open_video_stem=lambda: self.video.stem)
        self.video: Mp4Sink | NullSink = NullSink()
        if recording.enabled:
            self.video = Mp4Sink(
                recording,
                encoder,
                fps,
                frame_size,
                clock=self.clock,
                disk=self._disk,
                open_stems=self._open_stems,
                monotonic_clock=monotonic_clock,
            )
        self._video_on = True
        self._previous_ts = float("-inf")
        self._folder_missing = False
        self._syncer = FileSyncer(SYNC_INTERVAL_S)
        self._watched: tuple[Path | None, ...] = (None, None)
        self._closed = False

    @property
    def segments(self) -> list[Path]:
        """The last finished segment files, oldest first (see :attr:`Mp4Sink.segments`)."""
        return self.video.segments

    @property
    def paused(self) -> bool:
        return self.video.paused

    @property
    def recording(self) -> bool:
        return self.video.recording

    def set_video(self, on: bool) -> None:
        """Switch video recording on or off while the events log goes on; off finishes the open segment."""
        if on == self._video_on:
            return
        self._video_on = on
        if not on:
            self.video.close()
        self._watch_files()

    def discard_preroll(self) -> None:
        """Forget the frames held for the pre-roll (privacy went on: they were captured without it)."""
        self.video.discard_preroll()

    def source_lost(self) -> None:
        """The camera is gone: finish the open segment and events file now, not when it is back (hours later,
        maybe), so that they are listed, kept whole and no longer shown as recording meanwhile."""
        self.video.close()
        self.events.close()
        self._watch_files()

    def write(self, frame: Frame, faces: list[Face], wall: float | None = None) -> None:
        """Record one frame; ``wall``: the wall-clock time it was handed over (default: now), for its events."""
        if self._closed:
            raise RecordingError("write() after close()")
        if frame.timestamp < self._previous_ts - 1.0:
            log.info(
                "recording: frame timestamps went back by %.1f s; starting new files",
                self._previous_ts - frame.timestamp,
            )
            self.video.restart()
            self.events.restart()
        self._previous_ts = frame.timestamp
        # a stat a frame: a folder deleted since the last disk check is made again before a file is finished or
        # opened in it, and said once, not by each file that fails
        if self._disk.check_due() or not (self._folder_missing or self.output_dir.is_dir()):
            self._check_disk()
        if self._video_on:
            self.video.write(frame, faces)  # first: a segment it opens names this frame's events file
        if not self._folder_missing:  # else its lines would go to whatever stands at its path now
            self.events.write(frame, faces, wall)
        self._watch_files()

    def close(self) -> None:
        """Finalize the open segment and events file (flush, fsync, rename), on the thread that writes."""
        if self._closed:
            return
        self._closed = True
        try:
            self.video.close()
        finally:
            self.events.close()
            self._syncer.stop()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_stems(self) -> set[str]:
        """Stems of the files being written, which the disk guard must not delete."""
        return {stem for stem in (self.video.stem, self.events.stem) if stem}

    def _check_disk(self) -> None:
        if not (self._disk_mounted() and self.output_dir.is_dir()):
            self._recreate_output_dir()
            if self._folder_missing:  # nothing to measure or delete there; said once already
                self.video.disk_checked(False)
                self.events.disk_checked(False)
                return
        elif self._folder_missing:  # back by itself: its disk was mounted again
            self._folder_missing = False
            log.warning(
                "recording: output folder %s is back; started new files (the files open when it went are lost)",
                self.output_dir,
            )
            self.video.drop()
            self.events.drop()
        has_room = self._disk.make_room(self._open_stems())
        self.video.disk_checked(has_room)
        self.events.disk_checked(has_room)

    def _recreate_output_dir(self) -> None:
        """The folder was deleted under us (a cleanup script, an operator), or went with its disk: make it again
        and start new files.

        Only on the disk mounted where it was: a disk unplugged or unmounted takes the folder with it, and one
        made in the empty mount point would fill the SD card, hidden once the disk is mounted again. A disk
        plugged in again is often a new device (another number, reformatted, the folder not on it), so what
        counts is the mount point, not the device."""
        try:
            if not self._disk_mounted():  # a folder left in the mount point would take the recordings
                raise OSError(errno.ENODEV, f"its disk, mounted at {self._mount_root}, is gone")
            existing = next(parent for parent in self.output_dir.parents if parent.exists())
            if mount_root(existing) != self._mount_root:
                raise OSError(errno.ENODEV, f"{existing} is on another disk than the folder was")
            self.output_dir.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            if not self._folder_missing:
                log.warning(
                    "recording: output folder %s is gone and cannot be made again (%s); retrying", self.output_dir, exc
                )
            self._folder_missing = True
            return
        what = (
            "is back (made again on its disk)" if self._folder_missing else "was deleted while recording; made it again"
        )
        self._folder_missing = False
        log.warning(
            "recording: output folder %s %s and started new files (the files open when it went are lost)",
            self.output_dir,
            what,
        )
        self.video.drop()
        self.events.drop()

    def _disk_mounted(self) -> bool:
        return self._mount_root == self._mount_root.parent or os.path.ismount(self._mount_root)

    def _watch_files(self) -> None:
        """Point the sync thread at the files being written, when they changed."""
        paths = (self.video.open_path, self.events.open_path)
        if paths != self._watched:
            self._watched = paths
            self._syncer.watch(*paths)


def mount_root(path: Path) -> Path:
    """The mount point of the file system ``path`` is on (``/`` for the root file system)."""
    path = path.resolve()
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def open_recorder(
    recording: RecordingConfig, events: EventsConfig, fps: float, frame_size: tuple[int, int]
) -> Recorder:
    """The recorder from its two config sections, to run on the loop's thread (benchmarks, tools)."""
    return Recorder(recording, events, fps, frame_size)


def start_recorder(
    recording: RecordingConfig, events: EventsConfig, fps: float, frame_size: tuple[int, int], *, live: bool = True
) -> RecorderThread:
    """The recording sink the app runs: a :class:`Recorder` on its own thread, fed through a bounded queue that
    drops the oldest frame when the recorder falls behind a ``live`` source, and otherwise waits for room."""
    core = Recorder(recording, events, fps, frame_size)
    return RecorderThread(core, queue_capacity(frame_size, fps), drop_when_full=live)
