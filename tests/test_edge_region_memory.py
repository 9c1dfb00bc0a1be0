"""A camera on a wall looks at a still room most of the day: a scan region whose picture has not changed since the
face model last ran on it keeps that run's faces, and a face coming in is still found and blurred on its first
frame. Real footage: one frame of the performer clip held still, with a camera's sensor noise on every frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_edge_privacy_flow import (
    KEPT_DETAIL,
    PERFORMER,
    kept_detail,
    paste_box,
    pipeline_for,
    read_frames,
    walker_crop,
    with_walker,
)

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.testing import ListSink, count_face_model_runs
from fer_edge.types import Box
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.detector import REFRESH_SCANS, BlazeFaceDetector

SENSOR_NOISE = 2.0  # grey levels, standard deviation per pixel


@pytest.fixture(scope="module")
def still_room() -> list[np.ndarray]:
    """Performer frame 100 held for 24 frames."""
    if not PERFORMER.is_file():
        pytest.skip("real clips not found")
    return read_frames(PERFORMER, 100, 1) * 24


@pytest.fixture(scope="module")
def walker(still_room) -> np.ndarray:
    return walker_crop()


def camera(frames: list[np.ndarray], scale: int = 1) -> list[np.ndarray]:
    """``frames`` scaled up ``scale`` times, each with its own sensor noise."""
    rng = np.random.default_rng(0)
    out = []
    for frame in frames:
        if scale > 1:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(frame + rng.normal(0, SENSOR_NOISE, frame.shape), 0, 255).astype(np.uint8))
    return out


def scanned(detector: BlazeFaceDetector, frames: list[np.ndarray]) -> tuple[list[list], list[int]]:
    """The faces of each frame's privacy scan, and how many times the face models ran for each."""
    runs = count_face_model_runs(detector)
    found = []
    for frame in frames:
        found.append(detector.privacy_scan(frame).faces)
        runs.append(0)
    return found, runs[:-1]


def test_a_still_room_is_not_scanned_again_until_something_in_it_changes(still_room, walker):
    detector = BlazeFaceDetector(min_face=40, rescan_change=4.0)
    frames = camera(with_walker(still_room, walker, start=12), scale=2)  # 1280x720: tiles, then the whole frame
    pasted = paste_box()
    pasted = Box(2 * pasted.x, 2 * pasted.y, 2 * pasted.w, 2 * pasted.h)
    found, runs = scanned(detector, frames)
    height, width = frames[0].shape[:2]
    whole = sum(len(level.regions) for level in detector.plan(width, height))

    assert runs[0] == whole and runs[1:12] == [0] * 11, runs  # the noise alone changes nothing
    assert all(faces == found[0] for faces in found[:12]) and found[0]  # the performer, kept
    # the walker: the regions it stands in run again, the others keep their faces
    assert 0 < runs[12] < whole and runs[13:] == [0] * (len(frames) - 13), runs
    assert any(face.box.iou(pasted) > 0.2 for face in found[12])
    no_memory = BlazeFaceDetector(min_face=40).privacy_scan(frames[12]).faces
    assert len(found[12]) == len(no_memory) and all(max(f.box.iou(g.box) for g in no_memory) > 0.9 for f in found[12])


def test_a_slow_change_adds_up_until_the_region_runs_again(still_room):
    detector = BlazeFaceDetector(min_face=40, rescan_change=4.0)
    base = camera(still_room[:1])[0].astype(np.int16)
    brighter = [np.clip(base + step, 0, 255).astype(np.uint8) for step in range(8)]  # one grey level a frame
    _, runs = scanned(detector, brighter)
    assert runs[1:5] == [0, 0, 0, 0] and runs[5] == runs[0], runs  # 5 levels from the last run: all again
    assert runs[6:] == [0, 0], runs


def test_unchanged_regions_run_again_when_old_one_a_scan(still_room):
    detector = BlazeFaceDetector(min_face=40, rescan_change=4.0)
    frames = camera(still_room[:1], scale=2)
    width, height = frames[0].shape[1], frames[0].shape[0]
    whole = sum(len(level.regions) for level in detector.plan(width, height))
    _, runs = scanned(detector, frames * (2 * REFRESH_SCANS + whole))
    assert runs[0] == whole and sum(runs[1:REFRESH_SCANS]) == 0, runs
    refreshes = runs[REFRESH_SCANS:]
    assert max(refreshes) == 1, runs  # never a whole scan's stall
    # every region ran again within a refresh and one scan per region, and again after that
    assert sum(refreshes[:whole]) == whole and sum(refreshes) == 2 * whole, runs


def test_no_memory_runs_every_region_on_every_scan(still_room):
    detector = app.build_detector(load_config(None, {"detector.rescan_change": 0}))
    assert isinstance(detector, BlazeFaceDetector)
    _, runs = scanned(detector, camera(still_room[:3]))
    assert runs[0] > 0 and runs == [runs[0]] * 3


def test_a_face_walking_into_a_still_room_is_blurred_from_its_first_frame(still_room, walker, model_path):
    cfg = load_config(None, {"privacy.mode": "blur"})
    assert cfg.detector.rescan_change > 0  # memory is on by default
    captured = camera(with_walker(still_room, walker, start=10))
    sink = ListSink()
    pipeline_for(cfg, captured, ExpressionClassifier(model_path), [sink], app.build_privacy(cfg)).run()

    kept = [kept_detail(sink.frames[i].image, captured[i]) for i in range(10, len(captured))]
    assert max(kept) < KEPT_DETAIL, [round(k, 2) for k in kept]
    assert all(any(face.box.iou(paste_box()) > 0.2 for face in faces) for faces in sink.faces[10:])
