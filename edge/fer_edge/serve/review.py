"""The review side of the web server: the review page, the recordings, events and summary APIs read from the
review index (:mod:`fer_edge.record.index`), recordings served for playback with HTTP byte ranges, thumbnails.

``/review`` the page; ``/api/recordings?page=&per_page=&label=&day=YYYY-MM-DD&from=&to=`` (newest first, by when
they were made: a recording named on a clock that was then stepped goes where its corrected start puts it);
``/api/events?since=ID&recording=NAME&label=&from=&to=&limit=``; ``/api/summary?from=&to=&bucket_s=`` (faces shown
per expression per bucket); ``/recordings/NAME`` (inline, ranges; ``?download=1`` as an attachment);
``/thumbnails/STEM.jpg``. Times go out as ISO 8601 with the device's UTC offset; ``from``/``to`` take ISO 8601 or
Unix seconds. Without an index (recording off, or before its first sync) events come from the live feed.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import math
import os
import re
import sqlite3
import stat
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from fer_edge.record.clock import MAX_NAME_LEAD_S
from fer_edge.record.clocksteps import CLOCK_STEPS_NAME, ClockSteps, corrected, read_clock_steps
from fer_edge.record.diskspace import FINISHED_RECORDING
from fer_edge.record.index import DB_NAME, THUMBS_DIR
from fer_edge.record.naming import stem_time_or_none
from fer_edge.serve.ranges import UNSATISFIABLE, ByteRange, parse_range

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_THUMBNAIL_BYTES = 1_000_000  # a thumbnail is a few kB; never read an odd file whole
PER_PAGE, MAX_PER_PAGE = 20, 200
EVENTS_LIMIT, MAX_EVENTS = 200, 5000
MAX_BUCKETS = 2000
AHEAD_MARK = "!"  # sorts before the digits a name starts with
RECORDING_NAME = re.compile(r"^\d{8}-\d{6}-\d{4,}\.mp4$")
THUMBNAIL = re.compile(r"^(?P<stem>\d{8}-\d{6}-\d{4,})\.jpg$")
# The years a query's times may name: well inside datetime's 1 to 9999, so that local time can place them and a
# summary's buckets, which reach a bucket past 'to', can be shown
FIRST_YEAR, LAST_YEAR = 1900, 9000
EARLIEST = datetime(FIRST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp()
LATEST = datetime(LAST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp()
PAGE_CSP = (
    "default-src 'none'; img-src 'self'; media-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Handler(Protocol):
    """What these routes use of the web server's request handler."""

    command: str
    headers: Any
    wfile: Any
    connection: Any
    app: Any

    def send_response(self, code: int, message: str | None = None) -> None: ...
    def send_header(self, keyword: str, value: str) -> None: ...
    def end_headers(self) -> None: ...
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None: ...
    def _json(self, value: object, status: int = 200) -> None: ...
    def _text(self, status: int, text: str, headers: dict | None = None) -> None: ...


class BadQuery(ValueError):
    """A query parameter that cannot be used; its message names it."""


# --- parameters and times --------------------------------------------------------------------------


def iso(t: float) -> str:
    """Unix time ``t`` as ISO 8601 in the device's local time, with its UTC offset."""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def _param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values and values[0] != "" else None


def _int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    text = _param(query, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadQuery(f"{name}: expected an integer, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{name}: expected an integer in [{low}, {high}], got {value}")
    return value


def _time(query: dict[str, list[str]], name: str, default: float) -> float:
    text = _param(query, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
        except ValueError:
            raise BadQuery(f"{name}: expected ISO 8601 or Unix seconds, got {text[:40]!r}") from None
        if FIRST_YEAR <= moment.year < LAST_YEAR:  # local time cannot place a moment in year 1 or 9999
            value = (moment if moment.tzinfo else moment.astimezone()).timestamp()
        else:
            value = math.nan  # refused below
    if not EARLIEST <= value < LATEST:  # NaN and the infinities too
        raise BadQuery(f"{name}: expected a time from {FIRST_YEAR} to {LAST_YEAR - 1}, got {text[:40]!r}")
    return value


def _day(query: dict[str, list[str]]) -> tuple[float, float] | None:
    text = _param(query, "day")
    if text is None:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise BadQuery(f"day: expected YYYY-MM-DD, got {text[:40]!r}") from None
    if not FIRST_YEAR <= day.year < LAST_YEAR:
        raise BadQuery(f"day: expected a day from {FIRST_YEAR} to {LAST_YEAR - 1}, got {text[:40]!r}")
    return day.astimezone().timestamp(), (day + timedelta(days=1)).astimezone().timestamp()


def _span(query: dict[str, list[str]]) -> tuple[float, float] | None:
    """The times a recording's start must lie in: ``day`` (the device's local day), ``from``/``to`` (a day in the
    browser's time zone, which need not be the device's), or both."""
    low, high = _day(query) or (EARLIEST, LATEST)
    if "from" not in query and "to" not in query:
        return None if low == EARLIEST else (low, high)
    return max(low, _time(query, "from", EARLIEST)), min(high, _time(query, "to", LATEST))


# --- the index ---------------------------------------------------------------------------------------


def _directory(handler: Handler) -> Path | None:
    directory = handler.app.feed.recordings_dir
    return Path(directory) if directory is not None else None


def _index(handler: Handler) -> sqlite3.Connection | None:
    """A read-only connection to the review index; None when there is none yet.

    One per request, not one kept: the indexer deletes and recreates a damaged index, and a kept connection would
    go on reading the deleted file. Opening one costs a file open and a schema read, after the token is checked.
    """
    directory = _directory(handler)
    if directory is None or not (directory / DB_NAME).is_file():
        return None
    try:
        # as_uri escapes '#', '?' and '%': unescaped, a folder name holding one cuts off the path or the mode
        db = sqlite3.connect((directory / DB_NAME).absolute().as_uri() + "?mode=ro", uri=True, timeout=5.0)
        db.execute("SELECT 1 FROM recordings LIMIT 1")
    except sqlite3.Error as exc:
        log.debug("review: index not readable (%s)", exc)
        return None
    return db


def _events_indexed(db: sqlite3.Connection) -> bool:
    """Whether the index holds an events file (with ``events.enabled`` off it has the videos only): one indexed
    row, where a look for ``*.jsonl`` would list the whole recordings folder on every poll."""
    return db.execute("SELECT EXISTS (SELECT 1 FROM recordings WHERE jsonl_bytes IS NOT NULL)").fetchone()[0] == 1


def _answer(handler: Handler, build: Any, query: dict[str, list[str]]) -> None:
    try:
        handler._json(build(handler, query))
    except BadQuery as exc:
        handler._text(HTTPStatus.BAD_REQUEST, f"{exc}\n")
    except sqlite3.Error as exc:  # the index is being rebuilt or the disk is failing: try again later
        log.warning("review: index not readable (%s)", exc)
        handler._text(HTTPStatus.SERVICE_UNAVAILABLE, "503 the index cannot be read now\n", {"Retry-After": "5"})


def recordings(handler: Handler, query: dict[str, list[str]]) -> None:
    _answer(handler, _recordings, query)


def _recordings(handler: Handler, query: dict[str, list[str]]) -> dict:
    page = _int(query, "page", 1, 1, 1_000_000)
    per_page = _int(query, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    label, day = _param(query, "label"), _span(query)
    after = _param(query, "after")  # the recording that follows this one, whatever the filters: a player going on
    if after is not None and RECORDING_NAME.fullmatch(after) is None:
        raise BadQuery(f"after: expected a recording's name, got {after[:40]!r}")
    rows: dict[str, tuple] = {}
    labels: dict[str, dict[str, int]] = defaultdict(dict)
    db = _index(handler)
    try:
        # Every open live page asks for this every 10 s: beyond the filters, only this page's recordings are read.
        order = _Order(handler, db)
        if after is not None:
            later = order.key(after.removesuffix(".mp4"))
            newer = [item for item in order.items if order.key(item[1]) > later]  # newest first
            items = newer[-1:]  # the oldest of them
        else:
            items = _filtered(order, db, label, day)
        chosen = items[(page - 1) * per_page : page * per_page]
        if db is not None and chosen:
            marks, stems = ",".join("?" * len(chosen)), [stem for _, stem in chosen]
            found = db.execute(
                f"SELECT stem, start, duration_s, frames, faces, thumbnail FROM recordings WHERE stem IN ({marks})",
                stems,
            )
            rows = {row[0]: row for row in found}
            # the expressions of this page's recordings only, not a week of minutes
            counts = db.execute(
                f"SELECT stem, label, SUM(count) FROM minutes WHERE stem IN ({marks}) GROUP BY stem, label", stems
            )
            for stem, shown, count in counts:
                labels[stem][shown] = count
    finally:
        if db is not None:
            db.close()
    listing = []
    for path, stem in chosen:
        row = rows.get(stem)
        try:
            info = path.stat()
        except OSError:
            continue
        start = _start(path, stem, row[1] if row is not None else None, order.steps)
        if start is None:  # gone since the stat
            continue
        listing.append(
            {
                "name": path.name,
                "url": f"/recordings/{path.name}",
                "start": iso(start),
                "duration_s": row[2] if row is not None else None,
                "frames": row[3] if row is not None else None,
                "faces": row[4] if row is not None else None,
                "thumbnail": f"/thumbnails/{stem}.jpg" if row is not None and row[5] else None,
                "bytes": info.st_size,
                "mtime": round(info.st_mtime, 1),
                "labels": labels.get(stem, {}),
            }
        )
    return {"recordings": listing, "page": page, "per_page": per_page, "total": len(items)}


class _Order:
    """The finished recordings, newest first by when they were made, with their stems.

    Names sort in recording order, except those of a run that recorded on a clock that was then stepped
    (:mod:`fer_edge.record.clocksteps`): those go where their corrected start (as indexed, else as their name says,
    corrected) puts them among the others, which keep their names' order. A name more than a day ahead of the clock
    with no step noted was made by a run on a clock that ran ahead and ended before it was set back: when is not
    known, only that it was before the recordings named since, so those go last, not over everything for a year.
    """

    def __init__(self, handler: Handler, db: sqlite3.Connection | None):
        directory = _directory(handler)
        self.steps: ClockSteps = _clock_steps(directory) if directory is not None else {}
        listed = [(path, path.name[: -len(".mp4")]) for path in handler.app.feed.finished()]  # by name
        self._ahead = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() + MAX_NAME_LEAD_S))
        self._starts: dict[str, float] = {}
        stepped = [stem for _, stem in listed if stem in self.steps]
        if stepped and db is not None:
            found = db.execute(
                "SELECT stem, start FROM recordings WHERE stem IN (SELECT value FROM json_each(?))",
                (json.dumps(stepped),),
            )
            self._starts = dict(found.fetchall())
        reordered = stepped or (listed and listed[0][1] > self._ahead)
        self.items = sorted(listed, key=lambda item: self.key(item[1]), reverse=True) if reordered else listed

    def key(self, stem: str) -> str:
        """What orders ``stem`` among the others: itself; for a stem named before a step, the stem that its
        corrected start would have been named; for one named on a clock that ran ahead, itself after a mark that
        sorts before every name."""
        if stem not in self.steps:
            return f"{AHEAD_MARK}{stem}" if stem > self._ahead else stem
        start = self._starts.get(stem)
        if start is None:
            start = _start(None, stem, None, self.steps)
        if start is None or not EARLIEST <= start < LATEST:  # a foreign or damaged file's step: by its name
            return stem
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime(start)) + stem[len("YYYYmmdd-HHMMSS") :]


_CLOCK_STEPS: dict[Path, tuple[tuple[int, int], ClockSteps]] = {}


def _clock_steps(directory: Path) -> ClockSteps:
    """The clock steps noted in ``directory``, read again only when the file changed: every open page polls."""
    try:
        found = os.stat(directory / CLOCK_STEPS_NAME)
    except OSError:
        return {}
    seen = (found.st_mtime_ns, found.st_size)
    cached = _CLOCK_STEPS.get(directory)
    if cached is not None and cached[0] == seen:
        return cached[1]
    steps = read_clock_steps(directory)
    _CLOCK_STEPS[directory] = (seen, steps)
    return steps


def _filtered(
    order: _Order, db: sqlite3.Connection | None, label: str | None, day: tuple[float, float] | None
) -> list[tuple[Path, str]]:
    """The finished recordings in ``order``, with their stems: those in which ``label`` was shown, started in
    ``day``. What the whole folder needs is read only for a filter that needs it."""
    with_label: set[str] = set()
    starts: dict[str, float] = {}
    if db is not None and label is not None:
        found = db.execute("SELECT DISTINCT stem FROM minutes WHERE label = ?", (label,))
        with_label = {stem for (stem,) in found}
    if db is not None and day is not None:
        starts = dict(db.execute("SELECT stem, start FROM recordings").fetchall())
    items = []
    for path, stem in order.items:
        if label is not None and stem not in with_label:
            continue
        if day is not None:
            start = _start(path, stem, starts.get(stem), order.steps)
            if start is None or not day[0] <= start < day[1]:
                continue
        items.append((path, stem))
    return items


def _start(path: Path | None, stem: str, indexed: float | None, steps: ClockSteps) -> float | None:
    """When a recording started: as indexed, else as its name says (corrected by the clock steps noted for it),
    else (a name at no time that can be shown) when its file was last written; None when the file is gone."""
    if indexed is not None:
        return indexed
    named = _stem_start(stem)
    if named is not None:
        return corrected(named, steps[stem]) if stem in steps else named
    if path is None:
        return None
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _stem_start(stem: str) -> float | None:
    """The time a recording's name gives; None for a name that gives none that can be shown (a 13th month, year
    9999): a file copied in from elsewhere must not break the listing of the whole folder."""
    start = stem_time_or_none(stem)
    return start if start is not None and EARLIEST <= start < LATEST else None


def events(handler: Handler, query: dict[str, list[str]]) -> None:
    _answer(handler, _events, query)


def _events(handler: Handler, query: dict[str, list[str]]) -> dict:
    since = _int(query, "since", 0, -(2**62), 2**62)
    limit = _int(query, "limit", EVENTS_LIMIT, 1, MAX_EVENTS)
    recording, label = _param(query, "recording"), _param(query, "label")
    timed = "from" in query or "to" in query
    low, high = _time(query, "from", 0.0), _time(query, "to", math.inf)
    db = _index(handler)
    if db is not None and not _events_indexed(db):
        db.close()
        db = None
    if db is None:  # no index, or no events logged (events.enabled off): what the live feed holds
        # none of them is known to be in a recording: a recording's moments are none of them
        held = [] if recording is not None else handler.app.feed.events_since(since)
        live = [
            {**e, "event": e["type"], "time": iso(e["t"]), "recording": None, "offset_s": None}  # the index's shape
            for e in (event.as_dict() for event in held)
            if (label is None or e["label"] == label) and (not timed or low <= e["t"] < high)
        ][-limit:]
        return {"events": live, "last": live[-1]["seq"] if live else since}
    # the highest id ever given, which deleting the rows of a recording that is gone does not lower
    given = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    if since > (given[0] if given is not None else 0):  # the index was made again, its ids begun at 1
        since = 0
    where: list[str] = ["e.id > ?"]
    values: list[object] = [since]
    if recording is not None:
        where.append("r.video = ?")
        values.append(recording)
    if label is not None:
        where.append("e.label = ?")
        values.append(label)
    if timed:
        where.append("e.t >= ? AND e.t < ?")
        values += [low, high]
    order = "ASC" if recording is not None else "DESC"  # a recording's from its start; otherwise the newest
    sql = (
        "SELECT e.id, e.kind, e.t, e.track, e.label, e.score, e.box, e.frame, r.video, e.offset_s "
        "FROM events e LEFT JOIN recordings r ON r.stem = e.stem "
        f"WHERE {' AND '.join(where)} ORDER BY e.id {order} LIMIT ?"
    )
    with contextlib.closing(db):
        rows = db.execute(sql, [*values, limit]).fetchall()
    if order == "DESC":
        rows.reverse()
    found = [
        {
            "seq": seq,
            "type": kind,
            "event": kind,
            "time": iso(t),
            "t": t,
            "track": track,
            "label": label,
            "score": score,
            "box": [int(v) for v in box.split(",") if v],
            "frame": frame,
            "recording": video,
            "offset_s": offset,
        }
        for seq, kind, t, track, label, score, box, frame, video, offset in rows
    ]
    return {"events": found, "last": max([since, *(e["seq"] for e in found)])}


def summary(handler: Handler, query: dict[str, list[str]]) -> None:
    _answer(handler, _summary, query)


def _summary(handler: Handler, query: dict[str, list[str]]) -> dict:
    bucket = _int(query, "bucket_s", 3600, 60, 366 * 86400)
    if bucket % 60:
        raise BadQuery(f"bucket_s: expected a whole number of minutes in seconds, got {bucket}")
    to = _time(query, "to", time.time())
    start = _time(query, "from", to - 86400.0) // 60 * 60
    count = max(0, int(-(-(to - start) // bucket)))
    if count > MAX_BUCKETS:
        raise BadQuery(f"bucket_s: {count} buckets from 'from' to 'to'; at most {MAX_BUCKETS}")
    buckets: list[dict[str, int]] = [{} for _ in range(count)]
    db = _index(handler)
    if db is not None:
        with contextlib.closing(db):
            rows = db.execute(
                "SELECT CAST((minute - ?) / ? AS INTEGER), label, SUM(count) FROM minutes "
                "WHERE minute >= ? AND minute < ? GROUP BY 1, 2",
                (start, bucket, start, to),
            ).fetchall()
        for slot, label, n in rows:
            if 0 <= slot < count:
                buckets[slot][label] = n
    return {
        "from": iso(start),
        "to": iso(to),
        "bucket_s": bucket,
        "unit": "faces shown per frame, summed",
        "labels": sorted({label for counts in buckets for label in counts}),
        "buckets": [{"start": iso(start + i * bucket), "counts": counts} for i, counts in enumerate(buckets)],
    }


# --- files -------------------------------------------------------------------------------------------


def _open_regular(path: Path) -> BinaryIO | None:
    """``path`` opened for reading if it is a regular file, never through a link (one could have replaced the
    file since it was listed); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return open(fd, "rb")


def recording_file(handler: Handler, name: str, query: dict[str, list[str]]) -> None:
    # Only a recording's own name (no separator can pass the pattern), opened as a regular file, never a link:
    # what the listing shows, without listing the folder for every range a playing video asks for.
    directory = _directory(handler)
    named = directory is not None and name.endswith(".mp4") and FINISHED_RECORDING.fullmatch(name) is not None
    opened = _open_regular(directory / name) if named and directory is not None else None
    if opened is None and named and directory is not None:
        # The segment still being written, which a moment of the last minutes is in: as far as it is written now
        # (a fragmented MP4 plays to its last whole fragment), rather than not at all until it is finished.
        opened = _open_regular(directory / f"{name}.part")
        if opened is None:  # finished between the two looks: the .part was renamed to the name just tried
            opened = _open_regular(directory / name)
    if opened is None:
        handler._text(HTTPStatus.NOT_FOUND, "404 no such recording\n")
        return
    if not handler.app.transfer_slots.take():
        opened.close()
        handler._text(HTTPStatus.SERVICE_UNAVAILABLE, "503 too many recordings being sent\n", {"Retry-After": "5"})
        return
    try:
        _send_recording(handler, name, opened, query)
    finally:
        handler.app.transfer_slots.release()


def _send_recording(handler: Handler, name: str, opened: BinaryIO, query: dict[str, list[str]]) -> None:
    disposition = "attachment" if _param(query, "download") == "1" else "inline"
    with opened as f:
        size = os.fstat(f.fileno()).st_size
        wanted = parse_range(handler.headers.get("Range"), size)
        common = {
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'{disposition}; filename="{name}"',
            "Cache-Control": "private, no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if wanted is UNSATISFIABLE:
            refused = {"Accept-Ranges": "bytes", "Content-Range": f"bytes */{size}"}
            handler._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "video/mp4", refused)
            return
        part = wanted or ByteRange(0, size - 1)
        handler.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", str(max(0, part.length)))
        if wanted:
            handler.send_header("Content-Range", f"bytes {part.start}-{part.end}/{size}")
        for key, value in common.items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        f.seek(part.start)
        left = part.length
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            handler.wfile.write(chunk)
            left -= len(chunk)


def thumbnail(handler: Handler, name: str, query: dict[str, list[str]]) -> None:
    directory = _directory(handler)
    match = THUMBNAIL.fullmatch(name)
    data = None
    if directory is not None and match is not None:
        opened = _open_regular(directory / THUMBS_DIR / f"{match['stem']}.jpg")
        if opened is not None:
            with opened as f:
                data = f.read(MAX_THUMBNAIL_BYTES + 1)
    if data is not None and len(data) > MAX_THUMBNAIL_BYTES:
        # cut short it would be a broken image sent as a whole one
        log.warning(
            "review: thumbnail %s is over %d bytes, not one this device made; not served", name, MAX_THUMBNAIL_BYTES
        )
        handler._text(HTTPStatus.NOT_FOUND, "404 thumbnail too big to serve\n")
    elif data is None:
        handler._text(HTTPStatus.NOT_FOUND, "404 no such thumbnail\n")
    else:
        handler._send(200, data, "image/jpeg")


_PAGE: dict[str, bytes] = {}


def page(handler: Handler, query: dict[str, list[str]]) -> None:
    if "html" not in _PAGE:
        _PAGE["html"] = importlib.resources.files("fer_edge.serve").joinpath("static/review.html").read_bytes()
    handler._send(200, _PAGE["html"], "text/html; charset=utf-8", {"Content-Security-Policy": PAGE_CSP})
