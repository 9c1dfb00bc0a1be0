"""Recording on its own thread: the loop only queues, a full queue drops the oldest frame (counted), the switches
queue commands, and privacy switched on discards the raw pre-roll. Real recorders write real MP4 files; the gated
fake stands in for a recorder busy encoding, so no test depends on how fast this machine is."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from livehelpers import free_port
from recorder_child import draw_frame, read_index, recorder_for
from videos import decode_pyav

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.pipeline import Pipeline
from fer_edge.record.events import read_events
from fer_edge.record.segment import VideoSegment
from fer_edge.record.worker import RecorderThread
from fer_edge.serve.live import LiveFeed
from fer_edge.serve.metrics import metrics_text
from fer_edge.serve.switches import SwitchedRecorder, Switches
from fer_edge.testing import GatedRecorder, ListSource
from fer_edge.types import Box, Face, Frame, Prediction
from fer_edge.vision.annotate import OverlayAnnotator

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FPS = 30.0
W, H = 320, 240
ALL_FRAMES = 1000  # a queue that never drops here: these tests are about what is recorded, not how fast


def a_face() -> Face:
    return Face(Box(10, 20, 60, 60), Prediction(LABELS, (0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05)), track_id=1)


def frame(i: int) -> Frame:
    return Frame(draw_frame(i, W, H), i, i / FPS)


def recorded(paths) -> list[int]:
    return [read_index(image) for path in paths for image in decode_pyav(path)]


def events_frames(directory) -> list[int]:
    return [e["frame"] for p in sorted(directory.glob("*.jsonl")) for e in read_events(p)]


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_loop_goes_on_while_the_recorder_encodes_a_pre_roll(tmp_path, monkeypatch):
    """The first face starts a segment with a 3 s pre-roll: 90 frames to encode at once. The encoder is held
    shut: the loop's writes of that frame and the next ones must return all the same."""
    cfg = load_config(
        None,
        {
            "recording.output_dir": str(tmp_path),
            "recording.presence_triggered": True,
            "recording.pre_roll_s": 3.0,
            "recording.min_free_mb": 0,
        },
    )
    gate, encoding = threading.Event(), threading.Event()
    real_encode = VideoSegment.encode

    def held_encode(self, image, timestamp):
        encoding.set()
        gate.wait(60)
        return real_encode(self, image, timestamp)

    monkeypatch.setattr(VideoSegment, "encode", held_encode)
    recorder = app.build_recorder(cfg, FPS, (W, H))
    assert recorder is not None
    loop = threading.Thread(target=lambda: [recorder.write(frame(i), [a_face()]) for i in range(90, 100)])
    try:
        for i in range(90):  # one by one into the ring: a busy machine must not make the queue drop any
            recorder.write(frame(i), [])
            assert wait_until(lambda: getattr(recorder, "queued", 0) == 0)
        loop.start()
        loop.join(10)
        assert not loop.is_alive(), "the loop waited for the encoder"
        assert encoding.wait(10)  # meanwhile the recorder thread is inside the pre-roll's first encode
    finally:
        gate.set()
        if loop.ident is not None:
            loop.join()
        recorder.close()
    assert recorder.dropped == 0
    [video] = recorder.segments
    assert recorded([video]) == list(range(100))  # the whole pre-roll, then the frames with a face


def test_a_full_queue_drops_the_oldest_frames_and_counts_them(tmp_path, caplog):
    core = GatedRecorder()
    recorder = RecorderThread(core, capacity=4)
    try:
        recorder.write(frame(0), [])
        assert core.entered.wait(10)  # the recorder is busy with frame 0
        for i in range(1, 11):
            recorder.write(frame(i), [a_face()])
        assert (recorder.dropped, recorder.queued) == (6, 4)

        stats = LiveFeed(recorder=recorder).stats()
        assert stats["recording"]["dropped_frames"] == 6
        assert "fer_edge_recording_dropped_frames_total 6" in metrics_text(stats).splitlines()

        images = [draw_frame(i, W, H) for i in range(11, 14)]
        pipeline = Pipeline(
            ListSource(images),
            _NoFaces(),
            _NoClassifier(),
            OverlayAnnotator(),
            [recorder],
            status_interval_s=0.0,
            status_extra=recorder.status,
        )
        with caplog.at_level(logging.INFO, logger="fer_edge.pipeline"):
            pipeline.run()
        status = [r.getMessage() for r in caplog.records if "ms/frame" in r.getMessage()]
        assert status and status[-1].endswith("; recording dropped 9 frames (recorder behind)")
    finally:
        core.gate.set()
        recorder.close()
    assert core.calls == [0, 10, 0, 1, 2]  # the newest four, in order: frame 10 and the pipeline's 0, 1, 2
    assert core.closed


def test_behind_a_file_source_a_full_queue_waits_instead_of_dropping():
    core = GatedRecorder()
    recorder = RecorderThread(core, capacity=2, drop_when_full=False)
    recorder.write(frame(0), [])
    assert core.entered.wait(10)
    recorder.write(frame(1), [])
    recorder.write(frame(2), [])
    loop = threading.Thread(target=recorder.write, args=(frame(3), []))
    loop.start()
    loop.join(0.3)
    assert loop.is_alive()  # waiting for room
    core.gate.set()
    loop.join(10)
    recorder.close()
    assert core.calls == [0, 1, 2, 3] and recorder.dropped == 0


class _NoFaces:
    def detect(self, image, regions=None):
        return []


class _NoClassifier:
    runtime = "none"

    def classify(self, image, face):
        raise AssertionError("no face to classify")


def test_switch_commands_keep_their_place_and_never_wait_for_the_recorder():
    core = GatedRecorder()
    switches = Switches(recording=True, privacy=False)
    sink = SwitchedRecorder(RecorderThread(core, capacity=3), switches)
    try:
        sink.write(frame(0), [])
        assert core.entered.wait(10)
        switches.set("recording", False)
        sink.write(frame(1), [])  # returns at once: the recorder is still busy with frame 0
        switches.set("privacy", True)
        sink.write(frame(2), [])
        sink.write(frame(3), [])
        switches.set("recording", True)
        sink.write(frame(4), [])  # the queue holds three frames: frame 1 goes, the commands stay
    finally:
        core.gate.set()
        sink.close()
    assert core.calls == [0, "video off", 2, "discard pre-roll", 3, "video on", 4]


def test_an_error_on_the_recorder_thread_ends_the_run_with_that_error():
    class Broken(GatedRecorder):
        def write(self, frame, faces, wall=None):
            raise ValueError("the encoder fell over")

    recorder = RecorderThread(Broken(), capacity=4)
    recorder.write(frame(0), [])
    with pytest.raises(ValueError, match="fell over"):
        wait_until(lambda: recorder.write(frame(1), []) and False, timeout=10)
    recorder.close()  # already reported: close does not raise it again


def test_switching_recording_off_stops_the_video_and_the_events_go_on(tmp_path):
    switches = Switches(recording=True, privacy=False)
    core = recorder_for(tmp_path, FPS, (W, H))
    sink = SwitchedRecorder(RecorderThread(core, ALL_FRAMES), switches)
    for i in range(120):
        if i == 40:
            switches.set("recording", False)
        if i == 80:
            switches.set("recording", True)
        sink.write(frame(i), [a_face()])
    sink.close()
    first, second = core.segments
    assert recorded([first]) == list(range(40)) and recorded([second]) == list(range(80, 120))
    assert events_frames(tmp_path) == list(range(120))  # every frame's events, video or not
    assert {first.stem, second.stem} <= {p.stem for p in tmp_path.glob("*.jsonl")}


def test_privacy_switched_on_discards_the_raw_pre_roll(tmp_path):
    switches = Switches(recording=True, privacy=False)
    core = recorder_for(tmp_path, FPS, (W, H), presence_triggered=True, pre_roll_s=1.0, post_roll_s=0.0)
    sink = SwitchedRecorder(RecorderThread(core, ALL_FRAMES), switches)
    for i in range(75):
        if i == 50:
            switches.set("privacy", True)  # seen with frame 50, which privacy may have missed: discarded too
        sink.write(frame(i), [a_face()] if i >= 60 else [])
    sink.close()
    [video] = core.segments
    assert recorded([video]) == list(range(51, 75))  # without privacy the pre-roll would start at frame 30


def test_without_video_in_the_config_the_recording_switch_is_off_and_stays_off(tmp_path, demo_clip, caplog):
    cfg = load_config(
        None,
        {
            "source.kind": "file",
            "source.path": str(demo_clip),
            "recording.enabled": False,
            "recording.output_dir": str(tmp_path),
            "web.enabled": True,
            "web.listen": f"127.0.0.1:{free_port()}",
            "logging.status_interval_s": 3600.0,
        },
    )
    device = app.build_device(cfg)
    try:
        assert device.switches is not None and device.feed is not None and device.recorder is not None
        assert not device.switches["recording"]
        with caplog.at_level(logging.WARNING):
            assert not device.switches.set("recording", True)
        assert not device.switches["recording"] and "recording.enabled: false" in caplog.text
        device.pipeline.run(30)
        assert device.feed.stats()["switches"]["recording"] is False
        assert device.feed.stats()["frames"] == 30
    finally:
        device.pipeline.close()
        device.pipeline.notifier.close()
    assert not list(tmp_path.glob("*.mp4*"))
    assert events_frames(tmp_path) == list(range(30))  # the events log, which the config asked for
