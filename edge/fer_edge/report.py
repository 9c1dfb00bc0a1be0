"""Summarise events JSONL files: ``tracks.csv`` (one row per track) and ``timeline.png`` (labels over time).

Each events line is one frame: ``{"t": unix_time, "frame": index, "faces": [{"box": [x, y, w, h],
"track": id or null, "label": str, "score": float, "scores": {label: score}}, ...]}``. Blank lines and lines
that do not parse (the last line of a file cut short by power loss) are skipped with a warning. Labels come from
the data. Faces without a track id are summarised together as track ``untracked``.

Track ids restart at 1 when the device restarts, so a track id seen in another run (the frame index, which
counts on across segments, starts again at 0 in time order) or again
after more than ``TRACK_GAP_S`` seconds is another face: its rows are ``<id>#2``, ``<id>#3``, ...

Run as ``fer-edge report`` or ``python -m fer_edge.report EVENTS [...] -o OUTPUT_DIR`` (files or folders of
``*.jsonl``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fer_edge.events import numbered_events

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


@dataclass(slots=True)
class TrackSummary:
    track: str
    times: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def end(self) -> float:
        return self.times[-1]

    @property
    def dominant(self) -> str:
        """The most frequent label (a tie goes to the one seen first)."""
        return Counter(self.labels).most_common(1)[0][0]

    def shares(self, labels: list[str]) -> dict[str, float]:
        counts = Counter(self.labels)
        return {label: counts[label] / len(self.labels) for label in labels}


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
    """Collect every face of every frame in ``paths`` into per-track summaries, ordered by time."""
    frames: list[tuple[float, int | None, list[tuple[str, str]]]] = []  # (time, frame index, [(track, label)])
    labels: dict[str, None] = {}
    for path in events_files(paths):
        skipped = []
        for number, event in numbered_events(path):
            try:
                t, faces = _parse_event(event)
            except (ValueError, KeyError, TypeError, AttributeError):
                skipped.append(number)
                continue
            frame = event.get("frame")
            frames.append((t, frame if isinstance(frame, int) else None, [(track, label) for track, label, _ in faces]))
            for _, label, score_names in faces:
                labels.update(dict.fromkeys(score_names))
                labels.setdefault(label, None)
        if skipped:
            log.warning("%s: skipped %d unreadable line(s): %s", path, len(skipped), _line_list(skipped))

    observations: dict[str, list[tuple[int, float, str]]] = {}  # track -> (run, time, label)
    run, last_frame = 0, -1
    for t, frame, faces in sorted(frames, key=lambda f: f[0]):
        if frame is not None:
            if frame < last_frame:  # in time order the frame index started again: the device restarted
                run += 1
            last_frame = frame
        for track, label in faces:
            observations.setdefault(track, []).append((run, t, label))

    tracks: dict[str, TrackSummary] = {}
    for track in sorted(observations, key=_track_order):
        for summary in _split_at_gaps(track, sorted(observations[track], key=lambda o: o[:2])):
            tracks[summary.track] = summary
    return Events(tracks, list(labels))


def _split_at_gaps(track: str, observations: list[tuple[int, float, str]]) -> list[TrackSummary]:
    """One track id's observations, by run and time, cut where the run changes or the id went unseen too long."""
    pieces = [TrackSummary(track)]
    current_run = observations[0][0] if observations else 0
    for run, t, label in observations:
        current = pieces[-1]
        if track != UNTRACKED and current.times and (run != current_run or t - current.end > TRACK_GAP_S):
            current = TrackSummary(f"{track}#{len(pieces) + 1}")
            pieces.append(current)
        current_run = run
        current.times.append(t)
        current.labels.append(label)
    return pieces


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
    return (0, int(track), track) if track.lstrip("-").isdigit() else (1, 0, track)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def write_tracks_csv(events: Events, path: Path) -> Path:
    header = ["track", "start", "end", "duration_s", "frames", "dominant"] + [f"share_{x}" for x in events.labels]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for summary in events.tracks.values():
            shares = summary.shares(events.labels)
            writer.writerow(
                [
                    summary.track,
                    _iso(summary.start),
                    _iso(summary.end),
                    f"{summary.end - summary.start:.3f}",
                    len(summary.times),
                    summary.dominant,
                ]
                + [f"{shares[label]:.4f}" for label in events.labels]
            )
    return path


def _label_runs(summary: TrackSummary, frame_interval: float) -> list[tuple[str, float, float]]:
    """(label, start, width) runs of one track; each observation lasts until the next, up to a gap."""
    runs: list[tuple[str, float, float]] = []
    longest = max(GAP_FACTOR * frame_interval, MIN_GAP_S)
    for i, (t, label) in enumerate(zip(summary.times, summary.labels)):
        following = summary.times[i + 1] - t if i + 1 < len(summary.times) else frame_interval
        width = following if following <= longest else frame_interval
        if runs and runs[-1][0] == label and abs(runs[-1][1] + runs[-1][2] - t) < 1e-9:
            runs[-1] = (label, runs[-1][1], runs[-1][2] + width)
        else:
            runs.append((label, t, width))
    return runs


def _frame_interval(events: Events) -> float:
    steps = sorted(b - a for s in events.tracks.values() for a, b in zip(s.times, s.times[1:]) if b > a)
    return steps[len(steps) // 2] if steps else 1.0 / 30


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
    interval = _frame_interval(events)
    title = "Expressions per track" if tracks else "No faces in the events"
    if len(tracks) > MAX_TIMELINE_TRACKS:
        busiest = {s.track for s in sorted(tracks, key=lambda s: len(s.times), reverse=True)[:MAX_TIMELINE_TRACKS]}
        title += f" ({MAX_TIMELINE_TRACKS} of {len(tracks)} tracks: those with the most frames)"
        tracks = [s for s in tracks if s.track in busiest]

    figure = Figure(figsize=(10, 1.5 + 0.45 * max(1, len(tracks))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row, summary in enumerate(tracks):
        for label, start, width in _label_runs(summary, interval):
            axes.broken_barh([(start - origin, width)], (row - 0.4, 0.8), facecolors=colour_of[label])
    axes.set_yticks(range(len(tracks)), [s.track if s.track == UNTRACKED else f"track {s.track}" for s in tracks])
    axes.set_ylim(len(tracks) - 0.5 if tracks else 0.5, -0.5)
    axes.set_xlabel(f"seconds since {_iso(origin)}" if tracks else "seconds")
    axes.set_title(title)
    axes.legend(
        handles=[Patch(color=colour_of[label], label=label) for label in events.labels],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
    )
    figure.savefig(path, dpi=100)
    return path


def main(paths: list[str | Path], output_dir: str | Path | None = None) -> list[Path]:
    """Write ``tracks.csv`` and (with matplotlib) ``timeline.png`` for the events in ``paths``; returns them.

    ``paths`` are events files or folders of them; ``output_dir`` defaults to the current directory.
    """
    output = Path(output_dir if output_dir is not None else ".")
    output.mkdir(parents=True, exist_ok=True)
    events = collect_tracks(paths)
    written = [write_tracks_csv(events, output / CSV_NAME)]
    timeline = write_timeline_png(events, output / TIMELINE_NAME)
    if timeline is not None:
        written.append(timeline)
    log.info("report of %d track(s) written to %s", len(events.tracks), output)
    return written


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_edge.report", description=__doc__.splitlines()[0])
    parser.add_argument("events", nargs="+", help="events JSONL files or folders of them")
    parser.add_argument("-o", "--output-dir", default=".", help="where tracks.csv and timeline.png go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for path in main(args.events, args.output_dir):
            print(path)
    except OSError as error:
        print(f"fer-edge report: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
