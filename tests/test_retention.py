"""recording.max_age_days: recordings older than that go with their events, thumbnails and index rows; nothing
younger is touched, nor the segment being written; at start-up of a run too."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livehelpers import write_config
from recorder_child import run_on_tmpfs

from fer_edge.config import load_config
from fer_edge.errors import ConfigError
from fer_edge.record.diskspace import finished_recordings
from fer_edge.record.events import CURRENT_NAME, STEM_MARKER_NAME
from fer_edge.record.folderlock import LOCK_NAME
from fer_edge.record.index import DB_NAME, RecordingIndex
from fer_edge.record.retention import ClockWatch, Retention

DAY = 86400.0


def run_to_end(config: Path, source: Path, log: Path) -> None:
    with open(log, "wb") as err:
        result = subprocess.run(
            [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config), "--source", str(source)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=120,
        )
    assert result.returncode == 0, log.read_text()


@pytest.fixture(scope="module")
def recorded(demo_clip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("retention")
    config = write_config(
        folder / "config.yaml", {"recording": {"output_dir": str(folder / "out"), "segment_seconds": 3.0}}
    )
    run_to_end(config, demo_clip, folder / "stderr.log")
    return folder / "out"


def stem_days_ago(days: float, n: int = 1) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() - days * DAY)) + f"-{n:04d}"


def place(recorded: Path, out: Path, stem: str, *, mtime_days_ago: float, source: int = 0) -> None:
    """A real recording (video and events) under ``stem``, its files last written ``mtime_days_ago``."""
    original = sorted(p.stem for p in recorded.glob("*.mp4"))[source]
    for suffix in (".mp4", ".jsonl"):
        target = out / f"{stem}{suffix}"
        shutil.copy(recorded / f"{original}{suffix}", target)
        moment = time.time() - mtime_days_ago * DAY
        os.utime(target, (moment, moment))


def rows(out: Path) -> dict[str, int]:
    db = sqlite3.connect(out / DB_NAME)
    found = {
        stem: db.execute("SELECT COUNT(*) FROM events WHERE stem = ?", (stem,)).fetchone()[0]
        + db.execute("SELECT COUNT(*) FROM minutes WHERE stem = ?", (stem,)).fetchone()[0]
        for (stem,) in db.execute("SELECT stem FROM recordings")
    }
    db.close()
    return found


def test_one_check_deletes_what_is_older_and_nothing_else(recorded, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old = [stem_days_ago(30, 1), stem_days_ago(9, 2)]
    young = stem_days_ago(6, 3)
    renamed_late = stem_days_ago(20, 4)  # named long ago, yet written this week: a clock that was wrong
    for stem in old:
        place(recorded, out, stem, mtime_days_ago=9)
    place(recorded, out, young, mtime_days_ago=6)
    place(recorded, out, renamed_late, mtime_days_ago=1)
    open_stem = stem_days_ago(12, 5)  # the segment being written, with an old name
    shutil.copy(recorded / sorted(p.name for p in recorded.glob("*.mp4"))[1], out / f"{open_stem}.mp4.part")
    shutil.copy(recorded / sorted(p.name for p in recorded.glob("*.jsonl"))[1], out / CURRENT_NAME)
    (out / STEM_MARKER_NAME).write_text(open_stem)
    for path in (out / f"{open_stem}.mp4.part", out / CURRENT_NAME):
        os.utime(path, (time.time() - 12 * DAY,) * 2)
    index = RecordingIndex(out)
    index.sync()
    assert set(rows(out)) == {*old, young, renamed_late, open_stem} and all(rows(out).values())
    assert all((out / ".thumbs" / f"{stem}.jpg").is_file() for stem in old)

    deleted = Retention(out, 7.0, index).check()
    index.close()

    assert deleted == sorted(old)  # oldest first
    for stem in old:
        assert not list(out.glob(f"{stem}*")) and not (out / ".thumbs" / f"{stem}.jpg").exists()
    assert set(rows(out)) == {young, renamed_late, open_stem}
    for stem in (young, renamed_late):
        assert (out / f"{stem}.mp4").is_file() and (out / f"{stem}.jsonl").is_file()
        assert (out / ".thumbs" / f"{stem}.jpg").is_file() and rows(out)[stem] > 0
    assert (out / f"{open_stem}.mp4.part").is_file() and (out / CURRENT_NAME).is_file()


def test_recordings_named_ahead_of_the_clock_go_by_when_they_were_written(recorded, tmp_path):
    """Names chained a second after one made while the clock read a year ahead: their age is their files'."""
    out = tmp_path / "out"
    out.mkdir()
    old, young = stem_days_ago(9, 1), stem_days_ago(1, 2)
    ahead_old, ahead_young = stem_days_ago(-365, 3), stem_days_ago(-365, 4)
    place(recorded, out, old, mtime_days_ago=9)
    place(recorded, out, young, mtime_days_ago=1)
    place(recorded, out, ahead_old, mtime_days_ago=10)
    place(recorded, out, ahead_young, mtime_days_ago=2)
    written_behind = stem_days_ago(1, 5)  # named after the newest while the clock was a week behind
    place(recorded, out, written_behind, mtime_days_ago=8)
    assert Retention(out, 7.0).check() == [ahead_old, old]  # oldest first
    kept = {stem for stem, _ in finished_recordings(out)}
    assert kept == {young, ahead_young, written_behind} and len(list(out.iterdir())) == 6


def test_without_an_age_limit_nothing_is_deleted(recorded, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    place(recorded, out, stem_days_ago(400), mtime_days_ago=400)
    assert Retention(out, None).check() == []
    assert len(list(out.iterdir())) == 2


def test_a_run_applies_retention_at_start(recorded, demo_clip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old, young = stem_days_ago(3, 1), stem_days_ago(1, 2)
    place(recorded, out, old, mtime_days_ago=3)
    place(recorded, out, young, mtime_days_ago=1)
    config = write_config(
        tmp_path / "config.yaml",
        {"recording": {"output_dir": str(out), "segment_seconds": 3.0, "max_age_days": 2}},
    )
    run_to_end(config, demo_clip, tmp_path / "stderr.log")
    assert not list(out.glob(f"{old}*")) and (out / f"{young}.mp4").is_file()
    indexed = rows(out)
    assert old not in indexed and young in indexed and len(indexed) >= 4  # and this run's own recordings
    assert "retention: deleted 1 recording(s) older than 2 days" in (tmp_path / "stderr.log").read_text()
    assert (out / LOCK_NAME).is_file() and all(stem[0].isdigit() for stem in indexed)  # the run's lock stays


RANGE = r"a number in \(0, 3650\]"


@pytest.mark.parametrize(("value", "message"), [(0, RANGE), (-1, RANGE), (5000, RANGE), ("week", "a number or null")])
def test_a_bad_age_limit_is_refused_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=rf"^recording\.max_age_days: expected {message}"):
        load_config(overrides={"recording.max_age_days": value})


def test_the_default_keeps_a_week_and_null_keeps_everything():
    assert load_config().recording.max_age_days == 7.0
    assert load_config(overrides={"recording.max_age_days": None}).recording.max_age_days is None


def test_recordings_made_before_the_clock_was_set_are_kept_for_their_real_age(recorded, tmp_path, caplog):
    """A Pi that booted at 1970 records until the network time steps its clock to now: what it wrote then is
    minutes old, not 56 years, and retention keeps it; a recording really older than the limit still goes."""
    out = tmp_path / "out"
    out.mkdir()
    boot = 86400.0  # 1970-01-02, the clock a Pi without a saved time boots with
    stepped = time.time()
    wall = {"t": boot}
    steady = {"t": 100.0}
    watch = ClockWatch(out, wall_clock=lambda: wall["t"], monotonic_clock=lambda: steady["t"])
    at_boot = [time.strftime("%Y%m%d-%H%M%S", time.gmtime(boot + 60 * n)) + f"-{n:04d}" for n in (1, 2)]
    for n, stem in enumerate(at_boot, 1):
        place(recorded, out, stem, mtime_days_ago=(stepped - boot - 60 * n - 3) / DAY)  # as that clock stamped it
    really_old = stem_days_ago(9, 3)
    place(recorded, out, really_old, mtime_days_ago=9)
    wall["t"], steady["t"] = boot + 300.0, 400.0
    assert watch.check() == 0.0
    wall["t"], steady["t"] = stepped, 401.0  # NTP steps the clock forward 56 years

    with caplog.at_level("WARNING"):
        step = watch.check()

    assert step == pytest.approx(stepped - boot - 301.0)
    assert "4 recording file(s)" in caplog.text
    assert Retention(out, 7.0).check() == [really_old]
    assert {stem for stem, _ in finished_recordings(out)} == set(at_boot)
    for stem in at_boot:
        written = (out / f"{stem}.mp4").stat().st_mtime
        assert stepped - 300 < written < stepped  # minutes before the step, on the right clock


def _events_from(recorded: Path, first_t: float, source: int = 0) -> list[str]:
    """The lines of a recorded events file, its wall-clock times moved to start at ``first_t``."""
    original = sorted(recorded.glob("*.jsonl"))[source]
    lines = [json.loads(line) for line in original.read_text().splitlines()]
    shift = first_t - lines[0]["t"]
    return [json.dumps({**line, "t": line["t"] + shift}) + "\n" for line in lines]


def _times_indexed_then_rebuilt(out: Path) -> Iterator[dict[str, tuple[float, float, float, int, int]]]:
    """The index's times (:func:`_index_times`) as the running index has them, then from an index built anew."""
    for rebuilt in (False, True):
        if rebuilt:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{out / DB_NAME}{suffix}").unlink(missing_ok=True)
        index = RecordingIndex(out)
        index.sync()
        index.close()
        yield _index_times(out)


def _index_times(out: Path) -> dict[str, tuple[float, float, float, int, int]]:
    """Per stem: its listed start, its events' first and last times, and its first and last counted minutes."""
    db = sqlite3.connect(out / DB_NAME)
    try:
        return {
            stem: (
                start,
                *db.execute("SELECT MIN(t), MAX(t) FROM events WHERE stem = ?", (stem,)).fetchone(),
                *db.execute("SELECT MIN(minute), MAX(minute) FROM minutes WHERE stem = ?", (stem,)).fetchone(),
            )
            for stem, start in db.execute("SELECT stem, start FROM recordings")
        }
    finally:
        db.close()


def test_recordings_made_before_the_clock_was_set_are_listed_at_their_real_times(recorded, tmp_path):
    """Their events were written at the boot clock: after network time stepped it, the review listed them decades
    (or, with fake-hwclock, hours) in the past. The step is noted, and the index, rebuilt too, lists them when they
    were made; a recording of the run before, whose times were right, stays where it was."""
    out = tmp_path / "out"
    out.mkdir()
    boot = 86400.0 * 20000  # 2024-10-04: the time fake-hwclock saved at the last shutdown
    previous = time.strftime("%Y%m%d-%H%M%S", time.gmtime(boot - 100)) + "-0001"  # the run before: right times
    (out / f"{previous}.jsonl").write_text("".join(_events_from(recorded, boot - 100)))
    os.utime(out / f"{previous}.jsonl", (boot - 90, boot - 90))
    wall, steady = {"t": boot}, {"t": 100.0}
    watch = ClockWatch(out, wall_clock=lambda: wall["t"], monotonic_clock=lambda: steady["t"])
    finished = time.strftime("%Y%m%d-%H%M%S", time.gmtime(boot + 60)) + "-0002"  # this run, before the step
    (out / f"{finished}.jsonl").write_text("".join(_events_from(recorded, boot + 60)))
    os.utime(out / f"{finished}.jsonl", (boot + 70, boot + 70))
    opened = time.strftime("%Y%m%d-%H%M%S", time.gmtime(boot + 200)) + "-0003"  # open across the step
    (out / STEM_MARKER_NAME).write_text(opened)
    (out / CURRENT_NAME).write_text("".join(_events_from(recorded, boot + 200)[:20]))
    wall["t"], steady["t"] = boot + 300.0, 400.0
    assert watch.check() == 0.0
    stepped = boot + 7 * 3600.0  # the Pi was off for seven hours
    wall["t"], steady["t"] = stepped, 401.0
    step = watch.check()
    assert step == pytest.approx(stepped - boot - 301.0)
    with open(out / CURRENT_NAME, "a") as current:  # the same segment goes on, on the right clock
        current.writelines(_events_from(recorded, stepped + 1.0, source=1)[:20])

    for times in _times_indexed_then_rebuilt(out):
        assert times[previous][0] == pytest.approx(boot - 100, abs=1)
        start, first_t, last_t, first_minute, last_minute = times[finished]
        assert start == pytest.approx(boot + 60 + step, abs=1)  # about four minutes before the step
        assert stepped - 300 < first_t <= last_t < stepped and stepped - 360 < first_minute <= last_minute < stepped
        start, first_t, last_t, first_minute, last_minute = times[opened]
        assert start == pytest.approx(boot + 200 + step, abs=1)
        assert stepped - 200 < first_t <= last_t < stepped + 30 and stepped - 240 < first_minute <= last_minute


def test_a_recording_open_across_a_step_back_is_listed_at_its_real_times(recorded, tmp_path):
    """A clock seven hours ahead (a wrong saved time), set back by network time while a segment was written: the
    review listed that segment seven hours ahead, since its lines after the step repeat the times of those before
    and the step was not noted for it. Its lines before the step now count as that much earlier, those after it
    stay as written, in a rebuilt index too."""
    out = tmp_path / "out"
    out.mkdir()
    real = 86400.0 * 20000
    ahead = real + 7 * 3600.0
    wall, steady = {"t": ahead}, {"t": 100.0}
    watch = ClockWatch(out, wall_clock=lambda: wall["t"], monotonic_clock=lambda: steady["t"])
    finished = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ahead + 60)) + "-0001"  # this run, before the step
    (out / f"{finished}.jsonl").write_text("".join(_events_from(recorded, ahead + 60)))
    os.utime(out / f"{finished}.jsonl", (ahead + 70, ahead + 70))
    opened = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ahead + 200)) + "-0002"  # open across the step
    (out / STEM_MARKER_NAME).write_text(opened)
    (out / CURRENT_NAME).write_text("".join(_events_from(recorded, ahead + 200)[:20]))
    wall["t"], steady["t"] = ahead + 300.0, 400.0
    assert watch.check() == 0.0
    wall["t"], steady["t"] = real + 301.0, 401.0
    step = watch.check()
    assert step == pytest.approx(-7 * 3600.0)
    with open(out / CURRENT_NAME, "a") as current:  # the same segment goes on, on the right clock
        current.writelines(_events_from(recorded, real + 302.0, source=1)[:20])

    for times in _times_indexed_then_rebuilt(out):
        assert times[finished][0] == pytest.approx(real + 60, abs=1)
        start, first_t, last_t, first_minute, last_minute = times[opened]
        assert start == pytest.approx(real + 200, abs=1)
        assert real + 199 < first_t <= last_t < real + 330 and real + 140 < first_minute <= last_minute < real + 330


def test_a_full_disk_never_stops_retention_or_the_index_nor_floods_the_log(recorded, tmp_path):
    """A real tmpfs, full when the thread starts (the index cannot even be opened) and again while it runs (a new
    recording's thumbnail and rows cannot be written): retention still deletes what is too old, the index is
    kept and opened once there is room, it catches up, and each failure is said once, not at every try."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    mount = tmp_path / "mnt"
    mount.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    old, young, late = stem_days_ago(30, 1), stem_days_ago(1, 2), stem_days_ago(0.5, 3)
    place(recorded, staging, old, mtime_days_ago=30)
    place(recorded, staging, young, mtime_days_ago=1)
    index = RecordingIndex(staging)
    index.sync()
    index.close()
    child = Path(__file__).with_name("housekeeper_child.py")
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {mount} && cp -a {staging} {mount}/out && "
        f"{sys.executable} {child} {mount} {staging} {young} {late}"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    if result.returncode != 0 and "unshare" in result.stderr and "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)

    first = seen["full_at_start"]
    assert first[0].startswith("index: opening the index failed") and first[1:] == [
        f"retention: deleted 1 recording(s) older than 7 days, {old} to {old}",
        "index: opening the index works again",  # retention made room
    ], first
    assert not any("unreadable" in line for line in first + seen["full_while_running"])  # the index was kept
    full = seen["full_while_running"]
    assert sum("no thumbnail" in line for line in full) == 1 and sum("failed" in line for line in full) == 1, full
    assert not any("works again" in line for line in full), full
    assert {f"{young}.mp4", f"{late}.mp4", DB_NAME} <= set(seen["files"]) and not any(old in f for f in seen["files"])


def test_recordings_written_at_1970_count_their_age_from_when_the_clock_is_set(recorded, tmp_path, caplog):
    """A run that recorded at 1970 and ended before the network time came (so it never saw the step): the next
    run, with the clock set, cannot know when they were made; they are kept max_age_days from then."""
    out = tmp_path / "out"
    out.mkdir()
    at_boot = "19700102-000100-0001"
    place(recorded, out, at_boot, mtime_days_ago=(time.time() - 86460.0) / DAY)
    now = time.time()
    with caplog.at_level("WARNING"):
        assert Retention(out, 7.0, wall_clock=lambda: now).check() == []
    assert f"1 recording(s), {at_boot} to {at_boot}, were written while the clock was not set" in caplog.text
    assert (out / f"{at_boot}.mp4").stat().st_mtime == pytest.approx(now)
    assert Retention(out, 7.0, wall_clock=lambda: now + 6 * DAY).check() == []
    assert Retention(out, 7.0, wall_clock=lambda: now + 8 * DAY).check() == [at_boot]


def test_recordings_written_while_the_clock_ran_ahead_count_their_age_from_when_it_is_set_back(
    recorded, tmp_path, caplog
):
    """A run that recorded on a clock a year ahead (a wrong saved time) and ended before network time set it back:
    its files were last written a year from now, and retention kept them a year past max_age_days. They count
    from when retention first sees them with the clock set back, as those written at 1970 do."""
    out = tmp_path / "out"
    out.mkdir()
    ahead = stem_days_ago(-365)
    place(recorded, out, ahead, mtime_days_ago=-365)
    now = time.time()
    with caplog.at_level("WARNING"):
        assert Retention(out, 7.0, wall_clock=lambda: now).check() == []
    assert f"1 recording(s), {ahead} to {ahead}, were written while the clock was more than a day ahead" in caplog.text
    assert (out / f"{ahead}.mp4").stat().st_mtime == pytest.approx(now)
    assert Retention(out, 7.0, wall_clock=lambda: now + 6 * DAY).check() == []
    assert Retention(out, 7.0, wall_clock=lambda: now + 8 * DAY).check() == [ahead]


READ_ONLY_RETENTION = """
import json, logging, os, subprocess, sys, time
from pathlib import Path
from fer_edge.record.retention import Retention
mount = Path(sys.argv[1])
old = time.time() - 30 * 86400
for n in range(1, 6):
    stem = time.strftime("%Y%m%d-%H%M%S", time.gmtime(old + n)) + f"-{n:04d}"
    for suffix in (".mp4", ".jsonl"):
        (mount / f"{stem}{suffix}").write_bytes(b"old")
        os.utime(mount / f"{stem}{suffix}", (old + n, old + n))
subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)  # ext4 errors=remount-ro
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("fer_edge").addHandler(handler)
print(json.dumps({"deleted": Retention(mount, 7.0).check(), "lines": lines, "left": len(list(mount.iterdir()))}))
"""


def test_retention_on_a_disk_turned_read_only_counts_nothing_deleted_and_says_it_once(tmp_path):
    """Nothing could be deleted, yet each recording was taken out of the index and counted as deleted, with a
    warning for every file at every hourly check."""
    seen = run_on_tmpfs(tmp_path, "1m", READ_ONLY_RETENTION)
    assert seen["deleted"] == [] and seen["left"] == 10
    assert len(seen["lines"]) == 1 and "cannot delete 10 old file(s)" in seen["lines"][0], seen["lines"]
