"""Retention: recordings older than ``recording.max_age_days`` are deleted, with their events, thumbnail and index
rows, and the thread that keeps the review index up to date and runs the retention check.

A recording's age is the time its name gives (UTC, when it started) and the time its files were last written; both
must be older than the limit, so a recording is never deleted while it could still be growing, and a clock that was
behind while it was written (a Pi without its network time yet) does not delete it early. A name still ahead of the
clock does not count: it was set after one made while the clock was ahead, to keep recording order (see
:class:`~fer_edge.record.clock.SegmentClock`), and says nothing of the recording's age. The open segment is never
deleted. The disk floor (:mod:`fer_edge.record.diskspace`) still deletes the oldest recordings first when space
runs short, whatever their age.

A Pi has no real-time clock: it may record for a while at a boot time hours, days or decades behind before the
network time steps the clock. Files written then carry that clock's times and would read as that much older, so
retention would delete them early (at once, when the clock read 1970). The thread that applies retention watches the
wall clock against the monotonic one, and when the wall clock steps, re-dates the recordings this run wrote before the
step by the step (:class:`ClockWatch`), so that their age counts from when they were really written. A recording
last written before 2024 (a clock never set, seen after a restart) has no known age: it counts from when retention
first sees it with the clock set; so does one last written more than a day ahead of the clock (a clock that ran
ahead, set back after the run that wrote it ended), which would otherwise be kept that much longer.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fer_edge.record.clocksteps import note_clock_step
from fer_edge.record.diskspace import CLOCK_SET_BY, WRITTEN_AHEAD_S, finished_recordings
from fer_edge.record.index import RecordingIndex, marker_stem, open_stems
from fer_edge.record.naming import stem_time
from fer_edge.types import Face, Frame

if TYPE_CHECKING:
    from fer_edge.config import Config

log = logging.getLogger(__name__)

DAY_S = 86400.0
SYNC_INTERVAL_S = 1.0
RETENTION_INTERVAL_S = 3600.0
CLOCK_STEP_S = 60.0  # a wall clock that moves this much against the monotonic one was stepped, not slewed
FINAL_SYNC_S = 5.0  # what is left is indexed at the next start


class Retention:
    """Deletes the recordings in ``directory`` older than ``max_age_days`` (None: none), oldest first."""

    def __init__(
        self,
        directory: Path,
        max_age_days: float | None,
        index: RecordingIndex | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.directory = directory
        self.max_age_days = max_age_days
        self.index = index
        self._wall = wall_clock

    def check(self) -> list[str]:
        """Delete what is too old now; the stems deleted."""
        if self.max_age_days is None:
            return []
        now = self._wall()
        cutoff = now - self.max_age_days * DAY_S
        keep = set(open_stems(self.directory))
        old = []
        unset, ahead = [], []
        for stem, files in finished_recordings(self.directory):
            written = _last_written(files)
            if stem in keep or written is None:
                continue
            if written < CLOCK_SET_BY <= now:
                unset.append(stem)
                _touch(files, now)
                continue
            if written > now + WRITTEN_AHEAD_S:  # on a clock that ran ahead, by a run that never saw it set back
                ahead.append(stem)
                _touch(files, now)
                continue
            named = stem_time(stem)
            age_from = max(written, named) if named <= now else written
            if age_from < cutoff:
                old.append((age_from, stem, files))
        if unset:
            log.warning(
                "retention: %d recording(s), %s to %s, were written while the clock was not set; their age "
                "counts from now",
                len(unset),
                unset[0],
                unset[-1],
            )
        if ahead:
            log.warning(
                "retention: %d recording(s), %s to %s, were written while the clock was more than a day ahead; "
                "their age counts from now",
                len(ahead),
                ahead[0],
                ahead[-1],
            )
        deleted, refused = [], []
        for _, stem, files in sorted(old):
            kept = []
            for path in files:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    kept.append(f"{path.name} ({exc.strerror or exc})")
            if kept:  # still there: listed, and tried again at the next check
                refused += kept
                continue
            if self.index is not None:
                self.index.forget(stem)
            deleted.append(stem)
        if refused:  # a file system turned read-only refuses every one: one line a check, not one a file
            log.warning("retention: cannot delete %d old file(s), first %s", len(refused), refused[0])
        if deleted:
            log.info(
                "retention: deleted %d recording(s) older than %g days, %s to %s",
                len(deleted),
                self.max_age_days,
                deleted[0],
                deleted[-1],
            )
        return deleted


def _touch(files: list[Path], moment: float) -> None:
    for path in files:
        _set_written(path, moment, "retention")


def _set_written(path: Path, moment: float, who: str) -> bool:
    """Give ``path`` the modification time ``moment``; whether it could."""
    try:
        os.utime(path, (moment, moment))
    except OSError as exc:
        log.warning("%s: cannot re-date %s (%s)", who, path, exc)
        return False
    return True


def _last_written(files: list[Path]) -> float | None:
    try:
        return max(path.stat().st_mtime for path in files)
    except OSError:
        return None


class ClockWatch:
    """Notices the wall clock stepping against the monotonic one, and moves the modification times of the
    recordings in ``directory`` written since it started, before the step, by the step. The steady clock is
    CLOCK_BOOTTIME: it counts a suspend, which is time that passed, not a step."""

    def __init__(
        self,
        directory: Path,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic_clock: Callable[[], float] | None = None,
        step_s: float = CLOCK_STEP_S,
    ):
        self.directory = directory
        self._wall = wall_clock
        self._monotonic = monotonic_clock or _steady_clock()
        self._step_s = step_s
        self._offset = self._wall() - self._monotonic()
        self._since = self._wall()  # on the clock as it read before the last step

    def check(self) -> float:
        """The step since the last check (0.0: none); the recordings written before it are re-dated."""
        wall = self._wall()
        offset = wall - self._monotonic()
        step = offset - self._offset
        if abs(step) < self._step_s:
            return 0.0
        self._offset = offset
        until = wall - step
        moved, stems = redate(self.directory, self._since, until, step)
        log.warning(
            "clock: the wall clock stepped by %+.0f s (%s UTC, now %s UTC); %d recording file(s) written before "
            "the step re-dated by as much, so that retention counts their age from when they were written",
            step,
            _utc(until),
            _utc(wall),
            moved,
        )
        open_stem = marker_stem(self.directory)  # the events file being written: its lines so far, before the step
        across = set()
        if open_stem is not None and step > 0:
            stems.add(open_stem)
        elif open_stem is not None:  # after a step back its lines repeat the times of those before
            stems.discard(open_stem)
            across.add(open_stem)
        if stems or across:  # the review lists them at their real times
            try:
                note_clock_step(self.directory, stems, until, step, across)
            except OSError as exc:  # a full disk: their files' ages are right, their listed times stay behind
                log.warning("clock: cannot note the step for the review index (%s)", exc)
        self._since += step
        return step


def _steady_clock() -> Callable[[], float]:
    boottime = getattr(time, "CLOCK_BOOTTIME", None)  # Linux; elsewhere a suspend may pass for a step
    if boottime is None:
        return time.monotonic
    return functools.partial(time.clock_gettime, boottime)


def redate(directory: Path, since: float, until: float, step: float) -> tuple[int, set[str]]:
    """Move the modification time of each recording file in ``directory`` last written within [since, until] by
    ``step`` seconds; how many were moved, and the stems they belong to."""
    moved, stems = 0, set()
    for stem, files in finished_recordings(directory):
        for path in files:
            try:
                written = path.stat().st_mtime
            except OSError:
                continue  # deleted meanwhile
            if since <= written <= until and _set_written(path, written + step, "clock"):
                moved += 1
                stems.add(stem)
    return moved, stems


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


class Housekeeper:
    """A thread that follows the recordings into the review index (every ``sync_interval_s``) and applies retention
    (at start, then every ``retention_interval_s``). It sits among the pipeline's sinks so that it is closed with
    them, after the recorder: its last sync sees the final segment."""

    def __init__(
        self,
        directory: Path,
        max_age_days: float | None,
        *,
        sync_interval_s: float = SYNC_INTERVAL_S,
        retention_interval_s: float = RETENTION_INTERVAL_S,
    ):
        self.directory = directory
        self.max_age_days = max_age_days
        self.sync_interval_s = sync_interval_s
        self.retention_interval_s = retention_interval_s
        self._stop = threading.Event()
        self._failing: set[str] = set()  # the kinds of work failing now, each said once
        self._clock_watch = ClockWatch(directory)  # here, before the recorder writes a file
        self._thread = threading.Thread(target=self._run, name="fer-edge-index", daemon=True)

    def start(self) -> Housekeeper:
        self._thread.start()
        return self

    def write(self, frame: Frame, faces: list[Face]) -> None:
        pass  # the files are its input, not the frames

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30.0)

    def _run(self) -> None:
        index: RecordingIndex | None = None
        watch = self._clock_watch
        next_retention = 0.0
        try:
            while True:
                self._attempt("watching the clock", watch.check)
                if index is not None and index.moved():
                    log.warning("index: %s was deleted or replaced; opening it again", index.path)
                    index.close()
                    index = None
                if index is None:  # a full disk or a failing card may refuse it for a while; retention goes on
                    opened = self._attempt("opening the index", lambda: RecordingIndex(self.directory))
                    index = opened if isinstance(opened, RecordingIndex) else None
                if time.monotonic() >= next_retention:
                    self._attempt("retention", Retention(self.directory, self.max_age_days, index).check)
                    next_retention = time.monotonic() + self.retention_interval_s
                if index is not None:
                    self._attempt("indexing", functools.partial(index.sync, lambda: not self._stop.is_set()))
                if self._stop.wait(self.sync_interval_s):
                    break
            # the sinks before it are closed, so the last segment is finished now; a stop waits for it a little
            until = time.monotonic() + FINAL_SYNC_S
            if index is not None:
                self._attempt("indexing", functools.partial(index.sync, lambda: time.monotonic() < until))
        finally:
            if index is not None:
                index.close()

    def _attempt(self, what: str, work: Callable[[], object]) -> object:
        """``work()``, or None when it raised: said once until that same work succeeds again."""
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - the index is derived and rebuilt; it must never stop recording
            if what not in self._failing:
                log.warning("index: %s failed (%s: %s); retrying", what, type(exc).__name__, exc)
            self._failing.add(what)
            return None
        if what in self._failing:
            log.info("index: %s works again", what)
        self._failing.discard(what)
        return result


def start_housekeeping(cfg: Config) -> list[Housekeeper]:
    """The index and retention thread for the recordings folder, started; none when nothing is recorded."""
    if not (cfg.recording.enabled or cfg.events.enabled):
        return []
    return [Housekeeper(Path(cfg.recording.output_dir), cfg.recording.max_age_days).start()]
