"""Privacy at the frame's edge, on real footage: a face mostly outside the frame (someone walking in from the side)
is blurred from the part that shows; a face inside the frame is blurred as it was, and an empty room not at all."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_edge_privacy_flow import KEPT_DETAIL, PERFORMER, laplacian_energy, pipeline_for, read_frames

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.testing import ListSink
from fer_edge.types import Box
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.detector import BlazeFaceDetector
from fer_edge.vision.privacy import covered_regions

FACE_FRAMES = (104, 136)  # the performer close and frontal, the face about 110 px
MOSTLY_OUT = 0.65  # share of the face's width beyond the frame's edge
EMPTY_STAGE_FRAME = 82  # the curtain right of the performer: no face


@pytest.fixture(scope="module")
def classifier(model_path):
    return ExpressionClassifier(model_path)


@pytest.fixture(scope="module")
def faces() -> dict[int, tuple[np.ndarray, Box]]:
    """Each of ``FACE_FRAMES`` and the performer's face box in it."""
    if not PERFORMER.is_file():
        pytest.skip("real clips not found")
    found = {}
    for index in FACE_FRAMES:
        frame = read_frames(PERFORMER, index, 1)[0]
        detections = BlazeFaceDetector(min_face=40).detect(frame)
        assert detections, f"no face found in performer frame {index}"
        found[index] = (frame, max(detections, key=lambda d: d.box.area).box)
    return found


def shifted(image: np.ndarray, dx: int) -> np.ndarray:
    """``image`` moved ``dx`` px sideways, the column at the edge repeated into the gap it leaves."""
    matrix = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def blurred(images: list[np.ndarray], classifier) -> list[np.ndarray]:
    """The frames the sinks get from the loop with the defaults and ``privacy.mode: blur``."""
    cfg = load_config(None, {"privacy.mode": "blur", "overlay.enabled": False})
    sink = ListSink()
    pipeline_for(cfg, images, classifier, [sink], app.build_privacy(cfg)).run()
    return [frame.image for frame in sink.frames]


def middle(box: Box) -> Box:
    """The central 60% of ``box``: the step at a blurred region's edge is not the face's detail."""
    return Box(box.x + round(0.2 * box.w), box.y + round(0.2 * box.h), round(0.6 * box.w), round(0.6 * box.h))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("index", FACE_FRAMES)
def test_a_face_mostly_outside_the_frame_is_blurred_where_it_shows(faces, classifier, index, side):
    frame, face = faces[index]
    width, height = frame.shape[1], frame.shape[0]
    outside = round(MOSTLY_OUT * face.w)
    dx = -face.x - outside if side == "left" else width - face.x2 + outside
    captured = shifted(frame, dx)
    showing = middle(Box(face.x + dx, face.y, face.w, face.h).clipped(width, height))

    output = blurred([captured], classifier)[0]

    kept = laplacian_energy(output, showing) / laplacian_energy(captured, showing)
    assert kept < KEPT_DETAIL, f"{kept:.2f} of the visible part's detail kept"


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("index", FACE_FRAMES)
def test_a_face_inside_the_frame_at_its_edge_is_blurred_over_its_own_box_alone(faces, classifier, index, side):
    frame, face = faces[index]
    width, height = frame.shape[1], frame.shape[0]
    dx = -face.x + 2 if side == "left" else width - face.x2 - 2  # 2 px inside: its mirror image touches it
    captured = shifted(frame, dx)
    found = [d.box for d in BlazeFaceDetector(min_face=40).detect(captured)]
    moved = Box(face.x + dx, face.y, face.w, face.h)
    assert [box for box in found if box.iou(moved) > 0.5], "the face inside the frame is not found"

    output = blurred([captured], classifier)[0]

    assert laplacian_energy(output, middle(moved)) / laplacian_energy(captured, middle(moved)) < KEPT_DETAIL
    untouched = np.ones((height, width), bool)
    for region in covered_regions(found, width, height):
        untouched[region.y : region.y2, region.x : region.x2] = False
    assert np.array_equal(output[untouched], captured[untouched])


def test_nothing_is_blurred_on_an_empty_stage(classifier):
    if not PERFORMER.is_file():
        pytest.skip("real clips not found")
    frame = read_frames(PERFORMER, EMPTY_STAGE_FRAME, 1)[0]
    curtain = frame[:, 440:]
    stage = np.ascontiguousarray(np.hstack([curtain, curtain[:, ::-1], curtain, curtain[:, ::-1]])[:, : frame.shape[1]])

    assert np.array_equal(blurred([stage], classifier)[0], stage)
