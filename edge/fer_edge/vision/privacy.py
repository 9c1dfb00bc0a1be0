"""Face anonymisation for recordings: blur or pixelate each face box, in place.

Both modes work on a few dozen pixels per face whatever its size, so no face detail survives and the cost on a
Raspberry Pi stays small: the region is shrunk to a coarse grid, then scaled back up (smoothly for blur, in
blocks for pixelate).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fer_edge.types import Box

log = logging.getLogger(__name__)

MODES = ("off", "blur", "pixelate")

# Haar boxes run from the brows to the mouth; enlarging them covers forehead, chin, hair line and ears too.
ENLARGE = 1.3
# Pixelate: blocks across the longer side of the enlarged box (the face itself spans about 6 of them).
PIXELATE_BLOCKS = 5
# Blur: the enlarged box is shrunk to this many pixels across its longer side and blurred with a Gaussian
# whose sigma is an eighth of that, i.e. about a sixth of the face width on the original.
BLUR_GRID = 32
BLUR_SIGMA = BLUR_GRID / 6


def covered_region(box: Box, width: int, height: int) -> Box:
    """The part of a ``width`` x ``height`` frame that ``anonymize`` overwrites for ``box``."""
    cx, cy = box.centre
    w, h = box.w * ENLARGE, box.h * ENLARGE
    return Box(round(cx - w / 2), round(cy - h / 2), round(w), round(h)).clipped(width, height)


def covered_regions(boxes: list[Box], width: int, height: int) -> list[Box]:
    """The parts of the frame ``anonymize`` overwrites: each box's :func:`covered_region`, and regions that overlap
    joined into one (their bounding box), until none overlap."""
    regions = [covered_region(box, width, height) for box in boxes]
    joined = True
    while joined:
        joined = False
        apart: list[Box] = []
        for region in regions:
            for i, other in enumerate(apart):
                if region.x < other.x2 and other.x < region.x2 and region.y < other.y2 and other.y < region.y2:
                    x, y = min(region.x, other.x), min(region.y, other.y)
                    apart[i] = Box(x, y, max(region.x2, other.x2) - x, max(region.y2, other.y2) - y)
                    joined = True
                    break
            else:
                apart.append(region)
        regions = apart
    return regions


class BlurHold:
    """Keeps each anonymized box anonymized for ``hold_s`` after the frame it was last given on.

    A detector's score for a hard face (behind glass, turned, in shade) wavers around its threshold from frame to
    frame; a face it found on the last frames is most likely still there on this one. Each box of this frame takes
    the place of the held box it overlaps most (the face found again, there or a little further on), so a face that
    is found leaves no trail of blur behind it; one that is lost stays covered where it was last seen, also when a
    found face beside it overlaps its box (two faces close together, one of them lost for a frame).
    """

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._last_seen: dict[Box, float] = {}

    def update(self, boxes: list[Box], t: float) -> list[Box]:
        """This frame's ``boxes`` (at time ``t``, seconds; each once) and those given within the last ``hold_s``."""
        if self.hold_s <= 0:
            return list(dict.fromkeys(boxes))
        held = {box: seen for box, seen in self._last_seen.items() if 0 <= t - seen <= self.hold_s}
        pairs = sorted(((found.iou(box), found, box) for found in boxes for box in held), key=lambda p: -p[0])
        taken: set[Box] = set()
        for overlap, found, box in pairs:
            if overlap > 0 and found not in taken and box in held:
                taken.add(found)
                del held[box]
        self._last_seen = {**held, **dict.fromkeys(boxes, t)}
        return list(self._last_seen)

    def clear(self) -> None:
        """A scene cut: the boxes before it show other things now."""
        self._last_seen.clear()


def anonymize(image: np.ndarray, boxes: list[Box], mode: str) -> None:
    """Make each face in ``boxes`` unrecognisable, in place: ``mode`` is off, blur or pixelate.

    Overlapping faces are blurred as one region: blurred one after another, the edge of a later region would run
    sharp across a face the earlier one blurred, and crowds are where faces overlap.
    """
    if mode not in MODES:
        raise ValueError(f"privacy mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not boxes:
        return
    import cv2

    height, width = image.shape[:2]
    for region in covered_regions(boxes, width, height):
        if region.w < 2 or region.h < 2:
            continue
        pixels = image[region.y : region.y2, region.x : region.x2]
        if mode == "blur":
            pixels[...] = _blurred(cv2, pixels)
        else:
            pixels[...] = _pixelated(cv2, pixels)


def _coarse_size(w: int, h: int, cells: int) -> tuple[int, int]:
    scale = cells / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _pixelated(cv2: Any, pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    coarse = cv2.resize(pixels, _coarse_size(w, h, PIXELATE_BLOCKS), interpolation=cv2.INTER_AREA)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST)


def _blurred(cv2: Any, pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    small = cv2.resize(pixels, _coarse_size(w, h, BLUR_GRID), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
