"""What the loop is doing right now, for the live view and MQTT: the newest frame, its faces, face events, stats.

:class:`LiveFeed` is a pipeline sink that keeps a reference to the newest annotated frame and its faces (no copy,
no encoding: sources hand out a new image per frame, and the loop is done with it once the sinks have it) and
turns the faces into track events (a face appears, its shown label changes, it leaves). Readers on other threads
(web server, MQTT publisher) take what they need under a short lock and do their own encoding and I/O.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fer_edge.record.diskspace import FINISHED_RECORDING
from fer_edge.record.tracklog import TRACK_END_AFTER_S, TrackTransitions
from fer_edge.types import Face, Frame

if TYPE_CHECKING:
    from fer_edge.pipeline import RunStats
    from fer_edge.serve.switches import Switches

log = logging.getLogger(__name__)

EVENTS_KEPT = 200
FPS_WINDOW_S = 10.0  # fps and per-stage ms are averaged over about this much recent time
DISK_CHECK_INTERVAL_S = 5.0
MTIME_SETTLED_S = 1.0  # a folder's mtime this old is past the file system's timestamp granularity


@dataclass(frozen=True)
class TrackEvent:
    """A face appeared (``start``), its shown label changed (``change``) or it left (``end``)."""

    seq: int
    kind: str
    track: int
    label: str | None
    score: float | None
    box: tuple[int, int, int, int]
    t: float  # wall-clock seconds
    frame: int

    def as_dict(self) -> dict:
        return {
            "seq": self.seq,
            "type": self.kind,
            "track": self.track,
            "label": self.label,
            "score": None if self.score is None else round(self.score, 3),
            "box": list(self.box),
            "t": round(self.t, 3),
            "frame": self.frame,
        }


class TrackChanges:
    """Turns each frame's tracked faces into start / change / end events."""

    def __init__(self, end_after_s: float = TRACK_END_AFTER_S):
        self._tracks: TrackTransitions[tuple[float | None, tuple[int, int, int, int]]] = TrackTransitions(end_after_s)

    def update(self, frame: Frame, faces: list[Face], wall: float, next_seq: Callable[[], int]) -> list[TrackEvent]:
        events = []
        for face in faces:
            if face.track_id is None:
                continue
            shown = face.shown
            label, score = (shown.shown_label, shown.score) if shown is not None else (None, None)
            box = (face.box.x, face.box.y, face.box.w, face.box.h)
            kind = self._tracks.see(face.track_id, label, frame.timestamp, (score, box))
            if kind is not None:
                events.append(TrackEvent(next_seq(), kind, face.track_id, label, score, box, wall, frame.index))
        for track in self._tracks.ended(frame.timestamp):
            score, box = track.last
            events.append(TrackEvent(next_seq(), "end", track.track, track.label, score, box, wall, frame.index))
        return events

    def finish(self, frame_index: int, wall: float, next_seq: Callable[[], int]) -> list[TrackEvent]:
        """An end event for every track still open (the camera is lost: nobody is seen any more)."""
        return [
            TrackEvent(next_seq(), "end", track.track, track.label, *track.last, wall, frame_index)
            for track in self._tracks.finish()
        ]


def face_summary(face: Face) -> dict:
    shown = face.shown
    return {
        "track": face.track_id,
        "label": shown.shown_label if shown is not None else None,
        "score": round(shown.score, 3) if shown is not None else None,
        "box": face.box.as_list(),
    }


def finished_videos(directory: Path | None) -> list[Path]:
    """Finished recordings (``<stem>.mp4``, never a ``.part`` being written), newest first; regular files only,
    never a link (a link named like a recording could point anywhere)."""
    if directory is None:
        return []
    try:
        with os.scandir(directory) as entries:
            paths = [
                Path(entry.path)
                for entry in entries
                if FINISHED_RECORDING.match(entry.name) and entry.name.endswith(".mp4") and _regular(entry)
            ]
    except OSError:
        return []
    return sorted(paths, key=lambda p: p.name, reverse=True)


def _regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


class RecorderState(Protocol):
    """What the stats read of the recording sink (:class:`~fer_edge.record.worker.RecorderThread`)."""

    @property
    def recording(self) -> bool: ...  # a video segment is open
    @property
    def dropped(self) -> int: ...  # frames dropped because the recorder fell behind


def _no_run() -> RunStats | None:
    return None


def blank(frame: Frame) -> Frame:
    """A black frame of ``frame``'s size in its place: what the live view shows where a face may be sharp."""
    return Frame(np.zeros_like(frame.image), frame.index, frame.timestamp, anonymized=True)


class LiveFeed:
    """Pipeline sink: the newest frame, faces and track events, and the stats readers ask for.

    ``info``: fixed facts for the stats (model, runtime, detector). ``recordings_dir``: where finished recordings
    are listed (None: recording off). ``recorder``: the recording sink, asked whether a segment is open and how
    many frames it dropped. ``switches``: the runtime switches, reported in the stats. ``run_stats()``: the
    loop's live counters (None before it runs). Consumers (web server, MQTT publisher) are
    closed with the feed.
    """

    def __init__(
        self,
        *,
        info: dict | None = None,
        recordings_dir: Path | None = None,
        recorder: RecorderState | None = None,
        switches: Switches | None = None,
        run_stats: Callable[[], RunStats | None] | None = None,
        events_kept: int = EVENTS_KEPT,
        end_after_s: float = TRACK_END_AFTER_S,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ):
        self.info = dict(info or {})
        self.recordings_dir = recordings_dir
        self.recorder = recorder
        self.switches = switches
        self.consumers: list = []  # objects with close()
        self.extra_stats: dict[str, Callable[[], dict]] = {}  # name -> its stats, e.g. mqtt's connection
        self._run_stats = run_stats or _no_run
        self._cond = threading.Condition()
        self._seq = 0
        self._event_seq = 0
        self._frame: Frame | None = None
        self._faces: list[Face] = []
        self._events: deque[TrackEvent] = deque(maxlen=events_kept)
        self._tracks = TrackChanges(end_after_s)
        self._clock = monotonic_clock
        self._started = monotonic_clock()
        self._first_frame_at: float | None = None
        self._samples: deque[tuple[float, int, dict[str, float]]] = deque()
        self._stats_lock = threading.Lock()
        self._disk: tuple[float, int | None] = (float("-inf"), None)
        self._finished: tuple[int, list[Path]] = (-1, [])  # (the folder's mtime, its finished recordings)
        self._closed = False
        if switches is not None:
            switches.listen(self._switched)

    # --- the loop's side -------------------------------------------------------------------------

    def write(self, frame: Frame, faces: list[Face]) -> None:
        events = self._tracks.update(frame, faces, time.time(), self._next_event_seq)
        with self._cond:
            if self._first_frame_at is None:
                self._first_frame_at = self._clock()
            if not frame.anonymized and self.switches is not None and self.switches["privacy"]:
                # made before privacy was switched on, and the camera may be lost before a frame replaces it
                frame = blank(frame)
            self._frame, self._faces = frame, faces
            self._seq += 1
            self._events.extend(events)
            self._cond.notify_all()

    def source_lost(self) -> None:
        """The camera is lost: its last faces are gone (the state says nobody; their tracks end), its last frame
        stays on show."""
        with self._cond:
            index = self._frame.index if self._frame is not None else 0
            self._events.extend(self._tracks.finish(index, time.time(), self._next_event_seq))
            self._faces = []
            self._seq += 1
            self._cond.notify_all()

    def _switched(self, name: str, on: bool) -> None:
        """Privacy switched on: the frame on show was taken before and may show faces, and while the camera is lost
        no frame comes to replace it; a blank one of its size stands in for it until the loop's next frame."""
        if name != "privacy" or not on:
            return
        with self._cond:
            if self._frame is None:
                return
            self._frame = blank(self._frame)
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        for consumer in reversed(self.consumers):
            try:
                consumer.close()
            except Exception as exc:  # noqa: BLE001 - the others still close; the recording is not at stake
                log.warning("closing %s failed: %s", type(consumer).__name__, exc)

    def _next_event_seq(self) -> int:
        self._event_seq += 1
        return self._event_seq

    # --- readers, any thread ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def latest(self) -> tuple[int, Frame | None, list[Face]]:
        """(sequence number, newest frame, its faces); the number grows by one per frame."""
        with self._cond:
            return self._seq, self._frame, self._faces

    def wait_newer(self, seq: int, timeout: float) -> int:
        """Wait up to ``timeout`` s for a frame after ``seq``; the newest sequence number."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq or self._closed, timeout)
            return self._seq

    def events_since(self, seq: int = 0) -> list[TrackEvent]:
        """The events after ``seq``; all those kept when ``seq`` lies past the newest event, as a reader's does
        after a restart began the count again."""
        with self._cond:
            if seq > self._event_seq:
                seq = 0
            return [event for event in self._events if event.seq > seq]

    def disk_free_bytes(self) -> int | None:
        checked, free = self._disk
        now = time.monotonic()
        if self.recordings_dir is not None and now - checked >= DISK_CHECK_INTERVAL_S:
            try:
                free = shutil.disk_usage(self.recordings_dir).free
            except OSError:
                free = None
            self._disk = (now, free)
        return free

    def finished_count(self) -> int:
        return len(self.finished())

    def finished(self) -> list[Path]:
        """:func:`finished_videos`, listed again only when the folder changed (a stat per reader, not a listing):
        every open live page polls the stats and the recordings, and a folder may hold 20,000 of them."""
        if self.recordings_dir is None:
            return []
        try:
            changed = os.stat(self.recordings_dir).st_mtime_ns
        except OSError:
            return []
        seen, listing = self._finished
        if changed != seen:
            listing = finished_videos(self.recordings_dir)
            # A change within the file system's clock tick of the listing would leave the mtime as it was:
            # a listing that close to the last change is not kept.
            self._finished = (changed, listing) if time.time() - changed / 1e9 > MTIME_SETTLED_S else (-1, listing)
        return listing

    def stats(self) -> dict:
        """Counters since start, and fps and ms per stage over the last seconds; fps is None until the frames
        span a whole window (a part of one would show the start-up burst of a camera's buffered frames)."""
        _, _, faces = self.latest()
        run = self._run_stats()
        frames = run.frames if run is not None else 0
        stage_seconds = dict(run.stage_seconds) if run is not None else {}
        now = self._clock()
        with self._stats_lock:
            samples = self._samples
            if not samples or now - samples[-1][0] >= 0.5:
                samples.append((now, frames, stage_seconds))
            while len(samples) > 2 and now - samples[1][0] >= FPS_WINDOW_S:
                samples.popleft()
            then, frames_then, seconds_then = samples[0]
        if now - then < 1.0 and self._first_frame_at is not None:  # no window yet: since the first frame
            then, frames_then, seconds_then = self._first_frame_at, 0, {}
        span, count = now - then, frames - frames_then
        fps = count / span if span > 0 and count > 0 else 0.0
        window_full = self._first_frame_at is not None and now - self._first_frame_at >= FPS_WINDOW_S
        stage_ms = {
            name: 1000.0 * (s - seconds_then.get(name, 0.0)) / count if count else 0.0
            for name, s in stage_seconds.items()
        }
        stage_ms["total"] = sum(stage_ms.values())
        stats = {
            "fps": round(fps, 2) if window_full else None,
            "frames": frames,
            "frames_with_faces": run.frames_with_faces if run is not None else 0,
            "faces_total": run.faces if run is not None else 0,
            "faces": len(faces),
            "current_faces": [face_summary(face) for face in faces],
            "uptime_s": round(now - self._started, 1),
            "ms_per_frame": {name: round(ms, 2) for name, ms in stage_ms.items()},
            "stage_seconds": {name: round(s, 4) for name, s in stage_seconds.items()},
            **self.info,
            "disk_free_bytes": self.disk_free_bytes(),
            "recording": {
                "active": self.recorder is not None and self.recorder.recording,
                "finished": self.finished_count(),
                "dropped_frames": self.recorder.dropped if self.recorder is not None else 0,
            },
            "switches": self.switches.as_dict() if self.switches is not None else {},
        }
        for name, provider in self.extra_stats.items():
            stats[name] = provider()
        return stats
