"""The review index (index.sqlite3 beside the recordings) matches the files: after a run, after SIGKILL and a
restart, when it is unreadable, and when it followed a segment while it was being written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import av
import pytest
from livehelpers import start_run, stop, write_config

from fer_edge.record.events import CURRENT_NAME, STEM_MARKER_NAME
from fer_edge.record.index import DB_NAME, RecordingIndex
from fer_edge.record.tracklog import OpenTrack, TrackTransitions

END_AFTER_S = 1.5


def run_to_end(config: Path, source: Path, log: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config), "--source", str(source)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 - closed with the process
        env=os.environ,
        timeout=120,
    )
    assert result.returncode == 0, log.read_text()


@pytest.fixture(scope="module")
def recorded(demo_clip, tmp_path_factory) -> Path:
    """The demo clip run through ``fer-edge run`` into 2 s segments: a folder of finished recordings and its index."""
    folder = tmp_path_factory.mktemp("indexed")
    config = write_config(
        folder / "config.yaml", {"recording": {"output_dir": str(folder / "out"), "segment_seconds": 2.0}}
    )
    run_to_end(config, demo_clip, folder / "stderr.log")
    return folder / "out"


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_events(lines: list[dict]) -> Counter:
    """Track starts, label changes and ends as the events file shows them, in frames."""
    found: Counter = Counter()
    tracks: dict[int, tuple] = {}
    for line in lines:
        for face in line["faces"]:
            if face["track"] is None:
                continue
            known = tracks.get(face["track"])
            if known is None or known[0] != face["label"]:
                found["start" if known is None else "change", face["track"], face["label"], line["frame"]] += 1
            tracks[face["track"]] = (face["label"], line["ts"], line["frame"])
        for track, (label, seen, frame) in list(tracks.items()):
            if line["ts"] - seen > END_AFTER_S:
                del tracks[track]
                found["end", track, label, frame] += 1
    for track, (label, _, frame) in tracks.items():
        found["end", track, label, frame] += 1
    return found


def video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def assert_index_matches_files(out: Path) -> int:
    """Every recording in ``out`` is indexed as its files are now, and nothing else; the number of recordings."""
    db = sqlite3.connect(out / DB_NAME)
    stems = {p.name.split(".")[0] for p in out.iterdir() if p.suffix in (".mp4", ".jsonl") and p.name[0].isdigit()}
    rows = {row[0]: row[1:] for row in db.execute("SELECT stem, bytes, jsonl_bytes, frames, complete FROM recordings")}
    assert set(rows) == stems
    for stem in sorted(stems):
        mp4, jsonl = out / f"{stem}.mp4", out / f"{stem}.jsonl"
        lines = lines_of(jsonl)
        if mp4.exists():
            assert rows[stem] == (mp4.stat().st_size, jsonl.stat().st_size, video_frames(mp4), 1), stem
            assert (out / ".thumbs" / f"{stem}.jpg").is_file()
        else:  # killed before its first fragment: the video is gone, its events stay
            assert rows[stem] == (None, jsonl.stat().st_size, len(lines), 1), stem
        events = Counter(db.execute("SELECT kind, track, label, frame FROM events WHERE stem = ?", (stem,)).fetchall())
        assert events == expected_events(lines), stem
        faces = Counter(face["label"] for line in lines for face in line["faces"] if face["label"])
        counted = dict(db.execute("SELECT label, SUM(count) FROM minutes WHERE stem = ? GROUP BY label", (stem,)))
        assert counted == dict(faces), stem
    orphans = db.execute("SELECT COUNT(*) FROM events WHERE stem NOT IN (SELECT stem FROM recordings)").fetchone()
    assert orphans == (0,)
    db.close()
    return len(stems)


def test_a_run_leaves_an_index_of_every_recording_with_its_track_events(recorded):
    assert assert_index_matches_files(recorded) >= 4
    db = sqlite3.connect(recorded / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    kinds = {kind for (kind,) in db.execute("SELECT kind FROM events")}
    assert kinds == {"start", "change", "end"}


def test_sigkill_while_recording_then_a_restart_leaves_the_index_matching_the_files(demo_clip, tmp_path):
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.yaml",
        {"source": {"realtime": True, "loop": True}, "recording": {"output_dir": str(out), "segment_seconds": 1.0}},
    )
    process = start_run(config, demo_clip, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("*.mp4"))) < 4:
            time.sleep(0.1)
        time.sleep(0.45)  # mid-segment, mid-sync
    finally:
        stop(process, signal.SIGKILL)
    before = {p.name for p in out.glob("*.mp4")}
    assert len(before) >= 4 and (out / CURRENT_NAME).exists()  # it died with a segment open

    process = start_run(config, demo_clip, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(p.name for p in out.glob("*.mp4")) - before) < 2:
            time.sleep(0.1)
    finally:
        assert stop(process) == 0, (tmp_path / "second.log").read_text()
    assert "Traceback" not in (tmp_path / "second.log").read_text()
    assert assert_index_matches_files(out) >= len(before) + 2
    db = sqlite3.connect(out / DB_NAME)
    indexed = {video for (video,) in db.execute("SELECT video FROM recordings")}
    assert before <= indexed  # what was recorded before the kill is still there, events and all


def test_an_unreadable_index_is_rebuilt_from_the_files(recorded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(recorded, out)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out / DB_NAME}{suffix}").unlink(missing_ok=True)
    (out / DB_NAME).write_bytes(b"this is not a database" * 100)
    shutil.rmtree(out / ".thumbs")
    index = RecordingIndex(out)
    index.sync()
    index.close()
    assert_index_matches_files(out)


def _open_segment(recorded: Path, tmp_path: Path) -> tuple[str, bytes, Path]:
    """A folder whose open events file (marker written, no lines yet) will hold the second recorded segment's
    lines: its stem, those lines, and the folder."""
    stem = sorted(p.stem for p in recorded.glob("*.jsonl"))[1]
    out = tmp_path / "out"
    out.mkdir()
    (out / STEM_MARKER_NAME).write_text(stem)
    return stem, (recorded / f"{stem}.jsonl").read_bytes(), out


def test_following_a_segment_as_it_is_written_gives_the_same_index_as_reading_it_finished(recorded, tmp_path):
    stem, data, out = _open_segment(recorded, tmp_path)
    index = RecordingIndex(out)
    cut = data.index(b"\n", len(data) // 2) + 1
    (out / CURRENT_NAME).write_bytes(data[: cut + 40])  # half the lines and part of the next
    index.sync()
    open_rows = index.db.execute("SELECT complete, video FROM recordings").fetchall()
    assert open_rows == [(0, f"{stem}.mp4")]
    early = index.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert early >= 1
    (out / CURRENT_NAME).write_bytes(data)  # the rest, then finished as the recorder does
    shutil.copy(recorded / f"{stem}.mp4", out / f"{stem}.mp4")
    os.replace(out / CURRENT_NAME, out / f"{stem}.jsonl")
    (out / STEM_MARKER_NAME).unlink()
    index.sync()
    followed = index.db.execute("SELECT id, kind, track, label, frame, offset_s FROM events ORDER BY id").fetchall()
    index.close()
    assert followed[early - 1][0] == early  # rows from the open file kept their ids
    assert_index_matches_files(out)
    offsets = [row[5] for row in followed]
    assert offsets and max(offsets) <= 2.0 + 1e-3
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    for name in (f"{stem}.mp4", f"{stem}.jsonl"):
        shutil.copy(out / name, fresh_dir / name)
    fresh = RecordingIndex(fresh_dir)
    fresh.sync()
    again = fresh.db.execute("SELECT id, kind, track, label, frame, offset_s FROM events ORDER BY id").fetchall()
    fresh.close()
    assert Counter(row[1:] for row in followed) == Counter(row[1:] for row in again)


def test_lines_of_the_open_file_a_failed_write_left_out_are_indexed_once_the_index_writes_again(recorded, tmp_path):
    """A write refused by SQLite while following the open file (a full disk, an I/O error) rolls its rows back;
    the lines they came from are read again, so the index catches up instead of missing them for good."""
    stem, data, out = _open_segment(recorded, tmp_path)
    index = RecordingIndex(out)
    first, second = (data.index(b"\n", len(data) * k // 3) + 1 for k in (1, 2))
    (out / CURRENT_NAME).write_bytes(data[:first])
    index.sync()
    refusing = sqlite3.connect(out / DB_NAME)
    for table in ("events", "minutes"):
        refusing.execute(
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    refusing.commit()
    (out / CURRENT_NAME).write_bytes(data[:second])
    with pytest.raises(sqlite3.DatabaseError, match="disk I/O error"):
        index.sync()
    for table in ("events", "minutes"):
        refusing.execute(f"DROP TRIGGER refuse_{table}")
    refusing.commit()
    refusing.close()
    (out / CURRENT_NAME).write_bytes(data)
    index.sync()
    shutil.copy(recorded / f"{stem}.mp4", out / f"{stem}.mp4")
    os.replace(out / CURRENT_NAME, out / f"{stem}.jsonl")
    (out / STEM_MARKER_NAME).unlink()
    index.sync()
    index.close()
    assert_index_matches_files(out)


def test_an_output_folder_deleted_and_made_again_gets_an_index_of_its_own(recorded, tmp_path):
    """The recorder makes a deleted output folder again and records on into it: the indexer follows it into a new
    index there, rather than writing on into the deleted one, which the review page can no longer open."""
    from fer_edge.record.retention import Housekeeper

    out = tmp_path / "out"
    shutil.copytree(recorded, out, ignore=shutil.ignore_patterns(f"{DB_NAME}*", ".thumbs"))
    stems = sorted(p.stem for p in out.glob("*.mp4"))
    keeper = Housekeeper(out, None, sync_interval_s=0.02).start()
    try:
        wait_until(lambda: all((out / ".thumbs" / f"{stem}.jpg").exists() for stem in stems))
        out.rename(tmp_path / "deleted")  # at once: the indexer may be writing into it
        out.mkdir()
        made_since = "20300101-000000-0001"
        for suffix in (".mp4", ".jsonl"):
            shutil.copy(recorded / f"{stems[0]}{suffix}", out / f"{made_since}{suffix}")
        wait_until(lambda: (out / ".thumbs" / f"{made_since}.jpg").exists())
    finally:
        keeper.close()
    assert assert_index_matches_files(out) == 1


def wait_until(condition, timeout_s: float = 60.0) -> None:  # noqa: ANN001 - a test helper
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


def test_a_video_finished_while_its_events_go_on_is_listed_with_its_faces_and_thumbnail(tmp_path):
    """Presence-triggered video ends after the post-roll; its events file goes on until the segment is full (five
    minutes by default). Meanwhile the recording is listed with what its events so far say (faces, track events)
    and its video's duration and thumbnail, not as a video without a face."""
    from recorder_child import draw_frame, recorder_for

    from fer_edge.record.tracklog import probe_video
    from fer_edge.types import Box, Face, Frame, Prediction

    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    face = Face(Box(10, 20, 60, 60), Prediction(labels, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)
    out = tmp_path / "out"
    recorder = recorder_for(out, 30.0, (320, 240), segment_seconds=60.0, presence_triggered=True, post_roll_s=0.5)
    with recorder:
        for i in range(120):
            recorder.write(Frame(draw_frame(i, 320, 240), i, i / 30.0), [face] if 15 <= i < 60 else [])
        [video] = out.glob("*.mp4")
        assert (out / CURRENT_NAME).exists() and (out / STEM_MARKER_NAME).read_text() == video.stem
        index = RecordingIndex(out)
        index.sync()
        row = index.db.execute(
            "SELECT duration_s, faces, thumbnail FROM recordings WHERE stem = ?", (video.stem,)
        ).fetchone()
        kinds = [kind for (kind,) in index.db.execute("SELECT kind FROM events WHERE stem = ?", (video.stem,))]
        assert row == (probe_video(video).duration_s, 1, 1) and kinds[:1] == ["start"]
        assert (out / ".thumbs" / f"{video.stem}.jpg").is_file()
    index.sync()
    index.close()
    assert_index_matches_files(out)


@pytest.mark.parametrize(
    "garbage",
    [
        '{"t":1e300,"ts":1.0,"frame":1,"faces":[{"track":999,"label":"happy"}]}',
        '{"t":1795631400.5,"ts":1.0,"frame":100000000000000000000000,"faces":[{"track":999,"label":"happy"}]}',
        '{"t":1795631400.5,"ts":1.0,"frame":1,"faces":[{"track":100000000000000000000000,"label":"happy"}]}',
        '{"t":1' + "0" * 400 + ',"ts":1.0,"frame":1,"faces":[]}',
    ],
    ids=["time", "frame", "track", "a number no float holds"],
)
def test_numbers_out_of_any_range_in_an_events_line_never_stop_the_index(recorded, tmp_path, garbage):
    """A damaged events line can still be JSON, with numbers SQLite cannot store or no clock can read: what cannot
    be stored is left out (a line at no time, a face with no track), rather than failing every sync and leaving
    the index behind for good."""
    out = tmp_path / "out"
    shutil.copytree(recorded, out, ignore=shutil.ignore_patterns(f"{DB_NAME}*", ".thumbs"))
    damaged = sorted(out.glob("*.jsonl"))[-1]
    lines = damaged.read_text().splitlines(keepends=True)
    damaged.write_text("".join(lines[:3]) + garbage + "\n" + "".join(lines[3:]))
    index = RecordingIndex(out)
    index.sync()
    counted = dict(index.db.execute("SELECT stem, frames FROM recordings"))
    index.close()
    assert set(counted) == {p.stem for p in out.glob("*.mp4")}
    assert counted[damaged.stem] == video_frames(out / f"{damaged.stem}.mp4")


def test_recordings_deleted_from_the_folder_leave_the_index(recorded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(recorded, out)
    gone = sorted(p.stem for p in out.glob("*.mp4"))[0]
    for path in out.glob(f"{gone}.*"):
        path.unlink()  # as the disk floor does
    index = RecordingIndex(out)
    index.sync()
    index.close()
    assert not (out / ".thumbs" / f"{gone}.jpg").exists()
    assert_index_matches_files(out)


@pytest.mark.parametrize(("error", "made_later"), [(errno.ENOSPC, True), (errno.EIO, False)])
def test_a_thumbnail_the_disk_had_no_room_for_is_made_once_there_is(recorded, tmp_path, monkeypatch, error, made_later):
    """The disk is full when a recording is indexed, and has room again at the next sync: its thumbnail comes then,
    without waiting for the folder to change. A thumbnail that failed for another cause is not tried at each
    sync (a video FFmpeg cannot read would be decoded again every few seconds)."""
    from fer_edge.record import index as index_module

    out = tmp_path / "out"
    shutil.copytree(recorded, out)
    shutil.rmtree(out / ".thumbs", ignore_errors=True)
    (out / DB_NAME).unlink(missing_ok=True)
    stem = sorted(p.stem for p in out.glob("*.mp4"))[0]
    real = index_module.write_thumbnail

    def failing(video: Path, offset_s: float, target: Path) -> bool:
        if target.stem == stem:
            raise OSError(error, os.strerror(error))
        return real(video, offset_s, target)

    monkeypatch.setattr(index_module, "write_thumbnail", failing)
    index = RecordingIndex(out)
    try:
        index.sync()
        assert not (out / ".thumbs" / f"{stem}.jpg").exists()
        monkeypatch.setattr(index_module, "write_thumbnail", real)  # room again
        index.sync()  # the folder did not change, and a minute has not passed
        assert (out / ".thumbs" / f"{stem}.jpg").is_file() == made_later
    finally:
        index.close()


def test_a_thumbnail_the_disk_refuses_leaves_no_part_of_itself(recorded, tmp_path, monkeypatch):
    """The thumbnail is made on disk before it takes its name (a power cut must not leave an empty one the index
    counts as made), and a disk that refuses it keeps no half-written file to fill it further."""
    from fer_edge.record import tracklog

    video = sorted(recorded.glob("*.mp4"))[0]
    target = tmp_path / "thumb.jpg"
    synced = []

    def full_disk(fd: int) -> None:
        synced.append(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tracklog.os, "fsync", full_disk)
    with pytest.raises(OSError):
        tracklog.write_thumbnail(video, 0.5, target)
    assert synced and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert tracklog.write_thumbnail(video, 0.5, target) and target.stat().st_size > 0
    assert list(tmp_path.iterdir()) == [target]


def face_sharpness(thumbnail: Path, jsonl: Path) -> list[float]:
    """Laplacian variance inside each face of the thumbnail's frame (the first with the most faces)."""
    import cv2

    lines = lines_of(jsonl)
    most = max(len(line["faces"]) for line in lines)
    image = cv2.imread(str(thumbnail), cv2.IMREAD_GRAYSCALE)
    scale = image.shape[1] / 640  # the demo clip is 640 px wide
    found = []
    for face in next(line for line in lines if len(line["faces"]) == most)["faces"]:
        x, y, w, h = (round(v * scale) for v in face["box"])
        inner = image[y + h // 5 : y + h - h // 5, x + w // 5 : x + w - w // 5]  # inside the drawn box and label
        found.append(float(cv2.Laplacian(inner, cv2.CV_64F).var()))
    return found


def test_thumbnails_come_from_the_recording_so_privacy_blurs_them(recorded, demo_clip, tmp_path):
    config = write_config(
        tmp_path / "config.yaml",
        {"recording": {"output_dir": str(tmp_path / "out"), "segment_seconds": 2.0}, "privacy": {"mode": "blur"}},
    )
    run_to_end(config, demo_clip, tmp_path / "stderr.log")
    plain = sorted(recorded.glob("*.jsonl"))
    blurred = sorted((tmp_path / "out").glob("*.jsonl"))
    assert len(plain) == len(blurred)
    compared = 0
    for clear, hidden in zip(plain, blurred):  # the same stretch of the clip, with and without privacy
        sharp = face_sharpness(recorded / ".thumbs" / f"{clear.stem}.jpg", clear)
        soft = face_sharpness(tmp_path / "out" / ".thumbs" / f"{hidden.stem}.jpg", hidden)
        if not sharp:
            continue
        compared += 1
        assert max(soft) < 0.1 * min(sharp), (clear.name, sharp, soft)
    assert compared >= 3


def test_a_pre_roll_is_in_the_offsets_so_a_moment_plays_where_it_happened(demo_clip, tmp_path):
    import cv2
    import numpy as np

    # 1.5 s of an empty grey picture, then the demo clip's first 2 s: a presence-triggered recording whose 1 s
    # pre-roll comes before the first events line of its file
    capture = cv2.VideoCapture(str(demo_clip))
    fps = capture.get(cv2.CAP_PROP_FPS)
    faces = []
    while len(faces) < round(2 * fps):
        ok, frame = capture.read()
        assert ok
        faces.append(frame)
    capture.release()
    grey = np.full_like(faces[0], 128)
    clip = tmp_path / "walk-in.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=round(fps))
        stream.width, stream.height = grey.shape[1], grey.shape[0]
        for image in [grey] * round(1.5 * fps) + faces:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.yaml",
        {"recording": {"output_dir": str(out), "presence_triggered": True, "pre_roll_s": 1.0}},
    )
    run_to_end(config, clip, tmp_path / "stderr.log")

    assert_index_matches_files(out)
    (video,) = out.glob("*.mp4")
    stem = video.stem  # the grey's own events file has no video
    db = sqlite3.connect(out / DB_NAME)
    (start,) = db.execute("SELECT start FROM recordings WHERE stem = ?", (stem,)).fetchone()
    first = db.execute(
        "SELECT t, offset_s, frame FROM events WHERE stem = ? AND kind = 'start' ORDER BY offset_s LIMIT 1", (stem,)
    ).fetchone()
    db.close()
    line = lines_of(out / f"{stem}.jsonl")[0]
    assert line["video_ts"] < line["ts"]
    assert abs(first[1] - 1.0) <= 1.5 / fps  # the moment is a pre-roll into the video, not at its start
    assert abs(start - (first[0] - first[1])) < 0.01  # the recording starts with its pre-roll
    with av.open(str(out / f"{stem}.mp4")) as container:
        recorded = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    # at offset_s the video shows the frame of that moment (overlays and two codecs apart), not one around it
    shown = recorded[round(first[1] * fps)].astype(float)
    moment = first[2] - round(1.5 * fps)
    nearby = range(max(0, moment - 8), min(len(faces), moment + 9))
    differences = {i: np.abs(shown - cv2.cvtColor(faces[i], cv2.COLOR_BGR2GRAY)).mean() for i in nearby}
    assert abs(min(differences, key=differences.__getitem__) - moment) <= 1, differences


def test_track_transitions_start_change_end_and_survive_a_rewound_clock():
    # the rules the live view and the review index share
    tracks: TrackTransitions[str] = TrackTransitions(end_after_s=1.0)
    assert tracks.see(1, "happy", 10.0, "first") == "start"
    assert tracks.see(1, "happy", 10.5, "second") is None
    assert tracks.see(1, "sad", 10.8, "third") == "change"
    assert tracks.ended(11.5) == []
    # a looped file starts its clock again: the jump back ends nothing, a second of absence after it does
    assert tracks.ended(0.0) == [] and tracks.ended(0.9) == []
    assert tracks.ended(1.1) == [OpenTrack(1, "sad", 0.0, "third")]  # seen at 10.8, clamped to the rewind
    assert tracks.see(2, None, 2.0, "unlabelled") == "start"
    assert tracks.finish() == [OpenTrack(2, None, 2.0, "unlabelled")] and tracks.ended(99.0) == []
