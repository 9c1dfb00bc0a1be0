"""The review index: an SQLite database (``index.sqlite3``, WAL) beside the recordings.

It holds what the review page asks for: each recording (start, duration, frames, bytes, faces, thumbnail), each track
event (start / change / end, with the recording that holds it and the offset into it) and per-minute counts of the
faces shown with each expression. It is only ever derived from the files: the events files stay the crash-safe
record, and :meth:`RecordingIndex.sync` makes the database match them, so a database that is missing, behind,
half-written by a killed process or unreadable is repaired by the next sync.

A sync follows the open ``events.jsonl`` from where it left off (with the duration and thumbnail of its video when
that finished first), finishes a recording once its files are renamed (track ends, video duration, thumbnail),
reindexes a finished recording whose files differ from what was indexed, and forgets recordings whose files are gone
(the disk floor, retention, an operator). Each recording's rows change in one transaction. Thumbnails are
``.thumbs/<stem>.jpg``, cut from the recorded MP4.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fer_edge.record.clocksteps import CLOCK_STEPS_NAME, ClockSteps, corrected, read_clock_steps
from fer_edge.record.diskspace import FINISHED_RECORDING, FOLDER_MODE, create_private, finished_recordings
from fer_edge.record.events import CURRENT_NAME, STEM_MARKER_NAME
from fer_edge.record.naming import PART_SUFFIX, stem_time
from fer_edge.record.tracklog import TrackEvent, TrackLog, VideoInfo, probe_video, write_thumbnail

log = logging.getLogger(__name__)

DB_NAME = "index.sqlite3"
THUMBS_DIR = ".thumbs"
RESCAN_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    stem TEXT PRIMARY KEY,
    video TEXT,               -- <stem>.mp4 when the recording has video
    start REAL NOT NULL,      -- wall clock of its first frame
    duration_s REAL,
    frames INTEGER NOT NULL,
    bytes INTEGER,            -- of the MP4, as indexed
    jsonl_bytes INTEGER,      -- of the events file, as indexed
    faces INTEGER NOT NULL,
    thumbnail INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stem TEXT NOT NULL,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    track INTEGER NOT NULL,
    label TEXT,
    score REAL,
    box TEXT NOT NULL,
    frame INTEGER NOT NULL,
    offset_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_stem ON events (stem);
CREATE INDEX IF NOT EXISTS events_t ON events (t);
CREATE TABLE IF NOT EXISTS minutes (
    stem TEXT NOT NULL,
    minute INTEGER NOT NULL,  -- Unix time of the minute's start
    label TEXT NOT NULL,
    count INTEGER NOT NULL,   -- faces shown with this label, summed over the minute's frames
    PRIMARY KEY (stem, minute, label)
);
CREATE INDEX IF NOT EXISTS minutes_minute ON minutes (minute);
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the index at ``path`` (made 0640 if new), in WAL mode with the schema in place."""
    if not path.exists():
        os.close(create_private(path, append=True))
    db = sqlite3.connect(path, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # a power cut may lose the newest rows; the next sync adds them back
    db.executescript(SCHEMA)
    return db


@dataclass(frozen=True)
class _Files:
    video: Path | None
    events: Path | None

    def signature(self) -> tuple[int | None, int | None]:
        return (
            self.video.stat().st_size if self.video is not None else None,
            self.events.stat().st_size if self.events is not None else None,
        )


@dataclass(frozen=True)
class _OpenVideo:
    size: int
    info: VideoInfo | None
    thumbnail: bool


class RecordingIndex:
    """The index of ``directory``; use it from one thread (the indexer's), open others with :func:`connect`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / DB_NAME
        self.thumbs = directory / THUMBS_DIR
        self._following: dict[str, TrackLog] = {}  # stems whose events file this process reads as it grows
        self._scanned: tuple[int, str | None] | None = None  # (folder mtime, open stem) at the last scan
        self._scanned_at = -math.inf
        self._finished: set[str] = set()
        self._no_thumbnail: set[str] = set()  # stems whose thumbnail failed, said once
        self._no_room: set[str] = set()  # stems whose thumbnail failed for want of room: tried again at each sync
        self._open_videos: dict[str, _OpenVideo] = {}  # finished videos whose events file is still being written
        self._clock_steps: ClockSteps = {}
        self._clock_steps_file: tuple[int, int] | None = None  # its (mtime_ns, size) when read
        try:
            self.db = connect(self.path)
        except sqlite3.OperationalError:
            raise  # a full disk, a lock, an I/O error: the file may be fine, and is tried again
        except sqlite3.DatabaseError as exc:  # not a database (a torn copy, a stray file): rebuild it from the files
            log.warning("index: %s is unreadable (%s); rebuilding it from the recordings", self.path, exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.db = connect(self.path)
        try:
            opened = os.stat(self.path)
        except OSError:
            self.db.close()
            raise
        self._identity = (opened.st_dev, opened.st_ino)

    def moved(self) -> bool:
        """Whether the database file this index writes is no longer the one at its path (deleted with its folder,
        which the recorder makes again, or replaced): its rows would go where nobody reads them."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != self._identity

    def close(self) -> None:
        self.db.close()

    def thumbnail_path(self, stem: str) -> Path:
        return self.thumbs / f"{stem}.jpg"

    # --- keeping up with the files ------------------------------------------------------------------

    def sync(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Make the index match the files in the folder now.

        The finished recordings are looked at again when the folder changed (a file made, renamed or deleted
        changes its modification time; appending to the open events file does not), when another segment
        opened, and once a minute; otherwise a sync costs a stat and the read of what was appended.
        ``keep_going`` is asked between recordings: a rebuild stops early when it says no, to go on next time.
        """
        self._read_clock_steps()
        open_stem = self._open_stem()  # first: a segment finished meanwhile is then among the finished ones
        stamp = (self.directory.stat().st_mtime_ns, open_stem)
        # coarse timestamps (FAT keeps 2 s) can hide a change: a new open segment or a minute also rescan
        if stamp != self._scanned or time.monotonic() - self._scanned_at > RESCAN_S or self._no_room:
            self._scanned = stamp if self._scan(open_stem, keep_going) else None
            self._scanned_at = time.monotonic()
        if open_stem is not None and open_stem not in self._finished:
            try:
                self._follow(open_stem)
            except OSError as exc:
                log.debug("index: skipped the open %s for now (%s)", open_stem, exc)

    def _read_clock_steps(self) -> None:
        """Take in the clock steps noted since the last sync: the rows of the stems they name are read again."""
        try:
            found = os.stat(self.directory / CLOCK_STEPS_NAME)
            seen: tuple[int, int] | None = (found.st_mtime_ns, found.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._clock_steps_file:
            return
        self._clock_steps_file = seen
        steps = read_clock_steps(self.directory)
        changed = {
            stem for stem in steps.keys() | self._clock_steps.keys() if steps.get(stem) != self._clock_steps.get(stem)
        }
        self._clock_steps = steps
        if not changed:
            return
        with self.db:
            for stem in changed:
                self._following.pop(stem, None)
                self._delete(stem)
        self._scanned = None

    def _scan(self, open_stem: str | None, keep_going: Callable[[], bool]) -> bool:
        """Index the finished recordings that changed, forget the ones gone; False if one must be tried again."""
        # a video finished before its events file (presence-triggered video) is followed until that is too
        finished = {stem: files for stem, files in finished_recordings(self.directory) if stem != open_stem}
        self._finished = set(finished)
        rows = self.db.execute("SELECT stem, bytes, jsonl_bytes, complete FROM recordings")
        indexed = {row[0]: row[1:] for row in rows}
        for stem in indexed.keys() - finished.keys() - {open_stem}:
            self.forget(stem)
        complete = True
        for stem, paths in reversed(finished.items()):  # newest first: what a rebuild should show first
            if not keep_going():
                return False
            names = {p.name for p in paths}
            files = _Files(
                self.directory / f"{stem}.mp4" if f"{stem}.mp4" in names else None,
                self.directory / f"{stem}.jsonl" if f"{stem}.jsonl" in names else None,
            )
            if files.video is None and files.events is None:
                continue  # only a .broken video: nothing to play or list
            try:
                signature = files.signature()
                row = indexed.get(stem)
                if row is not None and row[2] and tuple(row[:2]) == signature:
                    continue
                self._finish(stem, files, signature)
            except OSError as exc:  # deleted while being read
                log.debug("index: skipped %s for now (%s)", stem, exc)
                complete = False
        return complete

    def forget(self, stem: str) -> None:
        """Drop ``stem``'s rows and thumbnail (its files are gone)."""
        self._following.pop(stem, None)
        self._open_videos.pop(stem, None)
        self._no_thumbnail.discard(stem)
        self._no_room.discard(stem)
        with self.db:
            self._delete(stem)
        self.thumbnail_path(stem).unlink(missing_ok=True)

    def _delete(self, stem: str) -> None:
        for table in ("events", "minutes", "recordings"):
            self.db.execute(f"DELETE FROM {table} WHERE stem = ?", (stem,))  # noqa: S608 - fixed table names

    def _open_stem(self) -> str | None:
        """The open events file's stem (from its marker, no listing); else the newest ``.part`` video's."""
        marked = marker_stem(self.directory)
        if marked is not None:
            return marked
        stems = open_stems(self.directory)
        return stems[0] if stems else None

    def _follow(self, stem: str) -> None:
        """Read what was added to the open events file; the recording's row says it is not finished."""
        fresh = stem not in self._following
        if fresh:
            self._following[stem] = TrackLog(clock_steps=self._clock_steps.get(stem))
        track_log = self._following[stem]
        events: list[TrackEvent] = []
        counts: Counter[tuple[int, str]] = Counter()
        try:
            current = open(self.directory / CURRENT_NAME, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            current = None
        if current is not None:
            with current:
                if self._open_stem() != stem:
                    return  # rotated since the marker was read: this may be the next segment's file
                events, counts = track_log.read_open(current)
        video, video_changed = self._open_video(stem, track_log)
        if not (fresh or events or counts or video_changed):
            return
        info, thumbnail = (video.info, video.thumbnail) if video is not None else (None, False)
        try:
            with self.db:
                if fresh:
                    self._delete(stem)
                self._add(stem, events, counts)
                self._put_recording(
                    stem, f"{stem}.mp4", track_log, info, (None, None), complete=False, thumbnail=thumbnail
                )
        except BaseException:
            # the rows were rolled back, but the log has read past their lines: read the file again next time
            del self._following[stem]
            raise

    def _open_video(self, stem: str, track_log: TrackLog) -> tuple[_OpenVideo | None, bool]:
        """The finished video of the recording whose events file is open (presence-triggered video ends before
        its events file), probed and with its thumbnail, once for each size it has; and whether that is new."""
        video = self.directory / f"{stem}.mp4"
        try:
            size = video.stat().st_size
        except FileNotFoundError:
            return None, False
        known = self._open_videos.get(stem)
        if known is not None and known.size == size:
            return known, False
        thumbnail = self._thumbnail(stem, video, track_log.most_faces_offset)
        known = self._open_videos[stem] = _OpenVideo(size, self._probe(video), thumbnail)
        return known, True

    def _finish(self, stem: str, files: _Files, signature: tuple[int | None, int | None]) -> None:
        """Index a finished recording: go on from where following it stopped, or read it all again."""
        self._open_videos.pop(stem, None)
        track_log = self._following.pop(stem, None)
        fresh = track_log is None or files.events is None or track_log.offset > (signature[1] or 0)
        if fresh or track_log is None:
            track_log = TrackLog(clock_steps=self._clock_steps.get(stem))
        events: list[TrackEvent] = []
        counts: Counter[tuple[int, str]] = Counter()
        if files.events is not None:
            events, counts = track_log.read(files.events)
        events += track_log.finish()
        video = self._probe(files.video) if files.video is not None else None
        thumbnail = False
        if files.video is not None:
            thumbnail = self._thumbnail(stem, files.video, track_log.most_faces_offset)
        with self.db:
            if fresh:
                self._delete(stem)
            self._add(stem, events, counts)
            name = files.video.name if files.video is not None else None
            # a thumbnail that found no room leaves the row to be finished again once there is
            complete = stem not in self._no_room
            self._put_recording(stem, name, track_log, video, signature, complete=complete, thumbnail=thumbnail)

    def _probe(self, video: Path) -> VideoInfo | None:
        try:
            return probe_video(video)
        except OSError:
            raise  # gone meanwhile: the next scan tries again
        except Exception as exc:  # noqa: BLE001 - a video FFmpeg cannot read is still listed, from its events
            log.warning("index: cannot read %s (%s); listed from its events only", video.name, exc)
            return None

    def _thumbnail(self, stem: str, video: Path, offset_s: float | None) -> bool:
        try:
            self.thumbs.mkdir(FOLDER_MODE, exist_ok=True)
            written = write_thumbnail(video, offset_s or 0.0, self.thumbnail_path(stem))
        except Exception as exc:  # noqa: BLE001 - a file PyAV cannot read still gets listed, without a thumbnail
            # said once a recording: a full disk fails it again at each sync until space returns
            if stem not in self._no_thumbnail:
                log.warning("index: no thumbnail for %s (%s)", video.name, exc)
            self._no_thumbnail.add(stem)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._no_room.add(stem)
            return False
        self._no_thumbnail.discard(stem)
        self._no_room.discard(stem)
        return written

    def _add(self, stem: str, events: Iterable[TrackEvent], counts: Counter[tuple[int, str]]) -> None:
        self.db.executemany(
            "INSERT INTO events (stem, t, kind, track, label, score, box, frame, offset_s) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (stem, e.t, e.kind, e.track, e.label, e.score, ",".join(map(str, e.box)), e.frame, round(e.offset_s, 3))
                for e in events
            ],
        )
        self.db.executemany(
            "INSERT INTO minutes (stem, minute, label, count) VALUES (?,?,?,?) "
            "ON CONFLICT (stem, minute, label) DO UPDATE SET count = count + excluded.count",
            [(stem, minute, label, n) for (minute, label), n in counts.items()],
        )

    def _put_recording(
        self,
        stem: str,
        video_name: str | None,
        track_log: TrackLog,
        video: VideoInfo | None,
        signature: tuple[int | None, int | None],
        *,
        complete: bool,
        thumbnail: bool = False,
    ) -> None:
        start = track_log.first_t
        if start is None:  # no events: its name's time, on the clock as it read after the steps noted for it
            start = corrected(stem_time(stem), self._clock_steps.get(stem, []))
        duration = video.duration_s if video is not None else round(track_log.last_offset, 3)
        frames = video.frames if video is not None else track_log.lines
        self.db.execute(
            "INSERT OR REPLACE INTO recordings (stem, video, start, duration_s, frames, bytes, jsonl_bytes, faces, "
            "thumbnail, complete) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (stem, video_name, start, duration, frames, *signature, track_log.faces(), thumbnail, complete),
        )


def open_stems(directory: Path) -> list[str]:
    """Stems of the recording being written, the events file's (from its marker) first, then ``.part`` videos'."""
    marked = marker_stem(directory)
    stems = [marked] if marked is not None else []
    parts = sorted(p.name[: -len(PART_SUFFIX)] for p in directory.glob(f"*{PART_SUFFIX}"))
    stems += [stem for stem in reversed(parts) if _is_stem(stem) and stem not in stems]
    return stems


def marker_stem(directory: Path) -> str | None:
    """The stem the open events file's marker names, while there is an open events file."""
    if not (directory / CURRENT_NAME).exists():
        return None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        stem = (directory / STEM_MARKER_NAME).read_text(encoding="utf-8").strip()
        if _is_stem(stem):
            return stem
    return None


def _is_stem(text: str) -> bool:
    return bool(FINISHED_RECORDING.fullmatch(f"{text}.jsonl"))
