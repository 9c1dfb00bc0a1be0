"""What the review index reads from one recording: track events and per-minute counts from its events file,
duration and frames from its MP4, and a thumbnail cut from the MP4.

The events file holds one line per frame (see :mod:`fer_edge.record.events`); :class:`TrackLog` follows it as it
grows, reading complete lines only, and turns the faces into track events: a track appears (``start``), its shown
label changes (``change``), it is not seen for :data:`TRACK_END_AFTER_S` or its file ends (``end``). Offsets into
the video are the frames' own timestamps less the first one's: the MP4's timeline starts at its first frame.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from fer_edge.record.clocksteps import corrected
from fer_edge.record.diskspace import create_private
from fer_edge.record.pyav import pyav

log = logging.getLogger(__name__)

TRACK_END_AFTER_S = 1.5  # a track not seen for this long (frame time) has ended: here and in the live view
THUMB_WIDTH = 320
THUMB_QUALITY = 80

Last = TypeVar("Last")


@dataclass(frozen=True, slots=True)
class OpenTrack(Generic[Last]):
    """A track as :class:`TrackTransitions` keeps it: its shown ``label``, the frame time it was ``seen`` last,
    and ``last``, what its reader wants to say of it when it ends."""

    track: int
    label: str | None
    seen: float
    last: Last


class TrackTransitions(Generic[Last]):
    """The rules the live view and the review index share: a track is new (``start``), its shown label differs
    from its last one (``change``), or it has not been seen for ``end_after_s`` of frame time (``end``)."""

    def __init__(self, end_after_s: float = TRACK_END_AFTER_S):
        self.end_after_s = end_after_s
        self._tracks: dict[int, OpenTrack[Last]] = {}

    def see(self, track_id: int, label: str | None, ts: float, last: Last) -> str | None:
        """The track was seen at frame time ``ts``: ``start``, ``change`` or None."""
        known = self._tracks.get(track_id)
        self._tracks[track_id] = OpenTrack(track_id, label, ts, last)
        if known is None:
            return "start"
        return "change" if known.label != label else None

    def ended(self, now: float) -> list[OpenTrack[Last]]:
        """The tracks not seen for ``end_after_s`` before frame time ``now``, forgotten."""
        if self._tracks and now < max(track.seen for track in self._tracks.values()):
            # the frame clock went back (a looped file): time since seen counts from now
            self._tracks = {i: replace(track, seen=min(track.seen, now)) for i, track in self._tracks.items()}
        gone = [track for track in self._tracks.values() if now - track.seen > self.end_after_s]
        for track in gone:
            del self._tracks[track.track]
        return gone

    def finish(self) -> list[OpenTrack[Last]]:
        """Every track still open, forgotten."""
        gone = list(self._tracks.values())
        self._tracks.clear()
        return gone


@dataclass(frozen=True)
class TrackEvent:
    """One track event as the index stores it: wall time ``t``, ``offset_s`` into its recording's video."""

    kind: str  # start, change or end
    track: int
    label: str | None
    score: float | None
    box: tuple[int, ...]
    t: float
    frame: int
    offset_s: float


@dataclass(frozen=True)
class _LastSeen:
    """A track's face in the newest line that had it: what its events say of it."""

    score: float | None
    box: tuple[int, ...]
    t: float
    frame: int
    offset_s: float

    def event(self, kind: str, track_id: int, label: str | None) -> TrackEvent:
        return TrackEvent(kind, track_id, label, self.score, self.box, self.t, self.frame, self.offset_s)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    duration_s: float


MAX_TIME = 1e11  # no clock reads this far (year 5138); a damaged line can hold 1e300
SQLITE_INTEGERS = range(-(2**63), 2**63)


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            return None
        if math.isfinite(number):
            return number
    return None


def _integer(value: object) -> int | None:
    """``value`` if it is an integer SQLite can store."""
    if isinstance(value, int) and not isinstance(value, bool) and value in SQLITE_INTEGERS:
        return value
    return None


class TrackLog:
    """Follows one events file from byte ``offset``: new complete lines become track events and minute counts."""

    def __init__(
        self, end_after_s: float = TRACK_END_AFTER_S, clock_steps: list[tuple[float | None, float]] | None = None
    ):
        self._clock_steps = clock_steps or []  # the clock steps its lines were written before (clocksteps)
        self._fallen_back = 0  # of the steps back it was written across (``until`` None), those its lines are past
        self._last_raw: tuple[float, float | None] | None = None  # the last line's time and timestamp, as written
        self.offset = 0
        self.lines = 0
        self.first_t: float | None = None
        self.first_ts: float | None = None
        self.last_offset = 0.0
        self.tracks_seen: set[int] = set()
        self.most_faces = 0
        self.most_faces_offset: float | None = None
        self._tracks: TrackTransitions[_LastSeen] = TrackTransitions(end_after_s)
        self._last_ts = float("-inf")

    def read(self, path: Path) -> tuple[list[TrackEvent], Counter[tuple[int, str]]]:
        """Events and ``(minute, label) -> face-frames`` in the lines added to ``path`` since the last read."""
        with open(path, "rb") as f:
            return self.read_open(f)

    def read_open(self, f: BinaryIO) -> tuple[list[TrackEvent], Counter[tuple[int, str]]]:
        """:meth:`read` from a file already open (for reading), from this log's offset."""
        f.seek(self.offset)
        data = f.read()
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += complete
        events: list[TrackEvent] = []
        counts: Counter[tuple[int, str]] = Counter()
        for raw in data[:complete].splitlines():
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(line, dict):
                self._line(line, events, counts)
        return events, counts

    def finish(self) -> list[TrackEvent]:
        """The file is finished: every track still open ends where it was last seen."""
        return [track.last.event("end", track.track, track.label) for track in self._tracks.finish()]

    def faces(self) -> int:
        """Faces in the recording: its tracks, or the most faces in one frame when tracking is off."""
        return max(len(self.tracks_seen), self.most_faces if not self.tracks_seen else 0)

    def _offset(self, ts: float) -> float:
        return max(0.0, ts - (self.first_ts if self.first_ts is not None else ts))

    def _corrected(self, t: float, ts: float | None) -> float:
        """``t`` on the clock as it read after the steps noted for this file. A step back it was written across
        counts up to the line where the wall clock falls back against the frame timestamps by half that step or
        more: the first line written after it."""
        last, self._last_raw = self._last_raw, (t, ts)
        across = [step for until, step in self._clock_steps if until is None]
        if last is not None and self._fallen_back < len(across):
            ran = ts - last[1] if ts is not None and last[1] is not None else 0.0
            if t - last[0] - ran < across[self._fallen_back] / 2:
                self._fallen_back += 1
        steps, passed = [], 0
        for until, step in self._clock_steps:
            if until is None and passed < self._fallen_back:
                passed += 1
                continue
            steps.append((until, step))
        return corrected(t, steps)

    def _line(self, line: dict, events: list[TrackEvent], counts: Counter[tuple[int, str]]) -> None:
        t = _number(line.get("t"))
        if t is None or not 0 <= t < MAX_TIME:
            return
        ts = _number(line.get("ts"))
        if self._clock_steps:
            t = self._corrected(t, ts)
        ts = t if ts is None else ts  # files written before frame timestamps were logged
        ts = max(ts, self._last_ts)
        self._last_ts = ts
        if self.first_t is None:
            # the video's first frame: with a pre-roll it came before this line, and the recording starts there
            video_ts = _number(line.get("video_ts"))
            self.first_ts = ts if video_ts is None else min(ts, video_ts)
            self.first_t = t - (ts - self.first_ts)
        self.lines += 1
        offset = self.last_offset = self._offset(ts)
        frame = _integer(line.get("frame"))
        frame = -1 if frame is None else frame
        faces = [face for face in line.get("faces") or [] if isinstance(face, dict)]
        if len(faces) > self.most_faces:
            self.most_faces, self.most_faces_offset = len(faces), offset
        minute = int(t // 60) * 60
        for face in faces:
            label = face.get("label") if isinstance(face.get("label"), str) else None
            if label is not None:
                counts[(minute, label)] += 1
            track_id = _integer(face.get("track"))
            if track_id is None:
                continue
            score = _number(face.get("score"))
            box = tuple(v for v in face.get("box") or [] if isinstance(v, int))
            seen = _LastSeen(score, box, t, frame, offset)
            kind = self._tracks.see(track_id, label, ts, seen)
            if kind is not None:
                events.append(seen.event(kind, track_id, label))
            self.tracks_seen.add(track_id)
        events += [track.last.event("end", track.track, track.label) for track in self._tracks.ended(ts)]


def probe_video(path: Path) -> VideoInfo:
    """Frames and duration of an MP4's video, from its packets (nothing decoded)."""
    av = pyav()
    frames, first, end = 0, None, 0.0
    with av.open(str(path)) as container:
        if not container.streams.video:
            return VideoInfo(0, 0.0)
        stream = container.streams.video[0]
        base = float(stream.time_base)
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            frames += 1
            start = packet.pts * base
            first = start if first is None else min(first, start)
            end = max(end, start + (packet.duration or 0) * base)
    return VideoInfo(frames, round(max(0.0, end - (first or 0.0)), 3))


def write_thumbnail(video: Path, offset_s: float, target: Path) -> bool:
    """A JPEG of the frame at ``offset_s`` in ``video`` (already anonymised when privacy is on) at ``target``."""
    import cv2

    av = pyav()
    image = None
    with av.open(str(video)) as container:
        if not container.streams.video:
            return False
        stream = container.streams.video[0]
        base = float(stream.time_base)
        if offset_s > 0:
            container.seek(int(offset_s / base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="bgr24")
            if frame.pts is None or frame.pts * base >= offset_s - 1e-3:
                break
    if image is None:
        return False
    height, width = image.shape[:2]
    if width > THUMB_WIDTH:
        size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    if not ok:
        return False
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(create_private(tmp), "wb") as f:
            f.write(data.tobytes())
            f.flush()
            # on disk before it takes the name: after a power cut the index must not count an empty file as made
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written file left behind to fill it further
        raise
    return True
