"""Face tracking across frames: stable ids from greedy IoU matching with a centroid-distance fallback.

Pure Python. Every call to ``update`` (a frame with detection) or ``predict`` (a frame without) is one frame
step; a track's box is extrapolated per frame step at the constant velocity of its last two matches, so the
tracker works the same whether detection runs on every frame or on every n-th.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fer_edge.types import Box, Detection, Track

if TYPE_CHECKING:
    from fer_edge.config import TrackingConfig

log = logging.getLogger(__name__)

# A detection unmatched by IoU may still continue a track if its centre lies within this many track box sizes
# (max of width and height) of the track's predicted centre and its size is within MAX_SIZE_RATIO of the track's.
CENTROID_DISTANCE_FACTOR = 1.0
MAX_SIZE_RATIO = 2.0


@dataclass(slots=True)
class _Track:
    track_id: int
    detection: Detection  # last match
    frame: int  # frame step of the last match
    previous_box: Box | None = None  # the match before that, for the velocity
    previous_frame: int = 0
    missed: int = 0  # update() calls in a row without a match

    @property
    def box(self) -> Box:
        return self.detection.box

    def at(self, frame: int) -> Detection:
        """The carried detection at ``frame``: moved at constant velocity from the last two matches, same size."""
        if self.previous_box is None or frame <= self.frame:
            return self.detection
        steps = self.frame - self.previous_frame
        ahead = (frame - self.frame) / steps
        dx = round((self.box.x - self.previous_box.x) * ahead)
        dy = round((self.box.y - self.previous_box.y) * ahead)
        return self.detection.moved(dx, dy)

    def box_at(self, frame: int) -> Box:
        return self.at(frame).box

    def matched(self, detection: Detection, frame: int) -> None:
        self.previous_box, self.previous_frame = self.box, self.frame
        self.detection, self.frame = detection, frame
        self.missed = 0


def _centre_distance(a: Box, b: Box) -> float:
    (ax, ay), (bx, by) = a.centre, b.centre
    return math.hypot(ax - bx, ay - by)


def _similar_size(a: Box, b: Box) -> bool:
    side_a, side_b = max(a.w, a.h, 1), max(b.w, b.h, 1)
    return max(side_a, side_b) / min(side_a, side_b) <= MAX_SIZE_RATIO


class IouTracker:
    """Gives each face a stable integer id (1, 2, ...) while it stays in view.

    A track survives up to ``max_missed`` consecutive ``update`` calls without a matching detection and ends
    at the next one; ``predict`` (frames where detection did not run) never counts as a miss.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._frame = -1

    @classmethod
    def from_config(cls, tracking: TrackingConfig) -> IouTracker:
        return cls(tracking.iou_threshold, tracking.max_missed)

    @property
    def active_ids(self) -> set[int]:
        return set(self._tracks)

    def update(self, detections: list[Detection]) -> list[Track]:
        """Assign a track id to each of this frame's detections, in their order."""
        self._frame += 1
        predicted = {track_id: track.box_at(self._frame) for track_id, track in self._tracks.items()}
        boxes = [detection.box for detection in detections]
        assigned = self._match(predicted, boxes)

        for index, detection in enumerate(detections):
            track_id = assigned.get(index)
            if track_id is None:
                track_id = self._next_id
                self._next_id += 1
                self._tracks[track_id] = _Track(track_id, detection, self._frame)
                assigned[index] = track_id
                log.debug("track %d starts at %s", track_id, detection.box)
            else:
                self._tracks[track_id].matched(detection, self._frame)

        matched_ids = set(assigned.values())
        for track_id in list(self._tracks):
            if track_id in matched_ids:
                continue
            track = self._tracks[track_id]
            track.missed += 1
            if track.missed > self.max_missed:
                del self._tracks[track_id]
                log.debug("track %d ends after %d missed frames", track_id, track.missed - 1)
        return [Track(assigned[index], detection) for index, detection in enumerate(detections)]

    def predict(self) -> list[Track]:
        """The carried box of each track the latest detection confirmed, for a frame where detection did not run.

        Tracks the detector has lost stay alive for re-association but are not carried: a face that left
        the picture stops being drawn at the next detection, not ``max_missed`` detections later.
        """
        self._frame += 1
        return [
            Track(track_id, track.at(self._frame), detected=False)
            for track_id, track in sorted(self._tracks.items())
            if track.missed == 0
        ]

    def carried(self) -> list[Box]:
        """Each live track's box at the current frame, without stepping: after ``update``, tracks missed by
        this frame's detection appear at their extrapolated place (e.g. to keep anonymising a face the detector
        lost for a frame)."""
        frame = max(self._frame, 0)
        return [track.box_at(frame) for _, track in sorted(self._tracks.items())]

    def reset(self) -> None:
        """End every track now (a scene cut); ids keep counting up, so no id names two faces."""
        if self._tracks:
            log.debug("tracks %s end at a scene cut", sorted(self._tracks))
        self._tracks.clear()

    def _match(self, predicted: dict[int, Box], boxes: list[Box]) -> dict[int, int]:
        """Detection index -> track id: greedy by IoU (ties by centre distance), then by centre distance."""
        pairs = []
        for track_id, track_box in predicted.items():
            for index, box in enumerate(boxes):
                pairs.append((box.iou(track_box), _centre_distance(box, track_box), track_id, index))

        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for iou, _, track_id, index in sorted(pairs, key=lambda p: (-p[0], p[1])):
            if iou < self.iou_threshold:
                break
            if track_id not in used_tracks and index not in assigned:
                assigned[index] = track_id
                used_tracks.add(track_id)

        # Fast motion: the box moved further than its own overlap between two detections.
        for _, distance, track_id, index in sorted(pairs, key=lambda p: p[1]):
            if track_id in used_tracks or index in assigned:
                continue
            track_box = predicted[track_id]
            if distance <= CENTROID_DISTANCE_FACTOR * max(track_box.w, track_box.h) and _similar_size(
                track_box, boxes[index]
            ):
                assigned[index] = track_id
                used_tracks.add(track_id)
        return assigned


class NullTracker:
    """No tracking: each detection frame's faces stand alone (no ids), carried unchanged until the next one."""

    active_ids: set[int] = set()

    def __init__(self) -> None:
        self._last: list[Detection] = []

    def update(self, detections: list[Detection]) -> list[Track]:
        self._last = list(detections)
        return [Track(None, detection) for detection in detections]

    def predict(self) -> list[Track]:
        return [Track(None, detection, detected=False) for detection in self._last]

    def carried(self) -> list[Box]:
        return []

    def reset(self) -> None:
        self._last = []
