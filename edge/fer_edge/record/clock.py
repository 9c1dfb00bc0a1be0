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

MAX_NAME_LEAD_S = 86400.0  # how far names may run ahead of the clock to keep recording order


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
        self._behind = False  # said that the clock is behind the newest name, until it catches up
        self.stem: str | None = None  # the newest stem handed out
        self.video_stem: str | None = None  # the stem of the newest video segment that opened (set by its sink)
        self.video_start_ts: float | None = None  # the timestamp of that segment's first frame (its pre-roll's)
        # a video segment that failed before any of it was kept (set by its sink, taken by the events sink): its
        # events go back to the file before it, so that a retry on a failing disk leaves no events-only file
        self.unwritten_video_stem: str | None = None

    def full(self, start_ts: float | None, ts: float) -> bool:
        """Whether a segment whose first frame was at ``start_ts`` (None: no frame yet) is full at ``ts``."""
        return start_ts is not None and ts - start_ts >= self.segment_seconds - self.half_frame

    def next_stem(self) -> str:
        """A new stem, unused in the folder, named after the wall clock and sorting after every earlier one (unless
        that one is named more than ``MAX_NAME_LEAD_S`` ahead of the clock)."""
        wall = self._wall()
        if wall < self._newest_stem_time - MAX_NAME_LEAD_S:
            # A name that far ahead was made while the clock was ahead: names chained after it would stay wrong
            # (and read as young) until the clock catches up, which may take a year.
            log.warning(
                "recording: the newest recording's name (%s UTC) is more than a day ahead of the clock (%s UTC); "
                "naming recordings by the clock again, so they sort before it",
                _utc(self._newest_stem_time),
                _utc(wall),
            )
            self._newest_stem_time = float("-inf")
        if wall < self._newest_stem_time:
            # The wall clock stepped back (a Pi has no RTC; NTP steps it). The disk guard deletes by name,
            # oldest first, so names must keep recording order: name it a second after the newest instead.
            if not self._behind:
                log.warning(
                    "recording: the clock (%s UTC) is behind the newest recording's name; naming recordings "
                    "after it to keep names in recording order until it catches up (events keep the clock's time)",
                    _utc(wall),
                )
            self._behind = True
            wall = self._newest_stem_time + 1
        else:
            self._behind = False
        stem = make_stem(self.directory, wall, self._sequence)
        self._sequence = int(stem.rsplit("-", 1)[1]) + 1
        self._newest_stem_time = max(self._newest_stem_time, stem_time(stem))
        self.stem = stem
        return stem


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
