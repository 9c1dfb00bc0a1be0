"""The events log: one JSON line per processed frame, written crash-safely beside the video segments.

``events.jsonl`` in the output directory is always the file being written. Each line is flushed to the OS as it is
written, so after a crash at most the last line is partial (``read_events`` skips it). On rotation the file is
closed and renamed to ``<stem>.jsonl``, the stem of the video segment it belongs to. The stem of the open file is
kept in ``.events.jsonl.stem`` so that a leftover ``events.jsonl`` can be given its proper name after a crash; a
marker that does not hold a recording stem (a power cut can leave NUL bytes) is ignored and the name made from the
time of the first event instead.

Line format::

    {"t": 1795631400.123, "ts": 12.345, "frame": 42, "faces": [{"box": [x, y, w, h], "track": 3, "label": "happy",
      "score": 0.91, "scores": {"angry": 0.01, ...}, "raw_label": "happy", "smoothed": {"angry": 0.02, ...}}]}

``t`` is the wall clock when the line was written, ``ts`` the frame's own timestamp (capture time; a file's
presentation time), which the video's timeline follows. ``label``/``score`` are what was shown (smoothed when
available; ``label`` is ``?`` for a face shown as unsure, its calibrated score below ``model.unsure_below``),
``scores``/``raw_label`` the model's calibrated output,
``smoothed`` is present only when the face has a smoothed prediction. The first line of a file that belongs to a
video segment also has ``video_ts``, the timestamp of the segment's first frame: with a pre-roll the video starts
before its first events line, and a moment's place in the video is ``ts - video_ts``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from fer_edge.record.clock import SegmentClock
from fer_edge.record.diskspace import FINISHED_RECORDING, create_private, fsync_directory
from fer_edge.record.heap import release_free_memory
from fer_edge.record.naming import make_stem, stem_time_or_none
from fer_edge.types import Face, Frame

log = logging.getLogger(__name__)

CURRENT_NAME = "events.jsonl"
STEM_MARKER_NAME = ".events.jsonl.stem"
MARKER_TMP_NAME = STEM_MARKER_NAME + ".tmp"
TAKE_BACK_NAME = ".events.jsonl.takeback"
MAX_MARKER_BYTES = 256  # a stem is 20 characters; anything longer is not one


def face_record(face: Face) -> dict:
    shown = face.shown
    record = {
        "box": face.box.as_list(),
        "track": face.track_id,
        "label": shown.shown_label if shown else None,
        "score": round(shown.score, 4) if shown else None,
        "scores": face.prediction.as_dict() if face.prediction else None,
        "raw_label": face.prediction.label if face.prediction else None,
    }
    if face.smoothed is not None:
        record["smoothed"] = face.smoothed.as_dict()
    return record


def event_line(
    t: float, frame_index: int, faces: list[Face], ts: float | None = None, video_ts: float | None = None
) -> str:
    line: dict = {"t": round(t, 3)}
    if ts is not None:
        line["ts"] = round(ts, 3)
    if video_ts is not None:
        line["video_ts"] = round(video_ts, 3)
    line["frame"] = frame_index
    line["faces"] = [face_record(f) for f in faces]
    return json.dumps(line, separators=(",", ":"))


def numbered_events(path: str | os.PathLike) -> Iterator[tuple[int, dict | None]]:
    """``(line number, event)`` for each non-blank line of one events file; the event is None where
    the line is not a JSON object (a crash leaves a partial last line)."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            yield number, event if isinstance(event, dict) else None


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the events of one events file in order, skipping a truncated last line (left by a crash).

    A broken line anywhere else is skipped too, with a warning, so that one bad line never hides a whole file.
    """
    broken: int | None = None
    for number, event in numbered_events(path):
        if broken is not None:
            log.warning("%s:%d: skipped a line that is not a JSON object", path, broken)
            broken = None
        if event is None:
            broken = number  # quiet if it is the last line: that is what a crash leaves
        else:
            yield event


def _finished_path(directory: Path, stem: str) -> Path:
    """``<stem>.jsonl``; when something else already holds that name, a new stem of its own, so that the file is a
    recording that the disk guard, retention and the review index all know (a ``<stem>.1.jsonl`` would be none)."""
    path = directory / f"{stem}.jsonl"
    if not path.exists():
        return path
    named_at = stem_time_or_none(stem)
    sequence = int(stem.rsplit("-", 1)[1]) + 1 if named_at is not None else 1
    path = directory / f"{make_stem(directory, time.time() if named_at is None else named_at, sequence)}.jsonl"
    log.warning("events: %s.jsonl is taken; finished as %s instead", stem, path.name)
    return path


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    # no fsync: this runs on the frame loop, and a marker lost to power loss only costs the recovered file its name
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(create_private(tmp), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)  # a full disk must not leave a stray temporary file behind
        raise


class EventsLog:
    """Writes ``events.jsonl`` line by line and renames it to ``<stem>.jsonl`` on rotation.

    A write error (full disk) never raises: the line is dropped, one warning is logged, and ``retry()`` (called by the
    recorder every few seconds) reopens the file in append mode. A finished file holds whole lines only, and one
    that holds none is removed rather than kept empty. The current file is always named after the stem of the lines
    in it (the marker's): when its rename fails (a read-only file system), it keeps that stem, and no line of
    another stem is added until it has been renamed.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / CURRENT_NAME
        self._marker = directory / STEM_MARKER_NAME
        self._file: TextIO | None = None
        self.stem: str | None = None  # the stem new lines belong to
        self._file_stem: str | None = None  # the stem of the lines in events.jsonl (the marker's)
        self._write_failed = False  # since the current file was started: it may end in part of a line
        self._failing = False
        self.dropped_lines = 0

    @property
    def is_open(self) -> bool:
        return self.stem is not None

    def open(self, stem: str) -> None:
        self.stem = stem
        try:
            if self._file_stem not in (None, stem):
                self._finish_file()  # left by a rename that failed: its lines must keep their own stem
            _write_atomically(self._marker, stem)
            self._file_stem = stem
            if self.path.exists():  # reopened after a write error, which can leave part of a line behind
                _cut_partial_last_line(self.path)
            self._file = open(create_private(self.path, append=True), "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            self._fail(exc)

    def write(
        self, t: float, frame_index: int, faces: list[Face], ts: float | None = None, video_ts: float | None = None
    ) -> None:
        if self._file is None:
            self.dropped_lines += 1
            return
        try:
            self._file.write(event_line(t, frame_index, faces, ts, video_ts) + "\n")
        except OSError as exc:
            self.dropped_lines += 1
            self._write_failed = True
            self._fail(exc)
            return
        if self._failing:
            self._failing = False
            log.info("events: writing %s again (%d lines dropped meanwhile)", self.path, self.dropped_lines)

    def retry(self) -> None:
        """Reopen after a write error (the disk may have room again)."""
        if self.stem is not None and self._file is None:
            self.open(self.stem)

    def rotate(self, new_stem: str) -> Path | None:
        """Finish the current file (if any) as ``<stem>.jsonl`` and start a new ``events.jsonl`` for ``new_stem``."""
        finished = self.close()
        self.open(new_stem)
        return finished

    def take_back(self, previous: Path) -> bool:
        """Move the lines of the current file to the end of ``previous`` (the file the last rotation finished,
        without their ``video_ts``) and go on writing there, under its stem; False, with nothing changed, when
        that cannot be done (the current file then goes on).

        The move is journalled in ``.events.jsonl.takeback`` (both stems and the size of ``previous`` before it),
        written and synced first and removed last, so that start-up can undo or finish a move a crash cut short
        (``settle_take_back``): each line ends up in one file, never in both."""
        stem = self.stem
        if stem is None or self._file_stem != stem or previous.stem == stem or not previous.is_file():
            return False
        self._close_file()
        journal = self.directory / TAKE_BACK_NAME
        size = previous.stat().st_size
        try:
            _write_journal(journal, {"into": previous.stem, "size": size, "from": stem})
            if self.path.exists():
                _cut_partial_last_line(self.path)
                _append_without_video_ts(self.path, previous)
            _write_atomically(self._marker, previous.stem)
            os.replace(previous, self.path)
        except OSError as exc:
            log.debug("events: cannot move the lines of %s back to %s (%s)", stem, previous.name, exc)
            with contextlib.suppress(OSError):
                _undo_take_back(previous, size, self._marker, stem)
                _remove_journal(journal, self.directory)
            self.open(stem)
            return False
        fsync_directory(self.directory)
        with contextlib.suppress(OSError):
            _remove_journal(journal, self.directory)
        self._file_stem = None
        self._write_failed = False
        self.open(previous.stem)
        return True

    def close(self) -> Path | None:
        """Close and rename the current file to ``<stem>.jsonl``; returns the finished path (None if nothing)."""
        if self.stem is None:
            return None
        self.stem = None
        self._close_file()
        try:
            return self._finish_file()
        except OSError as exc:
            log.warning("events: cannot finish %s as %s.jsonl (%s); kept as it is", self.path, self._file_stem, exc)
            return None

    def _close_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._write_failed = True
            log.warning("events: cannot flush %s: %s", self.path, exc)
        try:
            self._file.close()
        except OSError:
            self._write_failed = True
        self._file = None

    def drop(self) -> None:
        """Close without renaming (the file was deleted with its folder); the next write needs ``open`` again."""
        self.stem = self._file_stem = None
        self._write_failed = False
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _finish_file(self) -> Path | None:
        """Rename the closed ``events.jsonl`` to its stem, whole lines only; remove it if it holds none."""
        stem = self._file_stem
        if stem is None or not self.path.exists():
            self._file_stem = None
            return None
        if self._write_failed:
            _cut_partial_last_line(self.path)
        if self.path.stat().st_size == 0:
            self.path.unlink()
            target = None
        else:
            target = _finished_path(self.directory, stem)
            os.replace(self.path, target)
        self._file_stem = None
        self._write_failed = False
        self._marker.unlink(missing_ok=True)
        fsync_directory(self.directory)
        return target

    def _fail(self, exc: OSError) -> None:
        if not self._failing:
            log.warning("events: cannot write %s (%s); dropping event lines until it works again", self.path, exc)
        self._failing = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the buffered tail cannot be written either
            self._file = None


class EventsSink:
    """The events sink: one line per frame into an :class:`EventsLog` that rotates with the segments.

    When the MP4 sink has opened a segment since the last frame, the events move to a file of that stem, so a
    video and its events share a name; without video they rotate every ``segment_seconds`` on their own.
    ``open_video_stem()`` names the video segment being written: while it is the events file's, the events wait
    for it to roll over (at a lower video frame rate, on the next frame it takes).
    """

    def __init__(
        self,
        clock: SegmentClock,
        *,
        wall_clock: Callable[[], float] = time.time,
        open_video_stem: Callable[[], str | None] = lambda: None,
    ):
        self._clock = clock
        self._wall = wall_clock
        self._open_video_stem = open_video_stem
        self.log = EventsLog(clock.directory)
        self._start_ts: float | None = None
        self._seen_video_stem: str | None = None  # the newest video segment's stem when this sink last looked
        self._previous: tuple[Path, float | None] | None = None  # the file the last rotation finished, its start

    @property
    def stem(self) -> str | None:
        return self.log.stem

    @property
    def open_path(self) -> Path | None:
        return self.log.path if self.log.is_open else None

    def write(self, frame: Frame, faces: list[Face], wall: float | None = None) -> None:
        """One line for ``frame``, stamped ``wall`` (when it was handed to the recorder; default now)."""
        ts = frame.timestamp
        self._take_back_unwritten_video()
        stem = video_ts = None
        if self._clock.video_stem != self._seen_video_stem:
            stem = self._seen_video_stem = self._clock.video_stem  # a video segment opened with this frame
            video_ts = self._clock.video_start_ts
        elif not self.log.is_open or (
            self._clock.full(self._start_ts, ts) and self._open_video_stem() != self.log.stem
        ):
            stem = self._clock.next_stem()
        if stem is not None:
            start_ts, finished = self._start_ts, self.log.rotate(stem)
            self._previous = (finished, start_ts) if finished is not None else None
            self._start_ts = ts
            if finished is not None and video_ts is None:
                release_free_memory()  # the video sink trims at its own segments; here no video rotated
        self.log.write(self._wall() if wall is None else wall, frame.index, faces, ts, video_ts)

    def _take_back_unwritten_video(self) -> None:
        """A video segment failed before any of it was kept: its events go back where they were before it opened,
        so that each retry on a failing disk does not leave an events file without its video."""
        stem, self._clock.unwritten_video_stem = self._clock.unwritten_video_stem, None
        if stem is None:
            return
        if stem == self._clock.video_stem and stem != self._seen_video_stem:
            self._seen_video_stem = stem  # it failed with the frame it opened at: no events file was started for it
        elif stem == self.log.stem and self._previous is not None:
            previous, start_ts = self._previous
            if self.log.take_back(previous):
                log.debug(
                    "events: %s went back to %s (its video failed before any of it was kept)", stem, previous.name
                )
                self._start_ts = start_ts
            self._previous = None

    def close(self) -> None:
        self._take_back_unwritten_video()  # the video closed just before may have kept nothing
        self._previous = None
        self.log.close()

    def restart(self) -> None:
        """Frame timestamps went back: the file rotates at the next write."""
        self._start_ts = float("-inf")

    def drop(self) -> None:
        self._previous = None
        self.log.drop()

    def disk_checked(self, has_room: bool) -> None:
        self.log.retry()  # after a write error the disk may have room again, whatever the video floor says


def recover_leftover_events(
    directory: Path, fallback_stem: Callable[[float], str], open_video_stem: str | None = None
) -> Path | None:
    """Give a leftover ``events.jsonl`` (from a crash) its ``<stem>.jsonl`` name; returns the new path.

    The stem comes from the marker file written when the events file was opened. When the marker is missing or does
    not hold a recording stem, a file whose first line starts a video segment (``video_ts``) takes
    ``open_video_stem``, the stem of the video segment the crash left open (that has no events file yet); otherwise
    ``fallback_stem(t)`` makes one from the time of the first event (else the file's mtime).
    A partial last line is cut off. A stale temporary marker file is removed.
    """
    current = directory / CURRENT_NAME
    marker = directory / STEM_MARKER_NAME
    _remove_stale_marker_tmp(directory / MARKER_TMP_NAME)
    try:
        settle_take_back(directory)
    except OSError as exc:  # the leftover file is still named below: at worst some of its lines are kept twice
        log.warning("events: cannot settle the move recorded in %s (%s)", TAKE_BACK_NAME, exc)
    if not current.exists():
        marker.unlink(missing_ok=True)
        return None
    _cut_partial_last_line(current)
    stem = _read_marker(marker) or _fallback_stem(current, fallback_stem, open_video_stem)
    target = _finished_path(directory, stem)
    os.replace(current, target)
    marker.unlink(missing_ok=True)
    fsync_directory(directory)
    log.info("events: recovered %s from an interrupted run as %s", CURRENT_NAME, target.name)
    return target


def _append_without_video_ts(source: Path, target: Path) -> None:
    """The whole lines of ``source`` appended to ``target`` and synced, each without ``video_ts``: their video
    was never written, and in ``target`` they follow lines of another start."""
    with open(target, "a", encoding="utf-8") as out:
        for _, event in numbered_events(source):
            if event is not None:
                event.pop("video_ts", None)
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _write_journal(journal: Path, move: dict) -> None:
    """Written in place and synced before the move starts: a journal cut short by a crash was never acted on."""
    with open(create_private(journal), "w", encoding="utf-8") as f:
        f.write(json.dumps(move))
        f.flush()
        os.fsync(f.fileno())
    fsync_directory(journal.parent)


def _remove_journal(journal: Path, directory: Path) -> None:
    journal.unlink(missing_ok=True)
    fsync_directory(directory)


def _undo_take_back(previous: Path, size: int, marker: Path, stem: str) -> None:
    """``previous`` back to its ``size`` before the move, the marker back to the current file's ``stem``."""
    if previous.stat().st_size > size:
        os.truncate(previous, size)
    _write_atomically(marker, stem)


def _read_journal(journal: Path) -> tuple[str, int, str] | None:
    """``(stem moved into, its size before, stem moved from)``; None when the journal holds no such move."""
    try:
        with open(journal, "rb") as f:
            move = json.loads(f.read(MAX_MARKER_BYTES + 1))
    except (OSError, ValueError):
        return None
    if not isinstance(move, dict):
        return None
    into, size, moved_from = move.get("into"), move.get("size"), move.get("from")
    stems = [_stem_or_none(s.encode()) if isinstance(s, str) else None for s in (into, moved_from)]
    if None in stems or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    return str(into), size, str(moved_from)


def settle_take_back(directory: Path) -> None:
    """Start-up: undo a move of events back to the file before (``EventsLog.take_back``) that a crash cut short
    before that file took the place of ``events.jsonl``, or finish one cut short after; remove its journal.

    The marker tells a move in progress from a journal that outlived its move (its removal lost): while a move is
    in progress it holds one of the move's two stems, and then the earlier file is still there only if it has not
    yet taken the place of ``events.jsonl``, which is there throughout. Anything else is left as it is: at worst
    a line kept twice, never one lost.
    """
    journal = directory / TAKE_BACK_NAME
    if not os.path.lexists(journal):
        return
    if not journal.is_file():  # not what take_back writes: someone else's
        log.warning("events: %s is not a file; left as it is", TAKE_BACK_NAME)
        return
    move = _read_journal(journal)
    marker = directory / STEM_MARKER_NAME
    if move is None:
        log.info("events: removed %s, which holds no move (one cut short before it began)", TAKE_BACK_NAME)
    elif (marked := _read_marker(marker)) not in (move[0], move[2]):
        log.info("events: removed %s, left by a move that had finished", TAKE_BACK_NAME)
    else:
        into, size, moved_from = move
        previous, current = directory / f"{into}.jsonl", directory / CURRENT_NAME
        if previous.exists() and current.exists():
            _undo_take_back(previous, size, marker, moved_from)
            log.info(
                "events: undid moving the events of %s back to %s, cut short by a crash", moved_from, previous.name
            )
        elif current.exists():  # the earlier file has taken its place, with the lines moved
            if marked != into:
                _write_atomically(marker, into)
            log.info("events: finished moving the events of %s back to %s.jsonl after a crash", moved_from, into)
    _remove_journal(journal, directory)


def _remove_stale_marker_tmp(tmp: Path) -> None:
    if os.path.lexists(tmp):
        _remove_quietly(tmp)
        log.info("events: removed %s left by an interrupted marker write", tmp.name)


def _read_marker(marker: Path) -> str | None:
    """The stem in ``marker``; None when there is none or it is not a recording stem (then it is removed).

    Only a stem is accepted: the marker is never used as a path, so it cannot move the events file anywhere.
    """
    if not os.path.lexists(marker):
        return None
    data = None
    try:
        if marker.is_file():  # not a FIFO, device or folder, which could block or be huge
            with open(marker, "rb") as f:
                data = f.read(MAX_MARKER_BYTES + 1)
    except OSError as exc:
        log.warning(
            "events: cannot read %s (%s); naming the leftover events file from its first event", marker.name, exc
        )
        return None
    stem = _stem_or_none(data)
    if stem is None:
        log.warning(
            "events: %s holds no recording stem (%s); ignored and removed, the leftover events file is "
            "named from its first event",
            marker.name,
            repr(data[:40]) if data is not None else "not a file",
        )
        _remove_quietly(marker)
    return stem


def _stem_or_none(data: bytes | None) -> str | None:
    if data is None or len(data) > MAX_MARKER_BYTES:
        return None
    try:
        stem = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return stem if FINISHED_RECORDING.fullmatch(stem + ".jsonl") else None


def _fallback_stem(current: Path, fallback_stem: Callable[[float], str], open_video_stem: str | None) -> str:
    if (
        open_video_stem is not None
        and FINISHED_RECORDING.fullmatch(open_video_stem + ".jsonl")
        and not (current.parent / f"{open_video_stem}.jsonl").exists()
        and "video_ts" in next(read_events(current), {})
    ):
        return open_video_stem
    first_t = next((e["t"] for e in read_events(current) if _plausible_time(e.get("t"))), None)
    return fallback_stem(first_t if first_t is not None else current.stat().st_mtime)


def _plausible_time(t: object) -> bool:
    """A Unix time ``time.gmtime`` accepts (a corrupt line can hold 1e300 or NaN)."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 <= t < 1e11


def _cut_partial_last_line(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "r+b") as f:
        tail_start = max(0, size - 65536)
        f.seek(tail_start)
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        newline = tail.rfind(b"\n")
        keep = tail_start + newline + 1 if newline >= 0 else (0 if tail_start == 0 else size)
        if keep < size:
            f.truncate(keep)
            log.info("events: cut a partial last line (%d bytes) from %s", size - keep, path.name)
