"""Face detection with an OpenCV Haar cascade, on a downscaled grayscale frame."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from fer_edge.errors import DetectorError
from fer_edge.types import Box

log = logging.getLogger(__name__)

CASCADE_FILENAME = "haarcascade_frontalface_default.xml"
# Pi OS' python3-opencv has no cv2.data; its cascades come with the opencv-data package.
SYSTEM_CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")


def cascade_candidates(configured: str | None = None) -> list[Path]:
    """Where the cascade is looked for, in order."""
    if configured:
        return [Path(configured)]
    candidates = []
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", None):
        candidates.append(Path(data.haarcascades) / CASCADE_FILENAME)
    candidates += [Path(d) / CASCADE_FILENAME for d in SYSTEM_CASCADE_DIRS]
    return candidates


def find_cascade(configured: str | None = None) -> Path:
    candidates = cascade_candidates(configured)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DetectorError(f"Haar cascade not found (tried {tried}); set detector.cascade or install opencv-data")


class HaarDetector:
    """Finds faces; returns boxes in full-frame coordinates.

    The detector also owns the one grayscale conversion per frame (:meth:`prepare`): the classifier
    reads the same gray frame, so colour is converted once.
    """

    def __init__(
        self,
        cascade_path: str | os.PathLike | None = None,
        detect_width: int = 320,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 40,
        every_n_frames: int = 1,
    ):
        path = find_cascade(str(cascade_path) if cascade_path else None)
        try:
            self._cascade = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError):  # SystemError: OpenCV's binding on a malformed XML
            self._cascade = None
        if self._cascade is None or self._cascade.empty():
            raise DetectorError(f"Haar cascade {path} could not be loaded (not a cascade XML file?)")
        log.debug("Haar cascade: %s", path)
        self.cascade_path = path
        self.detect_width = detect_width
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.every_n_frames = every_n_frames
        self._gray: np.ndarray | None = None
        self._small: np.ndarray | None = None

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The grayscale version of a BGR frame, in a buffer reused from frame to frame."""
        if image.ndim == 2:
            return image
        if self._gray is None or self._gray.shape != image.shape[:2]:
            self._gray = np.empty(image.shape[:2], np.uint8)
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY, dst=self._gray)

    def detect(self, gray: np.ndarray) -> list[Box]:
        height, width = gray.shape[:2]
        scale = min(1.0, self.detect_width / width)
        if scale < 1.0:
            small_size = (self.detect_width, max(1, round(height * scale)))
            if self._small is None or self._small.shape != (small_size[1], small_size[0]):
                self._small = np.empty((small_size[1], small_size[0]), np.uint8)
            small = cv2.resize(gray, small_size, dst=self._small, interpolation=cv2.INTER_AREA)
        else:
            small = gray
        min_side = max(1, round(self.min_size * scale))
        found = self._cascade.detectMultiScale(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        if len(found) == 0:
            return []
        back = 1.0 / scale
        return [Box(int(x), int(y), int(w), int(h)).scaled(back).clipped(width, height) for x, y, w, h in found]
