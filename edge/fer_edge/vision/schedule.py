"""Which detection each frame gets, and what a privacy scan found (no OpenCV, no runtime)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fer_edge.types import Box, Detection


class DetectionPlan(Enum):
    """What detection one frame gets."""

    FULL = "full"  # a whole-frame scan
    SWEEP = "sweep"  # privacy between whole-frame scans: a cheap pass over the whole frame, and the tracked faces
    REGIONS = "regions"  # a search in the windows around the tracked faces
    CARRY = "carry"  # none: the tracker carries the boxes


@dataclass
class DetectionSchedule:
    """Which detection a frame gets: a whole-frame scan, a search in the windows around the tracked faces, or
    none (the tracker carries the boxes).

    Every ``every_n_frames``-th frame detects; it scans the whole frame when no face is tracked, when a track
    ended since the last detection, or when the last scan is ``full_scan_interval_s`` old (new faces); else it
    searches windows of ``region_factor`` times each tracked face's side. ``region_factor=0`` always scans.
    While privacy is on every frame is looked at whole (a face walking in between scans would be recorded
    sharp): a whole-frame scan when privacy has just come on, at a cut and every ``full_scan_interval_s``, a
    sweep (the detector's cheap whole-frame pass) in between.
    """

    every_n_frames: int = 1
    full_scan_interval_s: float = 1.0
    region_factor: float = 0.0
    _frames: int = 0
    _last_scan: float = -math.inf
    _tracked: int = 0
    _privacy: bool = False

    def next(self, t: float, tracked: int, *, privacy: bool = False, cut: bool = False) -> DetectionPlan:
        """The detection for the frame at ``t`` s, ``tracked`` faces before it; ``privacy`` on; ``cut``: a new shot."""
        frame, self._frames = self._frames, self._frames + 1
        switched_on, self._privacy = privacy and not self._privacy, privacy
        if t < self._last_scan:  # the clock went back (a replay looped)
            self._last_scan = -math.inf
        due = t - self._last_scan >= self.full_scan_interval_s
        if privacy or cut:
            scan, otherwise = cut or switched_on or due, DetectionPlan.SWEEP
        elif frame % self.every_n_frames:
            return DetectionPlan.CARRY
        else:
            ended = tracked < self._tracked
            scan, otherwise = not tracked or ended or not self.region_factor or due, DetectionPlan.REGIONS
        self._tracked = tracked
        if scan:
            self._last_scan = t
            return DetectionPlan.FULL
        return otherwise


@dataclass(frozen=True)
class FaceScan:
    """What a detection found while privacy is on."""

    faces: list[Detection]  # sure faces: tracked, classified, blurred
    unsure: list[Box]  # faces below the detector's threshold: blurred on this frame, nothing else
