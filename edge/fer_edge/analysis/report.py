"""Summarise events JSONL files: ``tracks.csv`` (one row per track) and ``timeline.png`` (labels over time).

Each events line is one frame: ``{"t": unix_time, "ts": frame_time, "frame": index, "faces": [{"box": [x, y, w, h],
"track": id or null, "label": str, "score": float, "scores": {label: score}}, ...]}``. Blank lines and lines
that do not parse (the last line of a file cut short by power loss) are skipped with a warning. Labels come from
the data; a face shown as unsure has the label ``?`` and is counted in its own ``share_?`` column. Faces without a
track id are summarised together as track ``untracked``. Times follow the frames' own timestamps (see
:class:`FrameClock`). A file none of whose lines is an events line is refused before anything is written; a report
replaces an earlier one only once written whole.

Track ids restart at 1 when the device restarts, so a track id seen in another run (the frame index, which
counts on across segments, starts again at 0 in time order) or again
after more than ``TRACK_GAP_S`` seconds is another face: its rows are ``<id>#2``, ``<id>#3``, ...

Run as ``fer-edge report EVENTS [...] [--output DIR]`` or ``python -m fer_edge.analysis.report`` with the same arguments
(files or folders of ``*.jsonl``); without ``--output`` the report goes beside the (first) events.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fer_edge.errors import FerEdgeError
from fer_edge.record.events import numbered_events

log = logging.getLogger(__name__)

UNTRACKED = "untracked"
CSV_NAME = "tracks.csv"
TIMELINE_NAME = "timeline.png"
# A gap in a track's observations longer than this many typical frame intervals, and than MIN_GAP_S, is drawn as
# a gap (frame intervals jitter with the processing time of each frame).
GAP_FACTOR = 3.0
MIN_GAP_S = 0.5
# A live track is never unseen for long (the tracker ends it after a few missed frames): a longer gap means the
# id was given again after a restart.
TRACK_GAP_S = 10.0
# The timeline shows at most this many tracks (those with the most frames); the CSV has them all.
MAX_TIMELINE_TRACKS = 40
NO_FRAME = -(2**63)


@dataclass(slots=True)
class TrackSummary:
    """One face's observations in time order: ``times`` (unix seconds) and ``codes``, indexes into ``names``."""

    track: str
    times: np.ndarray  # float64
    codes: np.ndarray  # int32
    names: list[str]

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    @property
    def frames(self) -> int:
        return len(self.times)

    @property
    def dominant(self) -> str:
        """The most frequent label (a tie goes to the one seen first)."""
        counts = np.bincount(self.codes, minlength=len(self.names))
        tied = np.flatnonzero(counts == counts.max())
        return self.names[min(tied, key=lambda code: int(np.argmax(self.codes == code)))]

    def shares(self) -> dict[str, float]:
        counts = np.bincount(self.codes, minlength=len(self.names))
        return {label: float(count) / len(self.codes) for label, count in zip(self.names, counts)}


@dataclass(slots=True)
class Events:
    tracks: dict[str, TrackSummary]
    labels: list[str]  # in the order they first appear (score dicts keep the model's order)


def events_files(paths: list[str | Path]) -> list[Path]:
    """The files named in ``paths``, folders replaced by the ``*.jsonl`` files in them (by name)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.glob("*.jsonl") if p.is_file())
            if not found:
                raise FileNotFoundError(f"no events files (*.jsonl) in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"events file not found: {path}")
    return files


def collect_tracks(paths: list[str | Path]) -> Events:
    """Collect every face of every frame in ``paths`` into per-track summaries, ordered by time.

    A week of one face at 15 fps is 9 million observations: they are held in flat arrays (about 80 bytes each at
    the peak, 0.7 GB for the week), not as Python objects (some 475 bytes each, 4 GB), so that a Pi can summarise
    what it recorded.
    """
    # Each array is dropped once used (the peak is what a Pi must hold).
    read = _read_events(paths)
    times, runs, rank_of_frame = _frames_in_time_order(read.frame_times, read.frame_indexes)
    del read.frame_times, read.frame_indexes
    # Faces by track, then time; run and time both follow the frames' time order, so the frame's rank in it is
    # the whole key (a stable sort keeps a frame's faces in the order read).
    track_names = sorted(read.tracks, key=_track_order)
    track_rank = np.empty(len(track_names), dtype=np.int64)
    track_rank[[read.tracks[name] for name in track_names]] = np.arange(len(track_names))
    stride = max(len(times), 1)
    key = track_rank[np.frombuffer(read.face_tracks, dtype=np.int64)]
    key *= stride
    key += rank_of_frame[np.frombuffer(read.face_frames, dtype=np.int64)]
    del read.face_tracks, read.face_frames, rank_of_frame
    order = np.argsort(key, kind="stable")
    label_code = np.frombuffer(read.face_labels, dtype=np.int32)[order]
    del read.face_labels
    track_code, frame_rank = np.divmod(key[order], stride)  # track_code: the track's index in track_names
    del key, order
    face_time, face_run = times[frame_rank], runs[frame_rank]
    del times, runs, frame_rank

    # A track id's observations are cut into pieces where the run changes or the id went unseen too long.
    new_track = np.ones(len(track_code), dtype=bool)
    new_track[1:] = track_code[1:] != track_code[:-1]
    new_piece = new_track.copy()
    new_piece[1:] |= (face_run[1:] != face_run[:-1]) | (np.diff(face_time) > TRACK_GAP_S)
    if UNTRACKED in read.tracks:  # faces the tracker did not place are one row, whatever their times
        new_piece &= new_track | (track_code != track_names.index(UNTRACKED))
    names = list(read.labels)
    starts = np.flatnonzero(new_piece)
    summaries: dict[str, TrackSummary] = {}
    piece = 0
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(track_code)]):
        piece = 1 if new_track[start] else piece + 1
        track = track_names[track_code[start]]
        name = track if piece == 1 else f"{track}#{piece}"
        summaries[name] = TrackSummary(name, face_time[start:stop], label_code[start:stop], names)
    return Events(summaries, names)


@dataclass(slots=True)
class _ReadEvents:
    """What the events files hold, flat: per frame its time and index, per face its frame, track and label
    (codes into ``tracks`` and ``labels``, in the order first seen). The arrays are deleted once used."""

    frame_times: array = field(default_factory=lambda: array("d"))
    frame_indexes: array = field(default_factory=lambda: array("q"))  # NO_FRAME where the event has none
    face_frames: array = field(default_factory=lambda: array("q"))
    face_tracks: array = field(default_factory=lambda: array("q"))
    face_labels: array = field(default_factory=lambda: array("i"))
    tracks: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


class NotEventsError(FerEdgeError):
    """A file given as events holds no events line at all (a video, say)."""


class FrameClock:
    """A frame's time: the wall clock of a run's first line, moved on by the frames' own timestamps (``ts``).

    The wall clock ``t`` says when a line was written, which on a file run is processing time (a 9 s clip can
    pass in under a second); ``ts`` is when the frame was captured, or where it lies in the file. Lines without
    ``ts`` keep ``t``; a ``ts`` that goes back (a looped file, a restarted camera) starts again from that line.
    """

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (t, ts) of the line the clock counts from
        self._last_ts = -math.inf

    def time(self, t: float, ts: object) -> float:
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            return t
        if self._anchor is None or ts < self._last_ts - 1.0:
            self._anchor = (t, float(ts))
        self._last_ts = float(ts)
        return self._anchor[0] + (float(ts) - self._anchor[1])


def _read_events(paths: list[str | Path]) -> _ReadEvents:
    read = _ReadEvents()
    clock = FrameClock()  # one for all files: a run's segments continue one timeline
    for path in events_files(paths):
        skipped = []
        before = len(read.frame_times)
        for number, event in numbered_events(path):
            try:
                t, faces = _parse_event(event)
            except (ValueError, KeyError, TypeError, AttributeError):
                skipped.append(number)
                continue
            assert event is not None  # _parse_event raised ValueError on None
            t = clock.time(t, event.get("ts"))
            frame = event.get("frame")
            frame_index = len(read.frame_times)
            read.frame_times.append(t)
            read.frame_indexes.append(frame if isinstance(frame, int) and NO_FRAME < frame < 2**63 else NO_FRAME)
            for track, label, score_names in faces:
                for name in score_names:
                    read.labels.setdefault(name, len(read.labels))
                read.face_frames.append(frame_index)
                read.face_tracks.append(read.tracks.setdefault(track, len(read.tracks)))
                read.face_labels.append(read.labels.setdefault(label, len(read.labels)))
        if skipped and len(read.frame_times) == before:
            raise NotEventsError(f"{path} is not an events file: none of its lines is an events line; nothing written")
        if skipped:
            log.warning("%s: skipped %d unreadable line(s): %s", path, len(skipped), _line_list(skipped))
    return read


def _frames_in_time_order(frame_times: array, frame_indexes: array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames' times and runs in time order, and each frame's rank in that order (ties keep the order read).

    In time order, a frame index lower than the last one seen means that the device restarted: a new run.
    """
    by_time = np.argsort(np.frombuffer(frame_times, dtype=np.float64), kind="stable")
    seen = np.frombuffer(frame_indexes, dtype=np.int64)[by_time]
    numbered = np.flatnonzero(seen != NO_FRAME)
    seen = seen[numbered]
    runs = np.zeros(len(by_time), dtype=np.int64)
    runs[numbered] = seen < np.concatenate(([-1], seen[:-1]))
    del numbered, seen
    rank_of_frame = np.empty(len(by_time), dtype=np.int64)
    rank_of_frame[by_time] = np.arange(len(by_time))
    return np.frombuffer(frame_times, dtype=np.float64)[by_time], np.cumsum(runs, out=runs), rank_of_frame


def _parse_event(event: dict | None) -> tuple[float, list[tuple[str, str, list[str]]]]:
    """One event -> (time, [(track, label, score names)]); raises on anything malformed."""
    if event is None:
        raise ValueError("not a JSON object")
    t = float(event["t"])
    if not math.isfinite(t):
        raise ValueError(f"bad time {t}")
    faces = []
    for face in event.get("faces") or []:
        if face.get("label") is None:  # a face that was not classified
            continue
        track = UNTRACKED if face.get("track") is None else str(face["track"])
        faces.append((track, str(face["label"]), [str(name) for name in face.get("scores") or {}]))
    return t, faces


def _line_list(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (", ..." if len(numbers) > limit else "")


def _track_order(track: str) -> tuple[int, int, str]:
    if track == UNTRACKED:
        return (2, 0, track)
    return (0, int(track), track) if track.isascii() and track.lstrip("-").isdigit() else (1, 0, track)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A file beside ``path`` to write instead, put in its place only once written whole: a full disk or Ctrl-C
    leaves the report written before as it was, and the error names the file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as exc:
        raise FerEdgeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def write_tracks_csv(events: Events, path: Path) -> Path:
    header = ["track", "start", "end", "duration_s", "frames", "dominant"] + [f"share_{x}" for x in events.labels]
    with replaced_whole(path) as partial, partial.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for summary in events.tracks.values():
            shares = summary.shares()
            writer.writerow(
                [
                    summary.track,
                    _iso(summary.start),
                    _iso(summary.end),
                    f"{summary.end - summary.start:.3f}",
                    summary.frames,
                    summary.dominant,
                ]
                + [f"{shares[label]:.4f}" for label in events.labels]
            )
    return path


def _label_runs(summary: TrackSummary, frame_interval: float) -> list[tuple[str, float, float]]:
    """(label, start, width) runs of one track; each observation lasts until the next, up to a gap."""
    times = summary.times
    following = np.append(np.diff(times), frame_interval)
    gap = following > max(GAP_FACTOR * frame_interval, MIN_GAP_S)
    ends = np.where(gap, times + frame_interval, times + following)
    starts = np.ones(len(times), dtype=bool)
    starts[1:] = (summary.codes[1:] != summary.codes[:-1]) | gap[:-1]
    first = np.flatnonzero(starts)
    last = np.append(first[1:] - 1, len(times) - 1)
    return [
        (summary.names[code], float(start), float(end - start))
        for code, start, end in zip(summary.codes[first].tolist(), times[first].tolist(), ends[last].tolist())
    ]


def _frame_interval(events: Events) -> float:
    """The median of the positive steps between a track's observations: the typical frame interval."""
    per_track = [np.diff(s.times) for s in events.tracks.values()]
    steps = np.concatenate(per_track) if per_track else np.empty(0)
    steps = steps[steps > 0]
    if not len(steps):
        return 1.0 / 30
    middle = len(steps) // 2
    return float(np.partition(steps, middle)[middle])


def _time_unit(span_s: float) -> tuple[str, float]:
    """The timeline's unit for a span: seconds for a clip, up to days for a device's month."""
    for name, seconds, up_to in (("seconds", 1, 300), ("minutes", 60, 3 * 3600), ("hours", 3600, 3 * 86400)):
        if span_s <= up_to:
            return name, seconds
    return "days", 86400


def write_timeline_png(events: Events, path: Path) -> Path | None:
    """Draw one horizontal band per track, coloured by label; None (and one warning) without matplotlib."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        log.warning("%s not written: the timeline needs matplotlib (pip install matplotlib)", path.name)
        return None

    colours = matplotlib.colormaps["tab10"]
    colour_of = {label: colours(i % 10) for i, label in enumerate(events.labels)}
    tracks = list(events.tracks.values())
    origin = min((s.start for s in tracks), default=0.0)
    unit, unit_s = _time_unit(max((s.end for s in tracks), default=origin) - origin)
    interval = _frame_interval(events)
    title = "Expressions per track" if tracks else "No faces in the events"
    if len(tracks) > MAX_TIMELINE_TRACKS:
        busiest = {s.track for s in sorted(tracks, key=lambda s: s.frames, reverse=True)[:MAX_TIMELINE_TRACKS]}
        title += f" ({MAX_TIMELINE_TRACKS} of {len(tracks)} tracks: those with the most frames)"
        tracks = [s for s in tracks if s.track in busiest]

    figure = Figure(figsize=(10, 1.5 + 0.45 * max(1, len(tracks))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row, summary in enumerate(tracks):
        bars: dict[str, list[tuple[float, float]]] = {}
        for label, start, width in _label_runs(summary, interval):
            bars.setdefault(label, []).append(((start - origin) / unit_s, width / unit_s))
        for label, spans in bars.items():  # one call per label: a week's track has many thousand runs
            axes.broken_barh(spans, (row - 0.4, 0.8), facecolors=colour_of[label])
    axes.set_yticks(range(len(tracks)), [s.track if s.track == UNTRACKED else f"track {s.track}" for s in tracks])
    axes.set_ylim(len(tracks) - 0.5 if tracks else 0.5, -0.5)
    axes.set_xlabel(f"{unit} since {_iso(origin)}" if tracks else unit)
    axes.set_title(title)
    axes.legend(
        handles=[Patch(color=colour_of[label], label=label) for label in events.labels],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
    )
    with replaced_whole(path) as partial:
        figure.savefig(partial, dpi=100, format="png")
    return path


def main(paths: list[str | Path], output_dir: str | Path | None = None) -> list[Path]:
    """Write ``tracks.csv`` and (with matplotlib) ``timeline.png`` for the events in ``paths``; returns them.

    ``paths`` are events files or folders of them; ``output_dir`` defaults to the first one's folder.
    """
    output = Path(output_dir) if output_dir is not None else default_output_dir(paths)
    events = collect_tracks(paths)  # first: input that is not events leaves the output as it was
    make_output_folder(output)
    written = [write_tracks_csv(events, output / CSV_NAME)]
    timeline = write_timeline_png(events, output / TIMELINE_NAME)
    if timeline is not None:
        written.append(timeline)
    log.info("report of %d track(s) written to %s", len(events.tracks), output)
    return written


def make_output_folder(output: Path) -> None:
    """The report's folder, made when missing; a file in its place, or on its path, is refused in words."""
    if output.exists() and not output.is_dir():
        raise FerEdgeError(f"report folder {output} is a file, not a folder: name another with --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerEdgeError(f"cannot make the report folder {output}: {exc.strerror or exc}") from exc


def default_output_dir(paths: list[str | Path]) -> Path:
    """Where a report goes when no folder is named: beside the events (the first path given)."""
    first = Path(paths[0])
    return first if first.is_dir() else first.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's arguments, shared by ``fer-edge report`` and ``python -m fer_edge.analysis.report``."""
    from fer_edge.arguments import given

    parser.add_argument("events", nargs="+", type=given, metavar="EVENTS", help="events JSONL files or folders of them")
    parser.add_argument(
        "-o",
        "--output",
        type=given,
        metavar="DIR",
        help="where tracks.csv and timeline.png go (default: the folder of the first EVENTS)",
    )


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_edge.analysis.report", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for path in main(args.events, args.output):
            print(path)
    except (OSError, FerEdgeError) as error:
        print(f"fer-edge report: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
