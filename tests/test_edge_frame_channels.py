"""Frames that are not 3-channel BGR (a camera's BGRA or grey buffers) are made BGR once, where the loop reads
them: the real detector, classifier and blur then run on them as on BGR frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.errors import SourceError
from fer_edge.pipeline import Pipeline
from fer_edge.testing import ListSink, ListSource
from fer_edge.types import bgr_image
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"
PERFORMER = CLIPS / "performer-640x360.mp4"
FRAMES = 6


@pytest.fixture(scope="module")
def performer() -> list[np.ndarray]:
    """Frames 100-105 of the real clip: the performer close and frontal."""
    if not PERFORMER.is_file():
        pytest.skip(f"real clips not found at {CLIPS}")
    capture = cv2.VideoCapture(str(PERFORMER))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
    frames = [capture.read()[1] for _ in range(FRAMES)]
    capture.release()
    assert all(frame is not None for frame in frames)
    return frames


def run(images: list[np.ndarray], model_path: Path, privacy: str) -> ListSink:
    cfg = load_config(None, {"privacy.mode": privacy, "overlay.enabled": False})
    sink = ListSink()
    Pipeline(
        ListSource(images, fps=30),
        app.build_detector(cfg),
        ExpressionClassifier(model_path),
        OverlayAnnotator.from_config(cfg.overlay),
        [sink],
        privacy=app.build_privacy(cfg),
        privacy_hold_s=cfg.privacy.hold_s,
    ).run()
    return sink


@pytest.mark.parametrize("privacy", ["off", "blur"])
def test_bgra_frames_are_found_labelled_and_blurred_like_bgr_ones(performer, model_path, privacy):
    bgr = run([frame.copy() for frame in performer], model_path, privacy)
    bgra = run([cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA) for frame in performer], model_path, privacy)
    assert len(bgra.frames) == FRAMES and all(bgr.faces)
    assert [[f.box for f in faces] for faces in bgra.faces] == [[f.box for f in faces] for faces in bgr.faces]
    assert [[f.shown.label for f in faces] for faces in bgra.faces] == [  # type: ignore[union-attr]
        [f.shown.label for f in faces]  # type: ignore[union-attr]
        for faces in bgr.faces
    ]
    for ours, theirs in zip(bgra.frames, bgr.frames):
        assert ours.image.shape == (360, 640, 3) and np.array_equal(ours.image, theirs.image)


def test_grey_frames_of_either_shape_become_three_equal_channels(performer, model_path):
    grey = [cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) for frame in performer]
    flat = run(grey, model_path, "blur")
    deep = run([image[:, :, None] for image in grey], model_path, "blur")
    assert [[f.box for f in faces] for faces in flat.faces] == [[f.box for f in faces] for faces in deep.faces]
    for frame in flat.frames:
        image = frame.image
        assert image.shape == (360, 640, 3)
        assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])


def test_a_frame_of_another_kind_is_one_source_error():
    with pytest.raises(SourceError, match="float32 frames of shape"):
        bgr_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(SourceError, match="not 8-bit grey, BGR or BGRA"):
        bgr_image(np.zeros((4, 4, 2), np.uint8))
    image = np.zeros((4, 4, 3), np.uint8)
    assert bgr_image(image) is image  # BGR frames pass through uncopied
