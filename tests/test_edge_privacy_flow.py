"""Privacy in the frame loop on real footage: a face that walks in while another is tracked, the pre-roll of a
presence-triggered recording (decoded from the MP4) and the runtime switch are anonymized from the face's first
frame, before any sink sees it."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.pipeline import Pipeline
from fer_edge.serve.switches import SwitchedPrivacy, Switches
from fer_edge.testing import ListSink, ListSource
from fer_edge.types import Box, Face, Frame
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.cuts import SceneCutDetector
from fer_edge.vision.detector import BlazeFaceDetector
from fer_edge.vision.privacy import BlurHold, anonymize

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"
PERFORMER = CLIPS / "performer-640x360.mp4"
WALK_IN_AT = 10  # a CARRY frame of the default schedule (every 3rd frame detects), 1/3 s after the last scan
PASTE_SIDE = 130  # the walker's crop: the face itself about 70 px, above detector.min_face
PASTE_AT = (490, 150)  # on the curtain right of the performer
KEPT_DETAIL = 0.25  # a face region keeping more of its Laplacian energy than this is recognisably sharp


def read_frames(path: Path, start: int, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok, f"{path} frame {start + len(frames)}"
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def performer() -> list[np.ndarray]:
    """40 frames of one shot, the performer close and frontal (frames 100-139)."""
    if not PERFORMER.is_file():
        pytest.skip(f"real clips not found at {CLIPS}")
    return read_frames(PERFORMER, 100, 40)


@pytest.fixture(scope="module")
def walker() -> np.ndarray:
    return walker_crop()


def walker_crop() -> np.ndarray:
    """The performer's face from another moment of the clip (frame 150), with hair and collar around it."""
    frame = read_frames(PERFORMER, 150, 1)[0]
    faces = BlazeFaceDetector(min_face=40).detect(frame)
    assert faces, "no face found in performer frame 150"
    box = max(faces, key=lambda d: d.box.area).box.square(1.8).clipped(frame.shape[1], frame.shape[0])
    crop = frame[box.y : box.y2, box.x : box.x2]
    return cv2.resize(crop, (PASTE_SIDE, PASTE_SIDE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def classifier(model_path):
    return ExpressionClassifier(model_path)


def paste_box() -> Box:
    return Box(*PASTE_AT, PASTE_SIDE, PASTE_SIDE)


def with_walker(frames: list[np.ndarray], walker: np.ndarray, start: int = WALK_IN_AT) -> list[np.ndarray]:
    """Copies of ``frames``; from ``start`` on the walker stands on the curtain."""
    out = []
    box = paste_box()
    for index, frame in enumerate(frames):
        image = frame.copy()
        if index >= start:
            image[box.y : box.y2, box.x : box.x2] = walker
        out.append(image)
    return out


def face_core() -> Box:
    """The middle of the pasted face (eyes, nose, mouth), inside any overlay box drawn around it."""
    box = paste_box()
    side = round(box.w * 0.3)
    cx, cy = box.centre
    return Box(round(cx - side / 2), round(cy - side / 2), side, side)


def laplacian_energy(image: np.ndarray, box: Box) -> float:
    grey = cv2.cvtColor(image[box.y : box.y2, box.x : box.x2], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F).var())


def kept_detail(output: np.ndarray, captured: np.ndarray) -> float:
    return laplacian_energy(output, face_core()) / laplacian_energy(captured, face_core())


def pipeline_for(cfg, images: list[np.ndarray], classifier, sinks: list, privacy) -> Pipeline:
    """The app's stages from ``cfg`` (BlazeFace, default schedule, tracking, smoothing) on ``images``."""
    return Pipeline(
        ListSource([image.copy() for image in images], fps=30),
        app.build_detector(cfg),
        classifier,
        OverlayAnnotator.from_config(cfg.overlay),
        sinks,
        tracker=app.build_tracker(cfg),
        smoother=app.build_smoother(cfg),
        schedule=app.build_schedule(cfg),
        privacy=privacy,
        privacy_hold_s=cfg.privacy.hold_s,
        cuts=SceneCutDetector(),
    )


def test_the_walker_is_a_face_the_detector_finds(performer, walker):
    found = BlazeFaceDetector(min_face=40).detect(with_walker(performer, walker)[WALK_IN_AT])
    assert any(face.box.iou(paste_box()) > 0.2 for face in found)
    assert any(face.box.iou(paste_box()) == 0 for face in found)  # and the performer beside it


def test_a_face_walking_in_while_another_is_tracked_is_blurred_from_its_first_frame(performer, walker, classifier):
    cfg = load_config(None, {"privacy.mode": "blur"})
    assert cfg.detector.every_n_frames > 1 and cfg.detector.full_scan_interval_s >= 1.0  # scans are sparse
    captured = with_walker(performer, walker)
    sink = ListSink()
    pipeline = pipeline_for(cfg, captured, classifier, [sink], app.build_privacy(cfg))
    pipeline.run()

    assert len(sink.frames) == len(captured)
    assert all(sink.faces[i] for i in range(WALK_IN_AT))  # the performer was tracked before the walker came
    kept = [kept_detail(sink.frames[i].image, captured[i]) for i in range(WALK_IN_AT, len(captured))]
    assert max(kept) < KEPT_DETAIL, [round(k, 2) for k in kept]


def test_privacy_switched_on_covers_a_new_face_on_the_very_next_frame(performer, walker, classifier):
    cfg = load_config(None, {})
    switches = Switches(privacy=False)
    switch_after = 15  # the next frame is a CARRY frame of the default schedule

    class SwitchOn(ListSink):
        def write(self, frame: Frame, faces: list[Face]) -> None:
            super().write(frame, faces)
            if frame.index == switch_after:
                switches.set("privacy", True)

    captured = with_walker(performer, walker)
    sink = SwitchOn()
    privacy = SwitchedPrivacy(functools.partial(anonymize, mode="blur"), switches)
    pipeline_for(cfg, captured, classifier, [sink], privacy).run()

    assert kept_detail(sink.frames[switch_after].image, captured[switch_after]) > KEPT_DETAIL  # still off
    kept = [kept_detail(sink.frames[i].image, captured[i]) for i in range(switch_after + 1, len(captured))]
    assert max(kept) < KEPT_DETAIL, [round(k, 2) for k in kept]


def test_the_pre_roll_of_a_presence_triggered_recording_is_anonymized(performer, walker, classifier, tmp_path):
    # an empty stage (the curtain beside the performer, mirrored to full width), then the walker comes in
    stage = performer[0][:, 440:640]
    empty = np.hstack([stage, stage[:, ::-1], stage, stage[:, ::-1]])[:, :640].copy()
    captured = with_walker([empty] * 30, walker)
    cfg = load_config(
        None,
        {
            "privacy.mode": "blur",
            "recording.output_dir": str(tmp_path),
            "recording.presence_triggered": True,
            "recording.pre_roll_s": 3.0,
            "events.enabled": False,
        },
    )
    recorder = app.build_recorder(cfg, 30.0, (640, 360))
    pipeline = pipeline_for(cfg, captured, classifier, [recorder], app.build_privacy(cfg))
    try:
        pipeline.run()
    finally:
        pipeline.close()

    videos = sorted(tmp_path.rglob("*.mp4"))
    assert len(videos) == 1, videos
    with av.open(str(videos[0])) as container:
        recorded = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    assert len(recorded) == len(captured)  # the pre-roll reaches back to the empty stage
    assert kept_detail(recorded[0], empty) > 0.5  # the codec keeps a sharp picture sharp
    kept = [kept_detail(recorded[i], captured[i]) for i in range(WALK_IN_AT, len(captured))]
    assert max(kept) < KEPT_DETAIL, [round(k, 2) for k in kept]


def test_the_live_view_gets_the_walker_blurred(performer, walker, classifier):
    from fer_edge.serve.live import LiveFeed

    cfg = load_config(None, {"privacy.mode": "blur"})
    captured = with_walker(performer, walker)
    feed = LiveFeed()
    last = WALK_IN_AT + 2  # a detection frame that searches only around the performer, 0.4 s after the last scan
    pipeline_for(cfg, captured, classifier, [feed], app.build_privacy(cfg)).run(max_frames=last + 1)
    _, frame, _ = feed.latest()
    assert frame is not None and frame.index == last
    assert kept_detail(frame.image, captured[last]) < KEPT_DETAIL


def test_a_face_lost_for_a_frame_stays_blurred_though_a_found_face_overlaps_where_it_was(performer, walker):
    # two real faces side by side whose boxes overlap; on the next frame the detector finds only one of them
    image = performer[0].copy()
    pasted = Box(270, 80, PASTE_SIDE, PASTE_SIDE)
    image[pasted.y : pasted.y2, pasted.x : pasted.x2] = walker
    found = [d.box for d in BlazeFaceDetector(min_face=40).detect(image)]
    walker_box = next(box for box in found if box.iou(pasted) > 0.2)
    performer_box = next(box for box in found if box != walker_box)
    assert performer_box.iou(walker_box) > 0
    hold = BlurHold(load_config(None, {}).privacy.hold_s)
    hold.update([performer_box, walker_box], 0.0)
    performer_again = Box(performer_box.x + 2, performer_box.y + 1, performer_box.w, performer_box.h)
    output = image.copy()
    anonymize(output, hold.update([performer_again], 1 / 30), "blur")
    core = walker_box.square(0.5)  # eyes, nose and mouth
    assert laplacian_energy(output, core) < KEPT_DETAIL * laplacian_energy(image, core)
    assert hold.update([performer_again], 1 / 15) == [walker_box, performer_again]  # no trail: the old box went


def next_jpeg(sock: socket.socket, received: bytes) -> tuple[bytes, bytes]:
    """The next JPEG of a live stream, and what was read after it."""
    while b"\xff\xd9\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended"
        received += chunk
    part, _, rest = received.partition(b"\xff\xd9\r\n")
    return part[part.index(b"\xff\xd8") :] + b"\xff\xd9", rest


def test_privacy_switched_on_while_the_camera_is_lost_takes_its_last_frame_off_the_live_view(performer, classifier):
    from livehelpers import http_get

    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    cfg = load_config(None, {})
    switches = Switches(recording=False, privacy=False)
    feed = LiveFeed(switches=switches)
    privacy = SwitchedPrivacy(functools.partial(anonymize, mode="blur"), switches)
    pipeline_for(cfg, performer[:3], classifier, [feed], privacy).run()
    feed.source_lost()  # as the loop says when the camera is lost: its last frame stays on show
    detector = BlazeFaceDetector(min_face=40)
    face = detector.detect(performer[2])[0].box.square(0.5)  # eyes, nose and mouth
    web = WebServer(feed, host="127.0.0.1", port=0, token=None).start()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as viewer:
            viewer.sendall(b"GET /api/stream.mjpeg HTTP/1.1\r\nHost: localhost\r\n\r\n")
            shown, rest = next_jpeg(viewer, b"")
            assert detector.detect(decoded(shown)), "the performer is not on show before privacy comes on"

            switches.set("privacy", True)
            streamed, _ = next_jpeg(viewer, rest)
        _, status, _, latest = http_get(web.port, "/api/latest.jpg", None)
    finally:
        web.close()
    assert status == 200
    for jpeg in (streamed, latest):
        assert detector.detect(decoded(jpeg)) == []
        assert laplacian_energy(decoded(jpeg), face) < KEPT_DETAIL * laplacian_energy(performer[2], face)


def decoded(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_a_frame_made_before_privacy_came_on_is_not_left_on_the_live_view_when_the_camera_is_lost(
    performer, classifier
):
    from livehelpers import http_get

    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    cfg = load_config(None, {})
    switches = Switches(recording=False, privacy=False)
    last = 2

    class SwitchOn(ListSink):
        """Privacy comes on (Home Assistant, the web page) while the loop hands out the last frame, made without it."""

        def write(self, frame: Frame, faces: list[Face]) -> None:
            super().write(frame, faces)
            if frame.index == last:
                switches.set("privacy", True)

    feed = LiveFeed(switches=switches)
    privacy = SwitchedPrivacy(functools.partial(anonymize, mode="blur"), switches)
    made = SwitchOn()
    pipeline_for(cfg, performer[: last + 1], classifier, [made, feed], privacy).run()
    feed.source_lost()  # the camera is lost in the same moment: no frame comes to replace the one on show
    detector = BlazeFaceDetector(min_face=40)
    assert detector.detect(made.frames[last].image), "the last frame was made without privacy and shows the face"
    face = detector.detect(performer[last])[0].box.square(0.5)  # eyes, nose and mouth
    web = WebServer(feed, host="127.0.0.1", port=0, token=None).start()
    try:
        _, status, _, latest = http_get(web.port, "/api/latest.jpg", None)
    finally:
        web.close()
    assert status == 200
    assert detector.detect(decoded(latest)) == []
    assert laplacian_energy(decoded(latest), face) < KEPT_DETAIL * laplacian_energy(performer[last], face)
