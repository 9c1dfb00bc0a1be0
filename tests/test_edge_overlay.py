"""The overlay on real faces: a caption is drawn whole wherever its face stands in the frame, and in a crowd no
caption covers another or a neighbour's face."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from videos import read_frame

from fer_edge.types import Box, Face
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.detector import BlazeFaceDetector

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"
PERFORMER = CLIPS / "performer-640x360.mp4"
STREET = CLIPS / "street-1080p.mp4"
BAR_COLOR = (0, 255, 0)


def clip_frame(path: Path, index: int) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"real clips not found at {CLIPS}")
    return read_frame(path, index)


@pytest.fixture(scope="module")
def performer() -> np.ndarray:
    """Frame 100 of the real clip: the performer close and frontal."""
    return clip_frame(PERFORMER, 100)


@pytest.fixture(scope="module")
def classifier(model_path) -> ExpressionClassifier:
    return ExpressionClassifier(model_path)


@pytest.fixture(scope="module")
def labelled(performer, classifier) -> Face:
    """The performer's face as the loop would show it: its box, its model's label and score, a track id."""
    faces = BlazeFaceDetector(min_face=40).detect(performer)
    assert faces, "no face found in performer frame 100"
    detection = max(faces, key=lambda d: d.box.area)
    return Face(detection.box, classifier.classify(performer, detection), track_id=12)


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


def test_in_a_crowd_no_caption_covers_another_caption_or_face(classifier):
    frame = clip_frame(STREET, 12)  # eight faces, two pairs of them side by side at the same height
    faces = [
        Face(detection.box, classifier.classify(frame, detection), track_id)
        for track_id, detection in enumerate(BlazeFaceDetector().detect(frame), 1)
    ]
    assert len(faces) >= 6
    annotator = OverlayAnnotator()
    height, width = frame.shape[:2]
    drawn = frame.copy()
    annotator.draw(drawn, faces)
    captions = annotator.captions(faces, width, height)
    assert len(captions) == len(faces)

    for face, caption in zip(faces, captions):
        others = [other.box for other in faces if other is not face] + [c.bar for c in captions if c is not caption]
        assert not any(caption.bar.iou(other) > 0 for other in others), f"{caption.text} covers a face or caption"
        alone = np.zeros_like(frame)  # the face alone in the middle of the frame: its caption above it
        middle = Box(width // 2, height // 2, face.box.w, face.box.h)
        annotator.draw(alone, [Face(middle, face.prediction, face.track_id)])
        expected = caption_bar(alone, middle)
        bar = caption.bar
        shown = drawn[bar.y : bar.y + expected.shape[0], bar.x : bar.x + expected.shape[1]]
        assert np.array_equal(shown, expected), f"{caption.text} is not drawn whole"


def test_a_caption_a_neighbour_moved_below_its_face_stays_there_once_the_neighbour_left(
    performer, labelled, classifier
):
    # the performer's own face pasted up and to the right: a neighbour where the performer's caption would go
    face = labelled.box.square(1.3)
    crowded = performer.copy()
    crowded[0 : face.h, 300 : 300 + face.w] = performer[face.y : face.y2, face.x : face.x2]
    detections = BlazeFaceDetector(min_face=40).detect(crowded)
    neighbour = next(d for d in detections if d.box.x > labelled.box.x2)
    height, width = performer.shape[:2]
    annotator = OverlayAnnotator()
    first = annotator.captions(
        [labelled, Face(neighbour.box, classifier.classify(crowded, neighbour), 13)], width, height
    )
    assert first[0].bar.y >= labelled.box.y2, "the performer's caption did not make way for the neighbour"

    for _ in range(3):  # frames after the neighbour left: the caption does not hop back above the face
        alone = annotator.captions([labelled], width, height)
        assert alone[0].bar == first[0].bar
    assert OverlayAnnotator().captions([labelled], width, height)[0].bar.y2 <= labelled.box.y + 1  # new: above


def test_a_caption_grows_with_the_frame_above_480_lines_and_keeps_its_size_below(performer, labelled):
    """A 1080p camera's caption drawn at the configured size is 14 px tall: about 3.5 px in a 480-px-wide
    snapshot of the frame, too small to read. The face grows with the frame; a caption as far as its face does."""
    annotator = OverlayAnnotator()

    def bar(lines: int, face: Box) -> Box:
        return annotator.captions([Face(face, labelled.prediction, 12)], 640 * lines // 360, lines)[0].bar

    at = {lines: bar(lines, labelled.box.scaled(lines / 360)) for lines in (360, 480, 1080)}
    assert at[360].h == at[480].h and at[360].w == at[480].w  # up to 480 lines: as configured
    assert 1.8 < at[1080].h / at[480].h < 2.5 and 2.0 < at[1080].w / at[480].w < 2.5  # a fixed margin
    assert at[1080].h * 480 / 1920 >= 10  # still a few pixels tall in the snapshot

    frame = cv2.resize(performer, (1920, 1080))
    face = Face(labelled.box.scaled(3), labelled.prediction, labelled.track_id)
    annotator.draw(frame, [face])
    assert caption_bar(frame, face.box).shape[1] == at[1080].w  # drawn as placed


def test_a_small_face_on_a_large_frame_keeps_a_small_caption(labelled):
    """In a crowd on a 1080p frame the faces are small: captions grown with the frame covered each other."""
    annotator = OverlayAnnotator()
    small = Face(Box(900, 500, 70, 70), labelled.prediction, 12)
    at_480 = annotator.captions([small], 854, 480)[0].bar
    at_1080 = annotator.captions([small], 1920, 1080)[0].bar
    assert (at_1080.w, at_1080.h) == (at_480.w, at_480.h)
