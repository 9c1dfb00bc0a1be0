"""The ring of I420 frames the recorder encodes from, which also holds the pre-roll."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class FrameRing:
    """A preallocated ring of I420 (yuv420p) frames with their timestamps.

    Frames are converted from BGR straight into a ring slot, which is also the encoder's input buffer: I420 is half
    the size of BGR (pre-roll memory), the conversion is the one the encoder needs anyway, and slots are reused, so
    the hot path allocates no frame-sized memory. Several slots keep a frame the encoder may still reference intact.
    """

    def __init__(self, capacity: int, width: int, height: int, *, scaled_from: tuple[int, int] | None = None):
        import cv2

        self._cv2 = cv2
        self.slots = np.empty((capacity, height * 3 // 2, width), np.uint8)
        self.timestamps = [float("-inf")] * capacity
        self.capacity = capacity
        self._next = 0
        self._width, self._height = width, height
        self._resized: np.ndarray | None = None
        self._cropping = False
        self._scaled_from = scaled_from  # frames of this size are scaled down on purpose (a smaller recording)

    def forget(self) -> None:
        """Hold no frame any more (the slots stay allocated for the next ones)."""
        self.timestamps[:] = [float("-inf")] * self.capacity

    def push(self, image: np.ndarray, timestamp: float) -> int:
        cv2 = self._cv2
        index = self._next
        cv2.cvtColor(self._fit(image), cv2.COLOR_BGR2YUV_I420, dst=self.slots[index])
        self.timestamps[index] = timestamp
        self._next = (index + 1) % self.capacity
        return index

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """``image`` at the ring's size: as is, without an odd last row/column (a view), or scaled."""
        height, width = image.shape[:2]
        if height == self._height and width == self._width:
            return image
        if height - height % 2 == self._height and width - width % 2 == self._width:
            if not self._cropping:
                self._cropping = True
                log.info(
                    "recording: frames are %dx%d; recording %dx%d without the last %s (yuv420p video needs an "
                    "even width and height)",
                    width,
                    height,
                    self._width,
                    self._height,
                    "row and column" if height % 2 and width % 2 else "row" if height % 2 else "column",
                )
            return image[: self._height, : self._width]
        if self._resized is None:
            if (width, height) == self._scaled_from:
                log.info(
                    "recording: frames are %dx%d; recording them at %dx%d", width, height, self._width, self._height
                )
            else:
                log.warning(
                    "recording: frames are %dx%d, expected %dx%d; scaling them",
                    width,
                    height,
                    self._width,
                    self._height,
                )
            self._resized = np.empty((self._height, self._width, 3), np.uint8)
        return self._cv2.resize(
            image, (self._width, self._height), dst=self._resized, interpolation=self._cv2.INTER_LINEAR
        )  # a quarter of INTER_AREA's cost

    def since(self, after: float, before_slot: int) -> list[int]:
        """Slots with a timestamp > ``after``, oldest first, excluding ``before_slot`` (the newest)."""
        order = [(self._next + k) % self.capacity for k in range(self.capacity)]
        return [i for i in order if i != before_slot and self.timestamps[i] > after]
