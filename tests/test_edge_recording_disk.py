"""Recording after a full or read-only disk: finished events files hold whole lines only, no empty file is left per
retry, and an events file keeps the stem of its video. Real files on real (tmpfs) file systems; a read-only file
system is a bind mount's view, where the files already open stay writable and nothing new can be made or renamed."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recorder_child import (
    child_env,
    draw_frame,
    read_index,
    recorder_for,
    refused_write_run,
    run_on_full_tmpfs,
    run_on_tmpfs,
)
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


UNPLUG = """
import json, logging, subprocess, sys
from pathlib import Path
from recorder_child import draw_frame, recorder_for
from fer_edge.types import Frame
mount = Path(sys.argv[1])
output = mount / "recordings"
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("fer_edge").addHandler(handler)
logging.getLogger("fer_edge").setLevel(logging.INFO)
seen = {}
with recorder_for(output, 30.0, (320, 240), segment_seconds=1.0, min_free_mb=1, disk_check_interval_s=0) as recorder:
    def feed(frames):
        for i in frames:
            recorder.write(Frame(draw_frame(i, 320, 240), i, i / 30.0), [])
    feed(range(45))
    subprocess.run(["umount", "-l", str(mount)], check=True)  # the disk is unplugged
    feed(range(45, 90))
    seen["on_the_mount_point"] = sorted(p.name for p in output.iterdir()) if output.exists() else None
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    if sys.argv[2] == "with its folder":
        output.mkdir()  # plugged in again: a new device, the folder on it or not
    feed(range(90, 150))
seen["files"] = sorted(p.name for p in output.iterdir())
seen["lines"] = lines
print(json.dumps(seen))
"""


@pytest.mark.parametrize("plugged_in", ["with its folder", "without its folder"])
def test_an_unplugged_disk_is_waited_for_not_replaced_by_a_folder_on_the_sd_card(tmp_path, plugged_in):
    """The recordings folder is on a disk that goes away mid-segment (a real tmpfs, lazily unmounted) and comes
    back: nothing is recorded into the mount point meanwhile, neither in a folder made there nor in one an earlier
    run left there (it would fill the SD card, then hide under the disk), and recording goes on in the folder on
    the disk once it is back (made again there if the disk comes back without it), said once each way."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace: {probe.stderr.decode().strip()}")
    mount = tmp_path / "disk"
    mount.mkdir()
    (mount / "recordings").mkdir()  # left in the mount point by an earlier run, hidden while the disk is mounted
    script = f"mount -t tmpfs -o size=8m tmpfs {mount} && {sys.executable} -c '{UNPLUG}' {mount} '{plugged_in}'"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=child_env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)

    assert seen["on_the_mount_point"] == []  # nothing written into the folder left there
    assert list((mount / "recordings").iterdir()) == []
    videos = [name for name in seen["files"] if name.endswith(".mp4")]
    assert len(videos) >= 2, seen
    gone = [line for line in seen["lines"] if "is gone and cannot be made again" in line]
    back = [line for line in seen["lines"] if "is back" in line and "started new files" in line]
    assert len(gone) == 1 and "is gone" in gone[0] and len(back) == 1, seen["lines"]
    assert not any("was deleted while recording" in line for line in seen["lines"])
    assert len(seen["lines"]) < 20, seen["lines"]  # 45 frames without the disk, each checking it: no line each


def floor_deletions(folder: Path, recordings: dict[str, float], wanted: tuple[int, ...]) -> list[str]:
    """The stems the disk floor deletes, in order, from ``recordings`` (stem: when its files were last written,
    100 kB each of video and events) on a 1 MB disk, asked for each of ``wanted`` bytes free in turn."""
    from fer_edge.record.diskspace import DiskGuard

    for stem, written in recordings.items():
        for suffix in (".mp4", ".jsonl"):
            (folder / f"{stem}{suffix}").write_bytes(b"\0" * 100_000)
            os.utime(folder / f"{stem}{suffix}", (written, written))

    def free() -> int:
        return 1_000_000 - sum(p.stat().st_size for p in folder.iterdir())

    deleted: list[str] = []
    for bytes_free in wanted:
        before = {p.name[:20] for p in folder.iterdir()}
        assert DiskGuard(folder, bytes_free, free_bytes=free).make_room()
        deleted += sorted(before - {p.name[:20] for p in folder.iterdir()})
    return deleted


def test_the_disk_floor_deletes_the_longest_unwritten_recording_first_whatever_its_name(tmp_path):
    """Recordings named at 1970 (the clock of a Pi not yet set) were made this morning: the floor deletes
    yesterday's first. One still last written at 1970 has no known age and goes last."""
    day = 86400.0
    now = time.time()
    recordings = {  # stem: when its files were last written
        "20261206-120000-0001": now - day,
        "19700102-000100-0001": now - 3600,  # re-dated when the clock was set
        "19700102-000200-0002": 86520.0,  # never re-dated
        "20261205-120000-0001": now - 2 * day,
    }
    deleted = floor_deletions(tmp_path, recordings, (300_000, 500_000, 700_000, 900_000))
    assert deleted == ["20261205-120000-0001", "20261206-120000-0001", "19700102-000100-0001", "19700102-000200-0002"]


def test_the_disk_floor_deletes_recordings_written_while_the_clock_ran_ahead_before_the_newest(tmp_path):
    """A clock that ran a year ahead (a wrong saved time), then set back: what a run wrote then is last written a
    year from now, and the floor deleted today's recordings first, the newest among them, to keep it."""
    day = 86400.0
    now = time.time()
    recordings = {  # stem: when its files were last written
        "20271206-120000-0001": now + 364 * day,  # on the clock a year ahead, never re-dated
        "20261205-120000-0001": now - 2 * day,
        "20261207-120000-0002": now - 600,
        "20261207-121000-0003": now - 60,  # the newest
    }
    deleted = floor_deletions(tmp_path, recordings, (300_000, 500_000, 700_000))
    assert deleted == ["20271206-120000-0001", "20261205-120000-0001", "20261207-120000-0002"]
    assert {p.name for p in tmp_path.iterdir()} == {"20261207-121000-0003.mp4", "20261207-121000-0003.jsonl"}


def test_free_space_that_cannot_be_read_deletes_no_recording(tmp_path, caplog):
    """The file system refuses to say how much is free (an I/O error, a network share whose server is gone) while
    its files can still be listed: not knowing is no reason to delete recordings, least of all every one of them
    (each deletion is followed by another read that fails). Said once, not at every check."""
    import logging

    from fer_edge.record.diskspace import DiskGuard

    for day in (1, 2, 3):
        for suffix in (".mp4", ".jsonl"):
            (tmp_path / f"2026120{day}-120000-0001{suffix}").write_bytes(b"\0" * 300_000)
    before = sorted(p.name for p in tmp_path.iterdir())

    def unreadable() -> int:
        raise OSError(errno.EIO, "Input/output error")

    guard = DiskGuard(tmp_path, 500_000, free_bytes=unreadable)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            guard.make_room()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(caplog.records) == 1 and "cannot read free space" in caplog.text


def test_a_folder_that_cannot_be_listed_is_said_once(tmp_path, caplog):
    """Below the floor, the old recordings are found by listing the folder: one that cannot be listed (an I/O
    error; here a file where the folder was) was said at every disk check, every 5 s."""
    import logging

    from fer_edge.record.diskspace import DiskGuard

    not_a_folder = tmp_path / "recordings"
    not_a_folder.write_bytes(b"")
    guard = DiskGuard(not_a_folder, 10**18)  # more than any disk has: always below the floor
    with caplog.at_level(logging.WARNING):
        assert [guard.make_room() for _ in range(3)] == [False, False, False]
    assert len(caplog.records) == 1 and "cannot list" in caplog.text, caplog.text


READ_ONLY_FLOOR = """
import json, logging, subprocess, sys
from pathlib import Path
from fer_edge.record.diskspace import MB, DiskGuard
mount = Path(sys.argv[1])
for day in range(1, 7):
    for suffix in (".mp4", ".jsonl"):
        (mount / f"2026120{day}-120000-0001{suffix}").write_bytes(bytes(256 * 1024))
subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)  # ext4 errors=remount-ro
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("fer_edge").addHandler(handler)
guard = DiskGuard(mount, 3 * MB)  # about 1 MB free of 4
print(json.dumps({"room": [guard.make_room() for _ in range(3)], "lines": lines}))
"""


def test_a_disk_turned_read_only_below_the_floor_is_said_once_not_for_every_recording(tmp_path):
    """The file system turns read-only (ext4 after an error) while free space is below the floor: no recording can
    be deleted. That is said once, not once for each file at every disk check."""
    seen = run_on_tmpfs(tmp_path, "4m", READ_ONLY_FLOOR)
    assert seen["room"] == [False, False, False]
    assert len(seen["lines"]) == 1 and "Read-only file system" in seen["lines"][0], seen["lines"]


FAILING_RETRIES = """
import resource, signal, sys
from pathlib import Path
from recorder_child import draw_frame, recorder_for
from fer_edge.types import Box, Face, Frame, Prediction
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
face = Face(Box(10, 20, 60, 60), Prediction(labels, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)
presence = sys.argv[2] == "presence"
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
clock = {"t": 0.0}
with recorder_for(
    Path(sys.argv[1]), 10.0, (320, 240), segment_seconds=60.0, presence_triggered=presence, pre_roll_s=2.0,
    monotonic_clock=lambda: clock["t"],
) as recorder:
    for i in range(250):
        clock["t"] = i / 10.0
        if i == 30:  # the disk refuses any file past 64 kB: a video fragment, not an events line
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        if i == 200:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        faces = [face] if i >= 40 or not presence else []
        recorder.write(Frame(draw_frame(i, 320, 240, noise=True), i, i / 10.0), faces)
"""


@pytest.mark.parametrize(
    ("mode", "started_videos"),
    [
        ("continuous", [0, 200]),  # fragments fail from the 4th second on, and each retry's first one
        ("presence", [None, 240]),  # each retry fails with its pre-roll, written out with the frame it opens at
    ],
)
def test_a_video_retry_that_fails_leaves_no_events_file_without_its_video(tmp_path, mode, started_videos):
    """A disk that refuses the first fragment of each retried segment (the kernel's file size limit): every retry,
    5 s apart, left a small events file without a video, one more recording in the list for each."""
    result = subprocess.run(
        [sys.executable, "-c", FAILING_RETRIES, str(tmp_path), mode], capture_output=True, text=True, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    assert "File too large" in result.stderr, result.stderr
    videos = {p.stem for p in tmp_path.glob("*.mp4")}
    events = sorted(tmp_path.glob("*.jsonl"))
    assert [p.stem in videos for p in events] == [n is not None for n in started_videos]  # no other file
    lines = [list(read_events(p)) for p in events]
    assert [e["frame"] for file in lines for e in file] == list(range(250))  # none lost, none twice
    video_starts = [[e["frame"] for e in file if "video_ts" in e] for file in lines]
    assert video_starts == [[n] if n is not None else [] for n in started_videos]


REFUSED_CLOSE = """
import resource, signal, sys
from pathlib import Path
from recorder_child import draw_frame, recorder_for
from fer_edge.types import Box, Face, Frame, Prediction
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
face = Face(Box(10, 20, 60, 60), Prediction(labels, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)
directory, faces_until, refuse_at, frames = Path(sys.argv[1]), *map(int, sys.argv[2:5])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
clock = {"t": 0.0}
with recorder_for(
    directory, 10.0, (320, 240), segment_seconds=60.0, presence_triggered=True, pre_roll_s=0.0, post_roll_s=0.0,
    monotonic_clock=lambda: clock["t"],
) as recorder:
    for i in range(frames):
        clock["t"] = i / 10.0
        if i == refuse_at:  # the disk takes nothing more of the video than it has (events lines still fit)
            part_size = max([p.stat().st_size for p in directory.glob("*.mp4.part")], default=0)
            resource.setrlimit(resource.RLIMIT_FSIZE, (max(part_size + 1000, 64 * 1024), hard))
        if i == 30:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        faces = [face] if 10 <= i < faces_until else []
        recorder.write(Frame(draw_frame(i, 320, 240, noise=True), i, i / 10.0), faces)
"""


def refused_close_run(tmp_path: Path, faces_until: int, refuse_at: int, frames: int) -> str:
    """``REFUSED_CLOSE`` in a child process: a face from frame 10 to ``faces_until``, the disk refusing more video
    from frame ``refuse_at`` to 30; what it logged."""
    result = subprocess.run(
        [sys.executable, "-c", REFUSED_CLOSE, str(tmp_path), str(faces_until), str(refuse_at), str(frames)],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("faces_until", "refuse_at", "video_frames"),
    [
        (15, 10, []),  # a face for half a second: its one fragment is written at the close, and refused
        (25, 24, list(range(10, 20))),  # the first second's fragment is on disk, the last half second refused
    ],
    ids=["all-refused", "end-refused"],
)
def test_a_segment_the_disk_refuses_at_its_close_keeps_only_whole_fragments(
    tmp_path, faces_until, refuse_at, video_frames
):
    """The disk refuses the last fragment of a segment being closed (the kernel's file size limit). FFmpeg does not
    say so: the torn file was published as a finished .mp4, with a torn end or nothing that decodes."""
    logged = refused_close_run(tmp_path, faces_until, refuse_at, 40)
    assert "the disk did not take the end of" in logged, logged
    videos = sorted(tmp_path.glob("*.mp4"))
    decoded = [[read_index(image) for image in decode_pyav(video)] for video in videos]
    assert decoded == ([video_frames] if video_frames else [])
    assert [path.name for path in tmp_path.iterdir() if path.suffix not in (".mp4", ".jsonl")] == []
    lines = [list(read_events(p)) for p in sorted(tmp_path.glob("*.jsonl"))]
    assert [e["frame"] for file in lines for e in file] == list(range(40))  # none lost, none twice


@pytest.mark.parametrize("frames", [40, 15], ids=["episode-ended", "service-stopped"])
def test_a_segment_the_disk_keeps_nothing_of_at_its_close_leaves_no_events_file_without_video(tmp_path, frames):
    """A face for half a second, whose one fragment the disk refuses when the segment closes (at the end of the
    episode, or as the service stops): its events file was left without its video, one more recording in the
    list. Its events go back to the file before it, as a failed retry's do."""
    refused_close_run(tmp_path, 15, 10, frames)
    assert list(tmp_path.glob("*.mp4")) == []
    (events,) = tmp_path.glob("*.jsonl")
    lines = list(read_events(events))
    assert [e["frame"] for e in lines] == list(range(frames))
    assert not any("video_ts" in e for e in lines)
    assert sorted(path.name for path in tmp_path.iterdir()) == [events.name]
