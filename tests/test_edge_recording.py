"""Recorder: real fragmented MP4 files decoded with PyAV and OpenCV, real processes killed mid-recording."""

from __future__ import annotations

import calendar
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from recorder_child import CHILD, child_env, draw_frame, read_index, recorder_for, run_on_full_tmpfs
from videos import decode_opencv, decode_pyav

from fer_edge.capture.sources import VideoFileSource
from fer_edge.record.diskspace import MB, finished_recordings
from fer_edge.record.events import STEM_MARKER_NAME, read_events
from fer_edge.record.recorder import (
    Recorder,
    RecordingError,
    count_video_frames,
    recover_partial_recordings,
)
from fer_edge.record.recovery import recover_leftovers
from fer_edge.record.videosink import MAX_PRE_ROLL_BYTES, RECENT_SEGMENTS
from fer_edge.types import Box, Face, Frame, Prediction

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FPS = 30.0
W, H = 320, 240


def a_face() -> Face:
    return Face(Box(10, 20, 60, 60), Prediction(LABELS, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)


def feed(recorder: Recorder, indices, faces_at=lambda i: [a_face()], width=W, height=H) -> None:
    for i in indices:
        recorder.write(Frame(draw_frame(i, width, height), i, i / FPS), faces_at(i))


def recorded_indices(paths: list[Path]) -> list[int]:
    return [read_index(image) for path in paths for image in decode_pyav(path)]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def wait_for_written(proc: subprocess.Popen, count: int) -> int:
    written = 0
    for line in proc.stdout:
        if line.startswith("written "):
            written = int(line.split()[1])
            if written >= count:
                break
    return written


def test_every_frame_is_recorded_and_decodes_with_pyav_and_opencv(tmp_path):
    width, height = 640, 360
    with recorder_for(tmp_path, FPS, (width, height)) as recorder:
        feed(recorder, range(75), width=width, height=height)
    assert names(tmp_path) == sorted([recorder.segments[0].name, recorder.segments[0].stem + ".jsonl"])
    [segment] = recorder.segments

    by_pyav, by_opencv = decode_pyav(segment), decode_opencv(segment)
    assert len(by_pyav) == len(by_opencv) == 75
    assert [read_index(f) for f in by_pyav] == list(range(75))
    assert [read_index(f) for f in by_opencv] == list(range(75))
    for index, decoded in enumerate(by_pyav):
        error = np.abs(decoded.astype(np.int16) - draw_frame(index, width, height)).mean()
        assert error < 6, (index, error)
    with av.open(str(segment)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (width, height)
        packets = [p for p in container.demux(stream) if p.size]
        duration = float((packets[-1].pts - packets[0].pts) * stream.time_base)
        assert duration == pytest.approx(74 / FPS, abs=1e-3)
        keyframes = [round(float(p.pts * stream.time_base) * FPS) for p in packets if p.is_keyframe]
    assert keyframes == [0, 30, 60]  # one per fragment_seconds: the fragment boundaries
    with open(segment, "rb") as f:
        head = f.read(64 * 1024)
    assert b"moof" in head and b"mvex" in head  # fragmented MP4


def test_segments_rotate_with_their_events_files(tmp_path):
    with recorder_for(tmp_path, FPS, (W, H), segment_seconds=1.0) as recorder:
        feed(recorder, range(100))
    segments = recorder.segments
    assert len(segments) == 4
    assert [count_video_frames(s, decode=True) for s in segments] == [30, 30, 30, 10]
    assert recorded_indices(segments) == list(range(100))
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "events.jsonl").exists()
    events_files = sorted(tmp_path.glob("*.jsonl"))
    assert [p.stem for p in events_files] == [s.stem for s in segments]
    frames_per_file = [[e["frame"] for e in read_events(p)] for p in events_files]
    assert frames_per_file == [list(range(0, 30)), list(range(30, 60)), list(range(60, 90)), list(range(90, 100))]


def test_recording_stays_on_while_one_segment_ends_and_the_next_starts(tmp_path, monkeypatch):
    """The live view and the metrics read ``recording`` from other threads: a segment's end (flush, fsync,
    rename) on the way to the next one is no stop; only the last one's is."""
    from fer_edge.record.segment import VideoSegment

    seen_while_finishing: list[bool] = []
    finish = VideoSegment.finish

    def finishing(segment):
        seen_while_finishing.append(recorder.recording)
        return finish(segment)

    monkeypatch.setattr(VideoSegment, "finish", finishing)
    with recorder_for(tmp_path, FPS, (W, H), segment_seconds=1.0) as recorder:
        feed(recorder, range(70))
        assert recorder.recording
    assert seen_while_finishing == [True, True, False]  # two rollovers, then the close
    assert not recorder.recording and len(recorder.segments) == 3


def test_each_finished_segment_hands_free_heap_memory_back(tmp_path, monkeypatch):
    """Left to itself, glibc's heap keeps a little more of each segment's memory resident, which adds up over
    months; the trim runs once a segment is finalized, never per frame."""
    from fer_edge.record import videosink

    finished_when_released: list[int] = []
    monkeypatch.setattr(
        videosink, "release_free_memory", lambda: finished_when_released.append(len(list(tmp_path.glob("*.mp4"))))
    )
    with recorder_for(tmp_path, FPS, (W, H), segment_seconds=1.0) as recorder:
        feed(recorder, range(70))
        assert finished_when_released == [1, 2]  # two rollovers, each after its segment was renamed to .mp4
    assert finished_when_released == [1, 2, 3]  # and the close


def _recording_child(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), "--dir", str(folder), "--fps", str(FPS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def _killed_after(proc: subprocess.Popen, frames: int) -> int:
    """SIGKILL once the recording child has written ``frames`` frames; how many it had written."""
    try:
        written = wait_for_written(proc, frames)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert written >= frames, f"the recording child stopped early: {proc.stderr.read()}"
    return written


def test_sigkill_loses_at_most_the_last_two_seconds_and_restart_recovers(tmp_path):
    written = _killed_after(_recording_child(tmp_path), int(3 * FPS))
    [part] = tmp_path.glob("*.mp4.part")

    with av.open(str(part)) as container:  # the unfinished file itself is playable
        survived = [read_index(f.to_ndarray(format="bgr24")) for f in container.decode(video=0)]
    lost_s = (written - len(survived)) / FPS
    print(f"\nSIGKILL after {written} frames ({written / FPS:.2f} s): {len(survived)} survived, lost {lost_s:.2f} s")
    assert survived == list(range(len(survived)))
    assert 0 <= lost_s <= 2.0
    events = list(read_events(tmp_path / "events.jsonl"))
    assert written <= len(events) <= written + 1  # every line written before the kill is there

    recover_leftovers(tmp_path)  # start-up recovers what the crash left
    [video] = tmp_path.glob("*.mp4")
    assert video.name == part.name[: -len(".part")]
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "events.jsonl").exists()
    assert recorded_indices([video]) == survived
    assert len(decode_opencv(video)) == len(survived)
    assert [e["frame"] for e in read_events(tmp_path / (video.stem + ".jsonl"))] == list(range(len(events)))


def test_after_a_power_cut_that_emptied_the_events_marker_events_keep_their_videos_name(tmp_path, caplog):
    """The marker naming the open events file is written without an fsync: a power cut soon after a segment
    opened can leave it empty. The events of a video segment then still go by the name of the video the
    interrupted run left open, not by a name of their own that lists them apart from their video."""
    written = _killed_after(_recording_child(tmp_path, "--pace-fps", "0"), int(2 * FPS))
    [part] = tmp_path.glob("*.mp4.part")
    (tmp_path / STEM_MARKER_NAME).write_bytes(b"")

    with caplog.at_level(logging.WARNING):
        recover_leftovers(tmp_path)
    [video] = tmp_path.glob("*.mp4")
    [events] = tmp_path.glob("*.jsonl")
    assert video.name == part.name[: -len(".part")]
    assert events.stem == video.stem
    assert [e["frame"] for e in read_events(events)][:written] == list(range(written))
    assert STEM_MARKER_NAME in caplog.text


def test_sigterm_finalizes_a_complete_mp4(tmp_path):
    proc = _recording_child(tmp_path)
    try:
        wait_for_written(proc, int(1.5 * FPS))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    written = int(out.split()[-1])  # "closed N"
    assert "closed" in out
    [video] = tmp_path.glob("*.mp4")
    assert not list(tmp_path.glob("*.part"))
    assert recorded_indices([video]) == list(range(written))
    assert len(decode_opencv(video)) == written
    assert [e["frame"] for e in read_events(tmp_path / (video.stem + ".jsonl"))] == list(range(written))


def test_restart_cuts_a_half_written_fragment_and_recovers_the_rest(tmp_path):
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(100))
    [video] = recorder.segments
    data = video.read_bytes()
    last_fragment = data.rindex(b"moof") - 4
    part = video.with_name(video.name + ".part")
    part.write_bytes(data[: last_fragment + (len(data) - last_fragment) // 2])  # died inside the last fragment
    video.unlink()

    recovered = recover_partial_recordings(tmp_path)
    assert recovered == [video]
    assert recorded_indices([video]) == list(range(90))  # the last fragment (frames 90..99) was incomplete
    assert len(decode_opencv(video)) == 90


def test_restart_cuts_a_last_fragment_whose_frames_never_reached_the_disk(tmp_path, caplog):
    """FAT and exFAT (a USB stick) grow a file before its data is written: after a power cut the last fragment's
    boxes are whole and its frames zeros. A player would show them as garbage, or stop there."""
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(100))
    [video] = recorder.segments
    data = video.read_bytes()
    last_mdat = data.rindex(b"mdat") - 4
    mdat_end = last_mdat + int.from_bytes(data[last_mdat : last_mdat + 4], "big")
    part = video.with_name(video.name + ".part")
    part.write_bytes(data[: last_mdat + 8] + bytes(mdat_end - last_mdat - 8))  # a .part has no index at its end
    video.unlink()

    with caplog.at_level(logging.INFO):
        assert recover_partial_recordings(tmp_path) == [video]
    assert recorded_indices([video]) == list(range(90))  # frames 90..99 were zeros
    assert len(decode_opencv(video)) == 90
    assert "(90 frames, cut" in caplog.text


@pytest.mark.parametrize("zeros_from", ["mdat", "moof"])
def test_restart_cuts_a_last_fragment_whose_boxes_never_reached_the_disk(tmp_path, zeros_from):
    """After a power cut on FAT or exFAT the zeros can start before the last fragment's frames: at its ``mdat``
    box (only its ``moof`` reached the disk) or at the fragment's start. Neither zeros nor a ``moof`` without its
    data are kept in the video: the recording ends with the last fragment that reached the disk."""
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(100))
    [video] = recorder.segments
    data = video.read_bytes()
    last_moof, last_mdat = data.rindex(b"moof") - 4, data.rindex(b"mdat") - 4
    mdat_end = last_mdat + int.from_bytes(data[last_mdat : last_mdat + 4], "big")
    zeros_at = last_mdat if zeros_from == "mdat" else last_moof
    part = video.with_name(video.name + ".part")
    part.write_bytes(data[:zeros_at] + bytes(mdat_end - zeros_at))
    video.unlink()

    assert recover_partial_recordings(tmp_path) == [video]
    assert video.stat().st_size == last_moof
    assert recorded_indices([video]) == list(range(90))
    assert count_video_frames(video, decode=True) == 90


def test_part_without_any_fragment_is_dropped_at_restart(tmp_path, caplog):
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(10))
    [video] = recorder.segments
    data = video.read_bytes()
    video.with_name(video.name + ".part").write_bytes(data[: data.index(b"moof") - 4])  # header only
    video.unlink()
    with caplog.at_level(logging.WARNING):
        assert recover_partial_recordings(tmp_path) == []
    assert not list(tmp_path.glob("*.mp4*"))
    assert "holds no complete frame" in caplog.text


def test_an_empty_part_is_dropped_at_restart_not_kept_as_broken(tmp_path, caplog):
    """A power cut in the first second of a segment leaves its ``.part`` empty (made, nothing written to the disk
    yet); it holds no more than one with only headers."""
    part = tmp_path / "20261207-120000-0001.mp4.part"
    part.touch()
    with caplog.at_level(logging.WARNING):
        assert recover_partial_recordings(tmp_path) == []
    assert not list(tmp_path.glob("*.mp4*"))
    assert "holds no complete frame" in caplog.text and "cannot be read" not in caplog.text


class FakeDisk:
    """A disk of ``capacity`` bytes holding the files of one directory, plus ``other_use`` bytes."""

    def __init__(self, directory: Path, capacity: int, other_use: int = 0):
        self.directory, self.capacity, self.other_use = directory, capacity, other_use

    def __call__(self) -> int:
        used = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        return self.capacity - self.other_use - used


def test_names_keep_recording_order_when_the_wall_clock_steps_back(tmp_path, caplog):
    """A Pi has no RTC and NTP steps its clock: the disk guard deletes by name, oldest first, so a clock that
    jumps back mid-run (or across a restart, to the time last saved) must not make the newest recordings look
    oldest. Names run at most a day ahead of the clock (test_edge_segmentclock)."""
    make_old_recording(tmp_path, "20261127-120000-0001", 1000)  # a previous run's recording
    clock = {"t": float(calendar.timegm((2026, 11, 27, 13, 0, 0)))}
    with caplog.at_level(logging.WARNING, logger="fer_edge.record.recorder"):
        with recorder_for(tmp_path, FPS, (W, H), segment_seconds=1.0, wall_clock=lambda: clock["t"]) as recorder:
            for i in range(120):
                if i == 60:
                    clock["t"] -= 20 * 3600
                clock["t"] += 1 / FPS
                recorder.write(Frame(draw_frame(i, W, H), i, i / FPS), [a_face()])
    written = ["20261127-120000-0001"] + [path.stem for path in recorder.segments]
    assert [stem for stem, _ in finished_recordings(tmp_path)] == written  # name order is recording order
    assert recorded_indices(recorder.segments) == list(range(120))
    assert any("behind the newest recording" in r.getMessage() for r in caplog.records)


def make_old_recording(directory: Path, stem: str, size: int) -> None:
    (directory / f"{stem}.mp4").write_bytes(b"\0" * size)
    (directory / f"{stem}.jsonl").write_text('{"t": 0, "frame": 0, "faces": []}\n')


def test_disk_floor_deletes_the_oldest_recordings_first(tmp_path):
    for stem in ("20260101-000000-0001", "20260102-000000-0001", "20260103-000000-0001"):
        make_old_recording(tmp_path, stem, 3 * MB)
    (tmp_path / "notes.txt").write_text("not a recording")
    disk = FakeDisk(tmp_path, capacity=20 * MB, other_use=7 * MB)  # 4 MB free, floor 9 MB: two must go
    with recorder_for(tmp_path, FPS, (W, H), min_free_mb=9, free_bytes=disk, disk_check_interval_s=0) as recorder:
        feed(recorder, range(20))
    remaining = names(tmp_path)
    assert "20260101-000000-0001.mp4" not in remaining and "20260101-000000-0001.jsonl" not in remaining
    assert "20260102-000000-0001.mp4" not in remaining and "20260102-000000-0001.jsonl" not in remaining
    assert "20260103-000000-0001.mp4" in remaining and "notes.txt" in remaining
    assert recorded_indices(recorder.segments) == list(range(20))


def test_recording_pauses_without_space_and_resumes_when_it_returns(tmp_path, caplog):
    disk = FakeDisk(tmp_path, capacity=0)
    recorder = recorder_for(tmp_path, FPS, (W, H), min_free_mb=1, free_bytes=disk, disk_check_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="fer_edge"):
        feed(recorder, range(40))
    assert recorder.paused and not recorder.recording
    assert not list(tmp_path.glob("*.mp4*"))
    assert len([r for r in caplog.records if "paused" in r.getMessage()]) == 1  # one warning, not one per frame

    disk.capacity = 100 * MB
    feed(recorder, range(40, 70))
    recorder.close()
    assert not recorder.paused
    assert recorded_indices(recorder.segments) == list(range(40, 70))
    events = [e["frame"] for p in sorted(tmp_path.glob("*.jsonl")) for e in read_events(p)]
    assert events == list(range(70))  # events went on while video was paused


def test_full_disk_never_stops_the_loop_and_recording_resumes(tmp_path):
    """A real 1 MB tmpfs (mounted in a private user namespace) filled by a recording process."""
    # 10 fps: a fragment (one keyframe interval) every 10 frames of ~25 kB noise; 60 frames/s of wall clock
    result, saved = run_on_full_tmpfs(
        tmp_path, "--frames 90 --fps 10 --pace-fps 60 --noise --retry-s 0.1 --delete-at 50"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["closed", "90"]
    assert "disk full" in result.stderr and "writing video again" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(saved.glob("*.part"))
    videos = sorted(saved.glob("*.mp4"))
    assert len(videos) >= 2, result.stderr  # one cut short by the full disk, one after space came back
    frames = [count_video_frames(v, decode=True) for v in videos]
    assert all(n > 0 for n in frames) and sum(frames) < 90


def test_presence_triggered_records_episodes_with_pre_and_post_roll(tmp_path):
    present = set(range(150, 210)) | set(range(450, 480))
    recorder = recorder_for(tmp_path, FPS, (W, H), presence_triggered=True, pre_roll_s=1.0, post_roll_s=1.0)
    recording_after = []
    for i in range(600):
        recorder.write(Frame(draw_frame(i, W, H), i, i / FPS), [a_face()] if i in present else [])
        recording_after.append(recorder.recording)
        if i == 140:
            assert not list(tmp_path.glob("*.mp4*"))  # nobody there yet: no video file at all
    recorder.close()
    # a segment is open from the first face to the end of the post-roll, and only then
    assert [i for i, rec in enumerate(recording_after) if rec] == list(range(150, 240)) + list(range(450, 510))
    first, second = recorder.segments
    assert recorded_indices([first]) == list(range(120, 240))  # 30 pre-roll + 60 with a face + 30 post-roll
    assert recorded_indices([second]) == list(range(420, 510))
    events_files = sorted(tmp_path.glob("*.jsonl"))
    assert [e["frame"] for p in events_files for e in read_events(p)] == list(range(600))
    assert {first.stem, second.stem} <= {p.stem for p in events_files}
    second_events = list(read_events(tmp_path / (second.stem + ".jsonl")))
    assert second_events[0]["frame"] == 450  # the events file rotates when an episode starts


def test_presence_ring_buffer_is_bounded(tmp_path, caplog):
    recorder = recorder_for(tmp_path, FPS, (W, H), presence_triggered=True, pre_roll_s=2.0)
    assert recorder.video._ring.capacity <= 2 * FPS + 2
    recorder.close()
    with caplog.at_level(logging.WARNING):
        big = recorder_for(tmp_path, FPS, (1920, 1080), presence_triggered=True, pre_roll_s=10.0)
    assert big.video._ring.slots.nbytes <= MAX_PRE_ROLL_BYTES and big.video.pre_roll_s < 10.0
    assert "shortened" in caplog.text
    big.close()


def test_events_only_mode_writes_no_video(tmp_path):
    with recorder_for(tmp_path, FPS, (W, H), record_video=False, segment_seconds=1.0) as recorder:
        feed(recorder, range(45))
    assert not list(tmp_path.glob("*.mp4*")) and recorder.segments == []
    events_files = sorted(tmp_path.glob("*.jsonl"))
    assert [len(list(read_events(p))) for p in events_files] == [30, 15]
    event = json.loads(events_files[0].read_text().splitlines()[0])
    assert event["faces"][0]["label"] == "happy" and event["faces"][0]["box"] == [10, 20, 60, 60]


def test_missing_encoder_falls_back_to_mpeg4(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), recorder_for(tmp_path, FPS, (W, H), codec="no-such-encoder") as recorder:
        feed(recorder, range(40))
    assert "falling back to mpeg4" in caplog.text
    [video] = recorder.segments
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert recorded_indices([video]) == list(range(40))
    assert len(decode_opencv(video)) == 40


def test_close_is_idempotent_and_write_after_close_fails(tmp_path):
    recorder = recorder_for(tmp_path, FPS, (W, H))
    feed(recorder, range(45))
    started = time.monotonic()
    recorder.close()
    closing_s = time.monotonic() - started
    recorder.close()
    print(f"\nclose() took {closing_s * 1000:.1f} ms")
    assert len(recorder.segments) == 1
    with pytest.raises(RecordingError):
        feed(recorder, [45])


def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(RecordingError, match="at least 2x2"):
        recorder_for(tmp_path, FPS, (1, 240))
    with pytest.raises(RecordingError, match="positive"):
        recorder_for(tmp_path, 0, (W, H))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RecordingError, match="cannot create"):
        recorder_for(blocker / "sub", FPS, (W, H))


def test_timestamps_going_back_start_new_files(tmp_path):
    """A looping replay restarts its timestamps at 0: the recording starts a new segment instead of stalling."""
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        for i in range(90):
            loop_position = i % 45
            recorder.write(Frame(draw_frame(i, W, H), i, loop_position / FPS), [a_face()])
    assert [recorded_indices([s]) for s in recorder.segments] == [list(range(45)), list(range(45, 90))]
    events_files = sorted(tmp_path.glob("*.jsonl"))
    assert [p.stem for p in events_files] == [s.stem for s in recorder.segments]


def test_a_damaged_part_is_kept_byte_for_byte_as_broken(tmp_path, caplog):
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(180))
    [video] = recorder.segments
    damaged = b"\x7f\xff\xff\xff" + video.read_bytes()[4:]  # the first box's size overwritten
    video.with_name(video.name + ".part").write_bytes(damaged)
    video.unlink()
    with caplog.at_level(logging.WARNING):
        assert recover_partial_recordings(tmp_path) == []
    assert names(tmp_path) == sorted([video.name + ".broken", video.stem + ".jsonl"])
    assert video.with_name(video.name + ".broken").read_bytes() == damaged  # not one byte cut
    assert "cannot be read" in caplog.text


def test_a_part_that_is_not_an_mp4_is_kept_byte_for_byte_as_broken(tmp_path):
    mkv = tmp_path / "20260101-000000-0001.mkv"
    with av.open(str(mkv), "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, W, H), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = mkv.read_bytes()
    assert count_video_frames(mkv) == 30  # a valid video, just not a fragmented MP4
    part = mkv.with_name("20260101-000000-0001.mp4.part")
    mkv.rename(part)
    assert recover_partial_recordings(tmp_path) == []
    assert names(tmp_path) == ["20260101-000000-0001.mp4.broken"]
    assert (tmp_path / "20260101-000000-0001.mp4.broken").read_bytes() == data


def test_a_part_with_a_torn_first_fragment_is_kept_rather_than_deleted(tmp_path):
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(100))
    [video] = recorder.segments
    data = video.read_bytes()
    torn = data[: data.index(b"moof") + 100]  # headers, then the first fragment cut short: no complete frame
    video.with_name(video.name + ".part").write_bytes(torn)
    video.unlink()
    assert recover_partial_recordings(tmp_path) == []
    assert video.with_name(video.name + ".broken").read_bytes() == torn


def test_a_garbage_events_marker_does_not_stop_the_start_and_no_event_is_lost(tmp_path, caplog):
    (tmp_path / "events.jsonl").write_text('{"t":1,"frame":0,"faces":[]}\n')
    (tmp_path / STEM_MARKER_NAME).write_bytes(b"\0" * 20)  # a power cut on FAT/exFAT
    with caplog.at_level(logging.WARNING):
        recover_leftovers(tmp_path)
    with caplog.at_level(logging.WARNING), recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(5))
    [video] = recorder.segments
    [old] = [p for p in tmp_path.glob("*.jsonl") if p.stem != video.stem]
    assert [e["frame"] for e in read_events(old)] == [0]  # the interrupted run's events, under their own name
    assert [e["frame"] for e in read_events(tmp_path / (video.stem + ".jsonl"))] == list(range(5))
    assert recorded_indices([video]) == list(range(5))
    assert len(caplog.records) == 1 and STEM_MARKER_NAME in caplog.text


def test_an_unexpected_error_while_recovering_leftovers_does_not_stop_the_start(tmp_path, monkeypatch, caplog):
    def broken_recovery(*args):
        raise ValueError("a bug in the recovery code")

    monkeypatch.setattr("fer_edge.record.recovery.recover_leftover_events", broken_recovery)
    with caplog.at_level(logging.WARNING):
        recover_leftovers(tmp_path)
    with caplog.at_level(logging.WARNING), recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(5))
    assert "a bug in the recovery code" in caplog.text
    assert recorded_indices(recorder.segments) == list(range(5))


def test_the_list_of_finished_segments_stays_bounded(tmp_path):
    count = RECENT_SEGMENTS + 20
    with recorder_for(
        tmp_path, FPS, (64, 48), segment_seconds=1 / FPS, fragment_seconds=1 / FPS, events=False
    ) as recorder:
        feed(recorder, range(count), width=64, height=48)  # one segment per frame
    assert len(list(tmp_path.glob("*.mp4"))) == count  # every one was recorded
    assert len(recorder.video._segments) == RECENT_SEGMENTS
    assert recorder.segments == sorted(tmp_path.glob("*.mp4"))[-RECENT_SEGMENTS:]  # the newest, oldest first


def test_odd_sized_frames_are_recorded_without_their_last_row_and_column(tmp_path, caplog):
    width, height, frames = 641, 361, 45
    clip = tmp_path / "odd.mkv"
    with av.open(str(clip), "w", format="matroska") as container:  # lossless, so every pixel can be compared
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(draw_frame(i, width, height), format="bgr24")))
        container.mux(stream.encode(None))
    source = VideoFileSource(clip)
    assert source.size == (width, height)
    output = tmp_path / "recordings"
    with caplog.at_level(logging.INFO, logger="fer_edge"), recorder_for(output, source.fps, source.size) as recorder:
        while (frame := source.read()) is not None:
            recorder.write(frame, [a_face()])
    source.close()
    [video] = recorder.segments
    with av.open(str(video)) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height) == (width - 1, height - 1)
    by_pyav = decode_pyav(video)
    assert len(by_pyav) == len(decode_opencv(video)) == frames
    assert [read_index(f) for f in by_pyav] == list(range(frames))
    for index, decoded in enumerate(by_pyav):  # cropped, not scaled: the pixels stay where they were
        error = np.abs(decoded.astype(np.int16) - draw_frame(index, width, height)[:-1, :-1]).mean()
        assert error < 6, (index, error)
    assert len([r for r in caplog.records if "641x361" in r.getMessage()]) == 1
    assert [e["frame"] for e in read_events(output / (video.stem + ".jsonl"))] == list(range(frames))


@pytest.mark.parametrize("disk_check_interval_s", [0, 3600])  # checked at every frame; between two checks
def test_an_output_folder_deleted_mid_run_is_said_once_made_again_and_recording_goes_on(
    tmp_path, caplog, disk_check_interval_s
):
    """Between two disk checks, segments roll over: the folder is made again before a file is finished or opened in
    it, rather than each file failing with its own warning (a disk "only 0 MB free", a finished file "to be
    recovered at the next start" that is gone)."""
    output = tmp_path / "recordings"
    with caplog.at_level(logging.INFO, logger="fer_edge"):
        interval = disk_check_interval_s
        with recorder_for(output, FPS, (W, H), segment_seconds=1.0, disk_check_interval_s=interval) as recorder:
            feed(recorder, range(45))
            shutil.rmtree(output)
            feed(recorder, range(45, 150))
    videos = sorted(output.glob("*.mp4"))
    assert len(videos) >= 3
    indices = recorded_indices(videos)
    assert indices == list(range(indices[0], 150)) and indices[0] <= 47  # a frame or two lost at most
    events = [e["frame"] for p in sorted(output.glob("*.jsonl")) for e in read_events(p)]
    assert events == indices
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "was deleted while recording" in warnings[0] and str(output) in warnings[0]


def test_a_file_named_like_a_recording_at_no_real_time_is_left_alone_and_stops_nothing(tmp_path):
    """A stray file whose name has a recording's shape but no real date (month 13) is not a recording: the
    recorder still starts, retention and the index still run, and none of them touches it."""
    from fer_edge.record.index import RecordingIndex
    from fer_edge.record.retention import Retention

    stray = tmp_path / "20261399-000000-0001.mp4"
    stray.write_bytes(b"not ours")
    with recorder_for(tmp_path, FPS, (W, H)) as recorder:
        feed(recorder, range(10))
    assert Retention(tmp_path, 1.0).check() == []
    index = RecordingIndex(tmp_path)
    index.sync()
    listed = [stem for (stem,) in index.db.execute("SELECT stem FROM recordings")]
    index.close()
    assert listed == [recorder.segments[0].stem]
    assert stray.read_bytes() == b"not ours"


def fer_edge_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=child_env(),
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]


def test_a_disk_floor_larger_than_the_disk_is_refused_at_start(tmp_path, demo_clip):
    total_mb = shutil.disk_usage(tmp_path).total / MB
    with pytest.raises(RecordingError, match=r"recording.min_free_mb: \d+ MB cannot be kept free on .* holds \d+ MB"):
        recorder_for(tmp_path, FPS, (W, H), min_free_mb=total_mb + 1)
    config = tmp_path / "config.yaml"
    config.write_text(f"recording:\n  min_free_mb: {total_mb * 2:.0f}\n")
    result = fer_edge_cli(
        "run",
        "--config",
        str(config),
        "--source",
        str(demo_clip),
        "--output",
        str(tmp_path / "out"),
        "--max-frames",
        "5",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = error_lines(result)
    assert line.startswith("fer-edge: error: recording.min_free_mb:"), result.stderr


def test_the_disk_guard_deletes_nothing_when_deleting_cannot_reach_the_floor(tmp_path, caplog):
    """Other files fill the disk: deleting every recording would still not reach the floor, so none is deleted,
    neither the old ones nor each events file of this run as soon as it is finished."""
    old = ["20260101-000000-0001", "20260102-000000-0001"]
    for stem in old:
        make_old_recording(tmp_path, stem, MB)
    disk = FakeDisk(tmp_path, capacity=20 * MB, other_use=16 * MB)  # ~2 MB free, 2 MB deletable, floor 9 MB
    with caplog.at_level(logging.INFO, logger="fer_edge"):
        with recorder_for(
            tmp_path, FPS, (W, H), min_free_mb=9, segment_seconds=1.0, free_bytes=disk, disk_check_interval_s=0
        ) as recorder:
            feed(recorder, range(100))
    assert all((tmp_path / f"{stem}.mp4").exists() for stem in old)
    assert not any("deleted old recording" in r.getMessage() for r in caplog.records)
    events_files = sorted(tmp_path.glob("*.jsonl"))
    assert len(events_files) == 2 + 4
    assert [e["frame"] for p in events_files[2:] for e in read_events(p)] == list(range(100))
    assert len([r for r in caplog.records if "would not reach" in r.getMessage()]) == 1  # said once
    assert recorder.paused


def test_recordings_and_events_are_not_world_readable(tmp_path):
    output = tmp_path / "recordings"
    previous = os.umask(0o022)  # a shell's usual umask, outside the service
    try:
        with recorder_for(output, FPS, (W, H), segment_seconds=1.0) as recorder:
            feed(recorder, range(40))
            open_files = [output / "events.jsonl", *output.glob("*.part")]
            modes = {p.name: p.stat().st_mode & 0o777 for p in open_files}
    finally:
        os.umask(previous)
    assert len(modes) == 2 and set(modes.values()) == {0o640}, modes
    finished = {p.name: p.stat().st_mode & 0o777 for p in output.iterdir()}
    assert len(finished) == 4 and set(finished.values()) == {0o640}, finished
    assert output.stat().st_mode & 0o777 == 0o750


REFUSED_RECORDING = {
    "audio codec": ("recording:\n  codec: aac\n", "recording.codec: aac is an audio encoder"),
    "codec MP4 cannot hold": ("recording:\n  codec: rawvideo\n", "recording.codec: rawvideo cannot record 640x360"),
    "huge fragment": ("recording:\n  fragment_seconds: 1.0e+9\n", "recording.fragment_seconds: expected a number <="),
    "fragment above the segment": (
        "recording:\n  segment_seconds: 2\n  fragment_seconds: 5\n",
        "recording.fragment_seconds: expected a number <= recording.segment_seconds (2)",
    ),
    "huge pre-roll": (
        "recording:\n  presence_triggered: true\n  pre_roll_s: 1.0e+308\n",
        "recording.pre_roll_s: expected a number in [0, 60]",
    ),
    "huge segment": ("recording:\n  segment_seconds: 1.0e+12\n", "recording.segment_seconds: expected a number <="),
}


@pytest.mark.parametrize("case", list(REFUSED_RECORDING))
def test_check_config_refuses_the_recording_settings_run_cannot_use(case, tmp_path, demo_clip):
    text, expected = REFUSED_RECORDING[case]
    config = tmp_path / "config.yaml"
    config.write_text(text + f"source:\n  path: {demo_clip}\n")
    check = fer_edge_cli("check-config", "--quiet", "--config", str(config), cwd=tmp_path)
    run = fer_edge_cli(
        "run", "--config", str(config), "--output", str(tmp_path / "out"), "--max-frames", "40", cwd=tmp_path
    )
    for result in (check, run):
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        [line] = error_lines(result)
        assert line.startswith(f"fer-edge: error: {expected}"), result.stderr
    assert not list((tmp_path / "out").glob("*.mp4"))


def x264_settings(video: Path) -> str:
    """The options x264 writes into the stream it encodes (an SEI message: ``cabac=0 ref=1 ...``)."""
    data = video.read_bytes()
    start = data.index(b"x264 - core")
    return data[start : data.index(b"\0", start)].decode()


@pytest.mark.parametrize(
    ("preset", "cabac", "tune", "bframes"),
    [
        ("ultrafast", "cabac=0", "zerolatency", "bframes=0"),  # zerolatency: no frame held back
        ("veryfast", "cabac=1", "film", "bframes=3"),
    ],
)
def test_the_x264_preset_and_tune_are_those_configured(tmp_path, preset, cabac, tune, bframes):
    with recorder_for(tmp_path, FPS, (W, H), codec="libx264", preset=preset, tune=tune) as recorder:
        feed(recorder, range(40))
    [video] = recorder.segments
    settings = x264_settings(video).split()
    assert cabac in settings and bframes in settings
    assert recorded_indices([video]) == list(range(40))


def test_auto_codec_uses_libx264_where_the_hardware_encoder_is_missing_or_broken(tmp_path, monkeypatch, caplog):
    with recorder_for(tmp_path / "plain", FPS, (W, H)) as recorder:  # no /dev/video11 on this machine
        feed(recorder, range(10))
    assert "cabac=0" in x264_settings(recorder.segments[0]).split()  # the default preset: ultrafast
    fake_device = tmp_path / "video11"
    fake_device.touch()  # the device node is "there", but no V4L2 encoder answers behind it
    monkeypatch.setattr("fer_edge.record.segment.HARDWARE_ENCODER_DEVICE", fake_device)
    with caplog.at_level(logging.INFO, logger="fer_edge"):
        with recorder_for(tmp_path / "fallback", FPS, (W, H)) as recorder:
            feed(recorder, range(10))
    if "h264_v4l2m2m" in av.codecs_available:
        assert "the hardware encoder does not work here" in caplog.text
    assert "recording: libx264, 320x240" in caplog.text
    assert recorded_indices(recorder.segments) == list(range(10))


def test_recording_at_a_lower_resolution_and_frame_rate_than_the_analysis(tmp_path, caplog):
    width, height = 640, 360
    with caplog.at_level(logging.INFO, logger="fer_edge"):
        with recorder_for(tmp_path, FPS, (width, height), record_width=320, record_fps=10.0) as recorder:
            feed(recorder, range(90), width=width, height=height)
    [video] = recorder.segments
    with av.open(str(video)) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height) == (320, 180)
    assert recorded_indices([video]) == list(range(0, 90, 3))  # every third frame of 30 fps
    assert [e["frame"] for e in read_events(tmp_path / (video.stem + ".jsonl"))] == list(range(90))  # events: all
    assert "recording them at 320x180" in caplog.text and "expected" not in caplog.text


def test_at_a_lower_video_frame_rate_each_events_file_belongs_to_a_video_segment(tmp_path):
    """A segment full on a frame the video leaves out rolls over at the next frame it takes; the events go on
    in that segment's file until then, rather than in a one-line file of their own with no video."""
    with recorder_for(tmp_path, FPS, (W, H), segment_seconds=1.0, record_fps=10.0) as recorder:
        feed(recorder, range(95), faces_at=lambda i: [])
    videos = [path.stem for path in recorder.segments]
    assert len(videos) == 4
    events_files = sorted(tmp_path.glob("*.jsonl"))
    assert [path.stem for path in events_files] == videos
    assert [e["frame"] for path in events_files for e in read_events(path)] == list(range(95))
