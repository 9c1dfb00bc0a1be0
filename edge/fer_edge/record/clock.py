"""The segment clock: when a recording segment is full and what the next one is called.

The MP4 sink and the events sink share one clock, so a segment's video and its events carry the same stem
(``<stem>.mp4`` beside ``<stem>.jsonl``) and every stem is handed out once, in recording order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from fer_edge.record.diskspace import finished_recordings
from fer_edge.record.naming import make_stem, stem_time

log = logging.getLogger(__name__)


class SegmentClock:
    """Hands out stems ``YYYYmmdd-HHMMSS-NNNN`` (UTC) for ``directory`` and says when a segment that started at
    one frame timestamp is full at another: ``segment_seconds`` long, give or take half a frame at ``fps``."""

    def __init__(
        self, directory: Path, segment_seconds: float, fps: float, *, wall_clock: Callable[[], float] = time.time
    ):
        self.directory = directory
        self.segment_seconds = segment_seconds
        self.half_frame = 0.5 / fps
        self._wall = wall_clock
        self._sequence = 1
        newest = finished_recordings(directory)
        self._newest_stem_time = stem_time(newest[-1][0]) if newest else float("-inf")
        self.stem: str | None = None  # the newest stem handed out
        self.video_stem: str | None = None  # the stem of the newest video segment that opened (set by its sink)
        self.video_start_ts: float | None = None  # the timestamp of that segment's first frame (its pre-roll's)

    def full(self, start_ts: float | None, ts: float) -> bool:
        """Whether a segment whose first frame was at ``start_ts`` (None: no frame yet) is full at ``ts``."""
        return start_ts is not None and ts - start_ts >= self.segment_seconds - self.half_frame

    def next_stem(self) -> str:
        """A new stem, unused in the folder, named after the wall clock and sorting after every earlier one."""
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
        stem = make_stem(self.directory, wall, self._sequence)
        self._sequence = int(stem.rsplit("-", 1)[1]) + 1
        self._newest_stem_time = max(self._newest_stem_time, stem_time(stem))
        self.stem = stem
        return stem
