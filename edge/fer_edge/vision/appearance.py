"""A face's colours, cheaply: to tell two nearby people apart where their boxes alone cannot.

The tracker keeps a small sample of each face from its last match and compares colours only for a match by
centre distance (the boxes do not overlap), so the common case, a face that overlaps its own last box, pays
only for the sample's copy.
"""

from __future__ import annotations

import math

import numpy as np

from fer_edge.types import Box

# The middle of the box: less of the background around the face.
INNER_FRACTION = 0.8
# Every n-th pixel, n chosen to keep about this many per side: plenty for a colour histogram, whatever the face's size.
SAMPLE_SIDE = 32
HUE_BINS = 16
SATURATION_BINS = 8


def colour_sample(image: np.ndarray, box: Box) -> np.ndarray | None:
    """Every n-th pixel of the middle of ``box`` in a BGR ``image``, copied; None if the box is off the picture."""
    height, width = image.shape[:2]
    side = max(1, round(max(box.w, box.h) * INNER_FRACTION))
    middle = Box(box.x + (box.w - side) // 2, box.y + (box.h - side) // 2, side, side).clipped(width, height)
    if middle.w == 0 or middle.h == 0:
        return None
    step = max(1, side // SAMPLE_SIDE)
    return image[middle.y : middle.y2 : step, middle.x : middle.x2 : step].copy()


def _hue_saturation_histogram(sample: np.ndarray) -> np.ndarray:
    """Pixel counts by hue (HUE_BINS around the colour wheel) and saturation (SATURATION_BINS from grey to pure),
    binned as OpenCV's HSV does; in NumPy, so that the loop's tracking needs no OpenCV."""
    blue, green, red = (channel.astype(np.float32).ravel() for channel in np.moveaxis(sample, -1, 0)[:3])
    top = np.maximum(np.maximum(blue, green), red)
    spread = top - np.minimum(np.minimum(blue, green), red)
    saturation = np.divide(spread, top, out=np.zeros_like(top), where=top > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sextant = np.where(
            top == red,
            ((green - blue) / spread) % 6,
            np.where(top == green, (blue - red) / spread + 2, (red - green) / spread + 4),
        )
    sextant = np.where(spread > 0, sextant, 0.0)  # grey: no hue
    hue_bin = np.minimum((sextant * (HUE_BINS / 6)).astype(np.intp), HUE_BINS - 1)
    saturation_bin = np.minimum((saturation * SATURATION_BINS).astype(np.intp), SATURATION_BINS - 1)
    counts = np.bincount(hue_bin * SATURATION_BINS + saturation_bin, minlength=HUE_BINS * SATURATION_BINS)
    return counts.astype(np.float64)


def colour_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two samples' hue-saturation histograms: 1 the same colours, about 0 or below unrelated
    ones. Grey pictures (no saturation) always compare as the same."""
    first, second = _hue_saturation_histogram(a), _hue_saturation_histogram(b)
    first -= first.mean()
    second -= second.mean()
    scale = math.sqrt(float(first @ first) * float(second @ second))
    return float(first @ second) / scale if scale else 1.0
