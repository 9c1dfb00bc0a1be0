"""The overlay on a real face: its caption is drawn whole wherever the face stands in the frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge.types import Box, Face
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.detector import BlazeFaceDetector

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"
PERFORMER = CLIPS / "performer-640x360.mp4"
BAR_COLOR = (0, 255, 0)


@pytest.fixture(scope="module")
def performer() -> np.ndarray:
    """Frame 100 of the real clip: the performer close and frontal."""
    if not PERFORMER.is_file():
        pytest.skip(f"real clips not found at {CLIPS}")
    capture = cv2.VideoCapture(str(PERFORMER))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame


@pytest.fixture(scope="module")
def labelled(performer, model_path) -> Face:
    """The performer's face as the loop would show it: its box, its model's label and score, a track id."""
    faces = BlazeFaceDetector(min_face=40).detect(performer)
    assert faces, "no face found in performer frame 100"
    detection = max(faces, key=lambda d: d.box.area)
    return Face(detection.box, ExpressionClassifier(model_path).classify(performer, detection), track_id=12)


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def caption_bar(image: np.ndarray, box: Box) -> np.ndarray:
    """The filled caption bar above ``box`` and the text in it: the rows above the box's own line that hold the
    bar's colour, from its first column of that colour to its last."""
    above = image[: max(0, box.y - 2)]
    bar = np.all(above == BAR_COLOR, axis=2)
    rows, cols = np.flatnonzero(bar.any(axis=1)), np.flatnonzero(bar.any(axis=0))
    assert rows.size and cols.size, "no caption bar above the face"
    return above[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_caption_of_a_face_at_the_frame_edge_is_drawn_whole(performer, labelled, side):
    annotator = OverlayAnnotator()
    middle = performer.copy()
    annotator.draw(middle, [labelled])
    expected = caption_bar(middle, labelled.box)

    width, height = performer.shape[1], performer.shape[0]
    box = labelled.box
    dx = width - box.x2 + box.w // 3 if side == "right" else -box.x - box.w // 3  # a third of the face outside
    at_edge = shifted(performer, dx, 0)
    face = Face(Box(box.x + dx, box.y, box.w, box.h).clipped(width, height), labelled.prediction, labelled.track_id)
    annotator.draw(at_edge, [face])

    assert annotator.caption(face).endswith(f"{labelled.prediction.score:.2f}")
    assert np.array_equal(caption_bar(at_edge, face.box), expected)  # the same caption, every letter of it
