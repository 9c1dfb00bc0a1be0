"""Recording after a full or read-only disk: finished events files hold whole lines only, no empty file is left per
retry, and an events file keeps the stem of its video. Real files on real (tmpfs) file systems; a read-only file
system is a bind mount's view, where the files already open stay writable and nothing new can be made or renamed."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from recorder_child import draw_frame, read_index, recorder_for, refused_write_run, run_on_full_tmpfs
from videos import decode_pyav

from fer_edge.record.events import read_events
from fer_edge.record.recovery import recover_leftovers
from fer_edge.types import Box, Face, Frame, Prediction

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FPS = 30.0
W, H = 320, 240


def a_face() -> Face:
    return Face(Box(10, 20, 60, 60), Prediction(LABELS, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)


def whole_lines(path: Path) -> list[int]:
    """The frames of an events file, failing on any line that is not a whole JSON object."""
    return [json.loads(line)["frame"] for line in path.read_text().splitlines()]


def test_a_file_finished_after_a_refused_write_holds_whole_lines_only(tmp_path):
    result = refused_write_run(tmp_path, "close")
    assert result.returncode == 0, result.stderr
    finished = tmp_path / "20261124-183000-0001.jsonl"
    assert result.stdout.strip() == str(finished)
    assert whole_lines(finished) == [0, 1, 2]


def test_a_full_disk_leaves_no_empty_or_torn_events_files(tmp_path):
    """A real 1 MB tmpfs filled by a recording process that retries every 0.1 s while the disk is full."""
    result, saved = run_on_full_tmpfs(
        tmp_path, "--frames 90 --fps 10 --pace-fps 60 --noise --retry-s 0.1 --delete-at 50 --segment-seconds 2"
    )
    assert result.returncode == 0, result.stderr
    assert "disk full" in result.stderr, result.stderr
    events = sorted(saved.glob("*.jsonl"))
    assert events and not (saved / "events.jsonl").exists()
    assert [p.name for p in events if p.stat().st_size == 0] == []  # no empty file per retry
    frames = [frame for p in events for frame in whole_lines(p)]  # every line whole
    assert frames == sorted(set(frames))  # in order, none twice
    videos = {p.stem for p in saved.glob("*.mp4")}
    assert videos and videos <= {p.stem for p in events}  # every video has its events file


def test_an_events_file_keeps_its_videos_stem_through_a_read_only_spell(tmp_path, monkeypatch):
    """The file system turns read-only mid-segment for two seconds: the open files stay writable (a bind mount's
    view), but nothing can be made or renamed. The events of the segment open then must keep its stem."""
    clock = {"t": 0.0}
    read_only = {"on": False}
    real_replace, real_open = os.replace, os.open

    def replace(src, dst, *args, **kwargs):
        if read_only["on"] and str(tmp_path) in str(dst):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if read_only["on"] and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(tmp_path) in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "open", open_)
    with recorder_for(
        tmp_path, FPS, (W, H), segment_seconds=1.0, disk_check_interval_s=0, monotonic_clock=lambda: clock["t"]
    ) as recorder:
        for i in range(180):
            read_only["on"] = 25 <= i < 85
            clock["t"] = i / FPS + (10.0 if i >= 85 else 0.0)  # the video's retry is due when space returns
            recorder.write(Frame(draw_frame(i, W, H), i, i / FPS), [a_face()])
    recover_leftovers(tmp_path)  # the next start renames what could not be renamed then

    videos = sorted(tmp_path.glob("*.mp4"))
    events = sorted(tmp_path.glob("*.jsonl"))
    assert len(videos) >= 3 and not list(tmp_path.glob("*.part"))
    assert [p.stem for p in events] == [p.stem for p in videos]  # one events file per video, of its stem
    for video, log in zip(videos, events):
        in_video = [read_index(image) for image in decode_pyav(video)]
        in_events = [e["frame"] for e in read_events(log)]
        assert set(in_events) <= set(range(in_video[0], in_video[-1] + 31)), (video.name, in_video, in_events)
        assert in_events[0] == in_video[0], (video.name, in_video, in_events)
