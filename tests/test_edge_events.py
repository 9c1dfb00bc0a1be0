"""The events log: JSON lines written crash-safely, rotated by stem, read back tolerating a crash's partial line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recorder_child import THREE_EVENT_LINES, refused_write_run

from fer_edge.record.diskspace import finished_recordings
from fer_edge.record.events import (
    CURRENT_NAME,
    STEM_MARKER_NAME,
    TAKE_BACK_NAME,
    EventsLog,
    read_events,
    recover_leftover_events,
)
from fer_edge.record.index import RecordingIndex
from fer_edge.types import Box, Face, Prediction

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def prediction(*scores: float) -> Prediction:
    return Prediction(LABELS, scores)


RAW = prediction(0.05, 0.0, 0.1, 0.3, 0.35, 0.1, 0.1)
SMOOTHED = prediction(0.05, 0.0, 0.05, 0.6, 0.2, 0.05, 0.05)
FACES = [
    Face(Box(10, 20, 64, 64), RAW, track_id=3, smoothed=SMOOTHED),
    Face(Box(200, 40, 50, 52), prediction(0.0, 0.0, 0.0, 0.9, 0.0, 0.1, 0.0)),
    Face(Box(5, 5, 30, 30)),  # detected, not classified
]


def test_lines_hold_boxes_tracks_labels_and_scores(tmp_path):
    log = EventsLog(tmp_path)
    log.open("20261124-183000-0001")
    log.write(1795631400.25, 7, FACES)
    log.write(1795631400.29, 8, [])
    assert (tmp_path / CURRENT_NAME).exists()
    finished = log.close()

    assert finished == tmp_path / "20261124-183000-0001.jsonl"
    assert not (tmp_path / CURRENT_NAME).exists() and not (tmp_path / STEM_MARKER_NAME).exists()
    lines = finished.read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["t"] == pytest.approx(1795631400.25) and first["frame"] == 7
    assert second == {"t": pytest.approx(1795631400.29), "frame": 8, "faces": []}
    smoothed_face, raw_face, unclassified = first["faces"]
    assert smoothed_face["box"] == [10, 20, 64, 64] and smoothed_face["track"] == 3
    assert smoothed_face["label"] == "happy" and smoothed_face["score"] == pytest.approx(0.6)  # shown = smoothed
    assert smoothed_face["raw_label"] == "sad"
    assert smoothed_face["scores"] == {name: pytest.approx(s) for name, s in zip(LABELS, RAW.scores)}
    assert smoothed_face["smoothed"]["happy"] == pytest.approx(0.6)
    assert raw_face["label"] == raw_face["raw_label"] == "happy" and raw_face["track"] is None
    assert "smoothed" not in raw_face
    assert unclassified == {
        "box": [5, 5, 30, 30],
        "track": None,
        "label": None,
        "score": None,
        "scores": None,
        "raw_label": None,
    }


def test_each_line_is_on_disk_as_soon_as_it_is_written(tmp_path):
    log = EventsLog(tmp_path)
    log.open("20261124-183000-0001")
    for frame in range(5):
        log.write(time.time(), frame, FACES[:1])
        on_disk = (tmp_path / CURRENT_NAME).read_text()  # another reader, no flush by us
        assert on_disk.count("\n") == frame + 1 and on_disk.endswith("\n")
    log.close()


def test_rotation_renames_to_the_stem_and_starts_a_new_current_file(tmp_path):
    log = EventsLog(tmp_path)
    log.rotate("20261124-183000-0001")  # rotating when nothing is open just opens
    log.write(1.0, 0, [])
    finished = log.rotate("20261124-183500-0002")
    log.write(2.0, 1, [])
    assert finished.name == "20261124-183000-0001.jsonl"
    assert (tmp_path / STEM_MARKER_NAME).read_text() == "20261124-183500-0002"
    assert [e["frame"] for e in read_events(tmp_path / CURRENT_NAME)] == [1]
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261124-183000-0001.jsonl", "20261124-183500-0002.jsonl"]


def test_read_events_skips_a_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    log = EventsLog(tmp_path)
    log.open("20261124-183000-0001")
    for frame in range(4):
        log.write(100.0 + frame, frame, FACES)
    log._file.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # killed in the middle of writing the last line
    with caplog.at_level(logging.WARNING):
        events = list(read_events(path))
    assert [e["frame"] for e in events] == [0, 1, 2]
    assert all(e["faces"][0]["label"] == "happy" for e in events)
    assert caplog.text == ""  # a partial last line is expected after a crash, not worth a warning


def test_read_events_skips_a_broken_line_in_the_middle_with_a_warning(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    path.write_text('{"t": 1, "frame": 0, "faces": []}\n{"t": 2, "fra\n{"t": 3, "frame": 2, "faces": []}\n')
    with caplog.at_level(logging.WARNING):
        assert [e["frame"] for e in read_events(path)] == [0, 2]
    assert "x.jsonl:2" in caplog.text


def test_leftover_current_file_gets_its_stem_back_and_loses_its_partial_line(tmp_path):
    log = EventsLog(tmp_path)
    log.open("20261124-183000-0007")
    log.write(1.0, 0, FACES)
    log.write(2.0, 1, FACES)
    log._file.close()  # the process died: no close(), no rename
    with open(tmp_path / CURRENT_NAME, "a") as f:
        f.write('{"t": 3.0, "frame": 2, "fa')

    recovered = recover_leftover_events(tmp_path, fallback_stem=lambda t: pytest.fail("marker was there"))
    assert recovered == tmp_path / "20261124-183000-0007.jsonl"
    assert recovered.read_text().endswith("\n")
    assert [e["frame"] for e in read_events(recovered)] == [0, 1]
    assert sorted(os.listdir(tmp_path)) == ["20261124-183000-0007.jsonl"]


def test_an_events_file_whose_name_is_taken_becomes_a_recording_of_its_own(tmp_path, caplog):
    """A finished or recovered events file whose ``<stem>.jsonl`` was already there got ``<stem>.1.jsonl``, a name
    that the disk guard, retention and the review index all pass over: kept forever, its events never shown."""
    stem = "20261124-183000-0007"
    taken = tmp_path / f"{stem}.jsonl"
    taken.write_text('{"t": 1.0, "frame": 100, "faces": []}\n')  # copied back in by hand, say
    log = EventsLog(tmp_path)
    log.open(stem)
    log.write(2.0, 0, FACES)
    finished = log.close()
    log.open(stem)
    log.write(3.0, 1, FACES)
    log._file.close()  # the process died: the next start recovers the file under the marker's stem
    recovered = recover_leftover_events(tmp_path, fallback_stem=lambda t: pytest.fail("marker was there"))

    assert (finished.name, recovered.name) == ("20261124-183000-0008.jsonl", "20261124-183000-0009.jsonl")
    assert [e["frame"] for p in (taken, finished, recovered) for e in read_events(p)] == [100, 0, 1]
    assert [stem for stem, _ in finished_recordings(tmp_path)] == [stem, finished.stem, recovered.stem]
    assert sorted(os.listdir(tmp_path)) == [taken.name, finished.name, recovered.name]
    with contextlib.closing(RecordingIndex(tmp_path)) as index:
        index.sync()
        indexed = [row[0] for row in index.db.execute("SELECT stem FROM recordings ORDER BY stem")]
    assert indexed == [stem, finished.stem, recovered.stem]
    assert [r.getMessage() for r in caplog.records if "is taken" in r.getMessage()] == [
        f"events: {stem}.jsonl is taken; finished as {finished.name} instead",
        f"events: {stem}.jsonl is taken; finished as {recovered.name} instead",
    ]


def test_leftover_without_marker_is_named_from_its_first_event(tmp_path):
    (tmp_path / CURRENT_NAME).write_text('{"t": 1795631400.5, "frame": 0, "faces": []}\n')
    recovered = recover_leftover_events(tmp_path, fallback_stem=lambda t: f"from-{int(t)}")
    assert recovered.name == "from-1795631400.jsonl"


def test_a_full_disk_drops_lines_with_one_warning_and_never_raises(tmp_path, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    (tmp_path / CURRENT_NAME).symlink_to("/dev/full")  # every write fails with ENOSPC
    log = EventsLog(tmp_path)
    with caplog.at_level(logging.WARNING):
        log.open("20261124-183000-0001")
        for frame in range(10):
            log.write(1.0, frame, FACES)
        log.retry()
        log.write(1.0, 10, FACES)
    assert log.dropped_lines == 11
    assert caplog.text.count("dropping event lines") == 1
    log.close()


MARKER_TMP = STEM_MARKER_NAME + ".tmp"


@pytest.mark.parametrize(
    "marker",
    [
        b"\0" * 20,  # a power cut on FAT/exFAT: the size made it to disk, the data did not
        b"\xff\xfe20261124-183000-0007",  # not UTF-8
        b"20261124-183000-0007\0",
        b"../../escaped",  # a path: must never move the events file out of the folder
        b"sub/20261124-183000-0007",
        b"..",
        b"20261124-18",  # cut short: not a recording stem, which the disk guard would never delete
    ],
    ids=["nul", "not-utf8", "trailing-nul", "dotdot", "separator", "parent", "truncated"],
)
def test_a_garbage_marker_is_ignored_with_one_warning_and_no_event_is_lost(tmp_path, caplog, marker):
    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / CURRENT_NAME).write_text(
        '{"t": 1795631400.5, "frame": 0, "faces": []}\n{"t": 1795631400.6, "frame": 1, "faces": []}\n'
    )
    (folder / STEM_MARKER_NAME).write_bytes(marker)
    with caplog.at_level(logging.WARNING):
        recovered = recover_leftover_events(folder, fallback_stem=lambda t: f"from-{int(t)}")
    assert recovered == folder / "from-1795631400.jsonl"  # the generated name, inside the folder
    assert [e["frame"] for e in read_events(recovered)] == [0, 1]
    assert sorted(os.listdir(folder)) == ["from-1795631400.jsonl"]  # marker removed, nothing else
    assert sorted(os.listdir(tmp_path)) == ["recordings"]  # nothing escaped
    assert len(caplog.records) == 1 and STEM_MARKER_NAME in caplog.text


@pytest.mark.parametrize("t", ["1e300", "NaN", "-1e300"])
def test_a_leftover_whose_first_time_is_garbage_is_named_from_its_mtime(tmp_path, t):
    current = tmp_path / CURRENT_NAME
    current.write_text(f'{{"t": {t}, "frame": 0, "faces": []}}\n')
    os.utime(current, (1795631400, 1795631400))
    recovered = recover_leftover_events(tmp_path, fallback_stem=lambda t: time.strftime("%Y%m%d", time.gmtime(t)))
    assert recovered.name == time.strftime("%Y%m%d", time.gmtime(1795631400)) + ".jsonl"
    assert recovered.read_text().startswith(f'{{"t": {t}')


def test_a_failed_marker_write_leaves_no_temporary_file(tmp_path, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    (tmp_path / MARKER_TMP).symlink_to("/dev/full")  # writing the marker fails with ENOSPC
    log = EventsLog(tmp_path)
    with caplog.at_level(logging.WARNING):
        log.open("20261124-183000-0001")
    assert "dropping event lines" in caplog.text
    assert not os.path.lexists(tmp_path / MARKER_TMP)
    assert not (tmp_path / STEM_MARKER_NAME).exists()


@pytest.mark.parametrize("leftover_events", [True, False])
def test_start_up_removes_a_stale_marker_temporary_file_and_only_that(tmp_path, leftover_events):
    (tmp_path / MARKER_TMP).write_bytes(b"")  # a full disk or a power cut during the marker write
    (tmp_path / "notes.tmp").write_text("not ours")
    if leftover_events:
        (tmp_path / CURRENT_NAME).write_text('{"t": 1795631400.5, "frame": 0, "faces": []}\n')
    recover_leftover_events(tmp_path, fallback_stem=lambda t: "20261124-183000-0001")
    expected = ["20261124-183000-0001.jsonl"] if leftover_events else []
    assert sorted(os.listdir(tmp_path)) == sorted(expected + ["notes.tmp"])


def test_a_partial_line_left_by_a_full_disk_is_cut_before_writing_again(tmp_path):
    """A write refused half-way (full disk; here a file size limit) leaves part of a line in the open file; the
    next line must not be glued to it, or both are lost."""
    result = refused_write_run(tmp_path, "retry")
    assert result.returncode == 0, result.stderr
    finished = tmp_path / "20261124-183000-0001.jsonl"
    assert result.stdout.strip() == str(finished)
    lines = finished.read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2, 5, 6]  # every line whole


def whole_lines(path: Path) -> list[dict]:
    """The events of a file, failing on any line that is not a whole JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


REFUSED_TAKE_BACK = (
    THREE_EVENT_LINES
    + """previous = log.rotate("20261124-183000-0002")
log.write(4.0, 3, [], ts=4.0, video_ts=4.0)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (previous.stat().st_size + 10, hard))  # no room to move a line there
print(log.take_back(previous))
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
log.write(5.0, 4, [])
print(log.close().name)
"""
)


def test_events_that_cannot_go_back_to_the_file_before_stay_whole_where_they_are(tmp_path):
    """Moving a failed video's events back to the file before it is refused by the disk: both files stay as
    they were, and no line is lost or torn."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", REFUSED_TAKE_BACK, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "20261124-183000-0002.jsonl"]
    assert sorted(os.listdir(tmp_path)) == ["20261124-183000-0001.jsonl", "20261124-183000-0002.jsonl"]
    before, failed = (whole_lines(tmp_path / name) for name in sorted(os.listdir(tmp_path)))
    assert [e["frame"] for e in before] == [0, 1, 2] and [e["frame"] for e in failed] == [3, 4]
    assert failed[0]["video_ts"] == 4.0


# A child that moves a failed video's events (frames 3 and 4) back to the file before (frames 0 to 2) and
# SIGKILLs itself at the point of the move named by its second argument
KILLED_TAKE_BACK = (
    THREE_EVENT_LINES
    + """import os
import fer_edge.record.events as events
previous = log.rotate("20261124-183000-0002")
log.write(4.0, 3, [], ts=4.0, video_ts=4.0)
log.write(5.0, 4, [], ts=5.0)
point = sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(name, when=lambda *args: True, then=die):
    original = getattr(events, name)
    def hooked(*args):
        result = original(*args)
        if when(*args):
            then()
        return result
    setattr(events, name, hooked)

def half_a_line_lost():  # the kernel had the moved lines, the disk only part of the last one
    os.truncate(previous, previous.stat().st_size - 5)
    die()

if point == "journalled":
    after("_write_journal")
elif point == "half-appended":
    after("_append_without_video_ts", then=half_a_line_lost)
elif point == "appended":
    after("_append_without_video_ts")
elif point == "marked":
    after("_write_atomically", when=lambda path, text: text == previous.stem)
elif point == "replaced":
    events._remove_journal = lambda *args: die()
print(log.take_back(previous), flush=True)
if point == "done":
    die()
"""
)

MOVED_BACK = ["20261124-183000-0001.jsonl"]
LEFT_WHERE_THEY_WERE = ["20261124-183000-0001.jsonl", "20261124-183000-0002.jsonl"]


@pytest.mark.parametrize(
    ("point", "files"),
    [
        ("journalled", LEFT_WHERE_THEY_WERE),
        ("half-appended", LEFT_WHERE_THEY_WERE),
        ("appended", LEFT_WHERE_THEY_WERE),
        ("marked", LEFT_WHERE_THEY_WERE),
        ("replaced", MOVED_BACK),
        ("done", MOVED_BACK),
    ],
)
def test_a_crash_while_events_go_back_leaves_each_line_in_one_file(tmp_path, point, files):
    """SIGKILL at each step of moving a failed video's events back to the file before, then the next start's
    recovery: every line is in exactly one file, whole, and nothing of the move is left behind."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_TAKE_BACK, str(tmp_path), point], capture_output=True, text=True, env=env
    )
    assert result.returncode == -9, (result.stdout, result.stderr)  # killed at that point, not finished
    recover_leftover_events(tmp_path, fallback_stem=lambda t: pytest.fail("the marker names the file"))

    assert sorted(os.listdir(tmp_path)) == files
    frames = {name: [e["frame"] for e in whole_lines(tmp_path / name)] for name in files}
    if files == MOVED_BACK:
        assert frames == {files[0]: [0, 1, 2, 3, 4]}
        assert not any("video_ts" in e for e in whole_lines(tmp_path / files[0]))
    else:
        assert frames == {files[0]: [0, 1, 2], files[1]: [3, 4]}
        assert whole_lines(tmp_path / files[1])[0]["video_ts"] == 4.0


def test_a_move_journal_that_cannot_be_settled_does_not_keep_the_leftover_events_unnamed(tmp_path, caplog):
    """Something that is not a journal where the move's journal goes (here a folder): said once and left alone,
    and the leftover events file still gets its name."""
    stem = "20261124-183000-0002"
    (tmp_path / TAKE_BACK_NAME).mkdir()
    (tmp_path / CURRENT_NAME).write_text('{"t": 1795631400.5, "frame": 0, "faces": []}\n')
    (tmp_path / STEM_MARKER_NAME).write_text(stem)
    with caplog.at_level(logging.WARNING):
        recovered = recover_leftover_events(tmp_path, fallback_stem=lambda t: pytest.fail("the marker names it"))
    assert recovered == tmp_path / f"{stem}.jsonl" and [e["frame"] for e in read_events(recovered)] == [0]
    assert sorted(os.listdir(tmp_path)) == [TAKE_BACK_NAME, recovered.name]
    assert [r.getMessage() for r in caplog.records] == [f"events: {TAKE_BACK_NAME} is not a file; left as it is"]
