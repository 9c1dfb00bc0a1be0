"""The clock steps a run lived through, for the recordings it wrote before them: ``.clock-steps.json`` beside them.

A Pi has no real-time clock: it records at the time it booted with (1970, or the last one fake-hwclock saved) until
network time steps the clock forward. The events lines written before the step carry that clock's times, and the
review index, derived from them, would list those recordings hours or decades in the past. The thread that watches
the clock (:class:`~fer_edge.record.retention.ClockWatch`) notes each step here, for the stems this run wrote
before it: ``{stem: [[until, step], ...]}``, read as "a time up to ``until`` was ``step`` seconds behind" (ahead,
for a negative step). The index applies the steps in order when it reads the stem's events (:func:`corrected`), and
the review orders them by the corrected times, so a rebuilt index lists them at their real times too; the files
themselves, and the names, stay as written. A step back (a clock that ran ahead) is noted for the events file
being written across it as ``[null, step]``: its lines after the step repeat the times of those before it, so
``until`` cannot tell them apart; there the step counts for the lines up to where their times fall back by about
as much against the frame timestamps (:class:`~fer_edge.record.tracklog.TrackLog`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from pathlib import Path

from fer_edge.record.diskspace import create_private, finished_recordings, fsync_directory

log = logging.getLogger(__name__)

CLOCK_STEPS_NAME = ".clock-steps.json"
MAX_CLOCK_STEPS_BYTES = 1024 * 1024  # a few hundred stems a step; a damaged or foreign file is not read whole

ClockSteps = dict[str, list[tuple[float | None, float]]]  # ``until`` None: a step back across an open file


def read_clock_steps(directory: Path) -> ClockSteps:
    """The steps noted in ``directory``; none where the file is missing, too large or not what this module
    writes."""
    try:
        with open(directory / CLOCK_STEPS_NAME, "rb") as f:
            data = f.read(MAX_CLOCK_STEPS_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.debug("clock: cannot read %s (%s)", CLOCK_STEPS_NAME, exc)
        return {}
    if len(data) > MAX_CLOCK_STEPS_BYTES:
        return {}
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    steps: ClockSteps = {}
    if not isinstance(raw, dict):
        return steps
    for stem, pairs in raw.items():
        if not isinstance(pairs, list):
            continue
        kept = [
            (None if pair[0] is None else float(pair[0]), float(pair[1]))
            for pair in pairs
            if isinstance(pair, list)
            and len(pair) == 2
            and (pair[0] is None or _is_number(pair[0]))
            and _is_number(pair[1])
        ]
        if kept:
            steps[str(stem)] = kept
    return steps


def note_clock_step(directory: Path, stems: set[str], until: float, step: float, across: Collection[str] = ()) -> None:
    """Note that times up to ``until`` in ``stems`` were ``step`` seconds behind, and that the files of ``across``
    were written across a step back of ``step``; stems whose files are gone are dropped from the file meanwhile.
    Written whole to a temporary file, then renamed over the old one."""
    present = {stem for stem, _ in finished_recordings(directory)} | stems | set(across)
    steps = {stem: pairs for stem, pairs in read_clock_steps(directory).items() if stem in present}
    for stem in stems:
        steps.setdefault(stem, []).append((until, step))
    for stem in across:
        steps.setdefault(stem, []).append((None, step))
    tmp = directory / f"{CLOCK_STEPS_NAME}.tmp"
    with open(create_private(tmp), "w", encoding="utf-8") as f:
        json.dump({stem: [list(pair) for pair in pairs] for stem, pairs in sorted(steps.items())}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CLOCK_STEPS_NAME)
    fsync_directory(directory)


def corrected(t: float, steps: list[tuple[float | None, float]]) -> float:
    """``t`` as the clock would have read it after the ``steps``, taken in the order they happened (a step whose
    ``until`` is None counts)."""
    for until, step in steps:
        if until is None or t <= until:
            t += step
    return t


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
