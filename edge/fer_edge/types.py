"""Value types passed between pipeline stages. No OpenCV, no runtime, no camera."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_edge.errors import SourceError


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in frame pixels: top-left corner, width and height."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x2(self) -> int:
        return self.x + self.w

    @property
    def y2(self) -> int:
        return self.y + self.h

    @property
    def area(self) -> int:
        return max(0, self.w) * max(0, self.h)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2.0, self.y + self.h / 2.0)

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x2, other.x2) - max(self.x, other.x))
        iy = max(0, min(self.y2, other.y2) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union else 0.0

    def scaled(self, factor: float) -> Box:
        """The same box in a frame resized by ``factor``."""
        return Box(round(self.x * factor), round(self.y * factor), round(self.w * factor), round(self.h * factor))

    def square(self, margin: float = 1.0) -> Box:
        """A square of side ``max(w, h) * margin`` (at least one pixel) around the same centre (may extend
        past the frame)."""
        side = max(1, round(max(self.w, self.h) * margin))
        cx, cy = self.centre
        return Box(round(cx - side / 2.0), round(cy - side / 2.0), side, side)

    def clipped(self, width: int, height: int) -> Box:
        x, y = max(0, self.x), max(0, self.y)
        return Box(x, y, max(0, min(self.x2, width) - x), max(0, min(self.y2, height) - y))

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Detection:
    """A face a detector found: its box, the detector's confidence and, from a detector that gives them, the
    keypoints (BlazeFace: the subject's right eye, left eye, nose tip, mouth centre, right ear, left ear)."""

    box: Box
    score: float = 1.0
    keypoints: tuple[Point, ...] = ()

    @property
    def turn(self) -> float | None:
        """How far the face is turned from the camera: how far the nose tip lies off the middle of the eyes,
        along the line through them, in eye distances (0 frontal; 1 or more a profile, capped at 1). None
        without keypoints. 95% of FER-2013's faces are under 0.44 (PublicTest, BlazeFace keypoints)."""
        if len(self.keypoints) < 3:
            return None
        right_eye, left_eye, nose = (np.asarray(p, np.float64) for p in self.keypoints[:3])
        axis = left_eye - right_eye
        distance = float(np.hypot(*axis))
        if distance == 0:
            return 1.0
        offset = float((nose - (right_eye + left_eye) / 2) @ axis) / distance**2
        return min(1.0, abs(offset))

    def moved(self, dx: float, dy: float) -> Detection:
        """The same detection shifted by (dx, dy) pixels (a box carried between detections)."""
        box = Box(round(self.box.x + dx), round(self.box.y + dy), self.box.w, self.box.h)
        return Detection(box, self.score, tuple((x + dx, y + dy) for x, y in self.keypoints))


@dataclass(frozen=True, slots=True)
class Track:
    """A face followed across frames: its id, where it is now, and whether the detector saw it on this frame
    (``detected``) or the tracker carried it there."""

    track_id: int | None  # None without tracking
    detection: Detection
    detected: bool = True

    @property
    def box(self) -> Box:
        return self.detection.box


UNSURE_LABEL = "?"  # shown instead of a label whose calibrated score is below the model's unsure_below


@dataclass(frozen=True, slots=True)
class Prediction:
    """Class scores of one face, in the model's label order (labels come from the sidecar); ``floor`` is the
    score below which the face is shown as unsure."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    floor: float = 0.0

    @property
    def index(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def label(self) -> str:
        return self.labels[self.index]

    @property
    def score(self) -> float:
        return float(self.scores[self.index])

    @property
    def unsure(self) -> bool:
        return self.score < self.floor

    @property
    def shown_label(self) -> str:
        """The label as shown: ``?`` when unsure."""
        return UNSURE_LABEL if self.unsure else self.label

    def as_dict(self) -> dict[str, float]:
        return {name: round(float(s), 4) for name, s in zip(self.labels, self.scores)}


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face: where it is, what the model said, and (once tracked) who it is."""

    box: Box
    prediction: Prediction | None = None
    track_id: int | None = None
    smoothed: Prediction | None = None  # the per-track smoothed prediction, when smoothing is on

    @property
    def shown(self) -> Prediction | None:
        """The prediction to display: smoothed when available, else raw."""
        return self.smoothed or self.prediction


@dataclass(slots=True)
class Frame:
    """A frame from a source: BGR uint8 pixels (H, W, 3), its index and capture time (seconds); ``anonymized``:
    the loop made it with privacy on (its faces blurred or pixelated)."""

    image: np.ndarray
    index: int
    timestamp: float
    anonymized: bool = False


def bgr_image(image: np.ndarray) -> np.ndarray:
    """``image`` as the BGR uint8 (H, W, 3) pixels every stage expects: a grey image (H, W) or (H, W, 1) is spread
    over three channels, a BGRA one loses its alpha; any other shape or type is a :class:`SourceError`."""
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 4):
        raise SourceError(f"the source gave {image.dtype} frames of shape {image.shape}, not 8-bit grey, BGR or BGRA")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else np.ascontiguousarray(image[:, :, :3])


@dataclass(frozen=True, slots=True)
class SourceWaiting:
    """What a source's ``read()`` returns while it waits to reopen a lost camera: the loop keeps
    control between retries (it can stop, ping the watchdog, post a status) instead of blocking for
    the whole back-off."""

    reason: str
