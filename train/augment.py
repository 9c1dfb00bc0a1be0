"""Geometric and photometric augmentation on uint8 batches, in NumPy and OpenCV.

It runs in the input pipeline, not in the graph, so the model compiles the same way on every
Keras backend (Keras' random layers cannot be jit-compiled on JAX).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from fer_edge.config.checks import Check, non_negative, number_range, unit


def _checked(default: float, check: Check) -> Any:
    return field(default=default, metadata={"check": check})


# the loader refuses values that would train nonsense: a zoom or contrast of 1 or more can turn a scale negative
# (faces upside down, faces in negative), a probability outside [0, 1] is not one
@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = _checked(15.0, number_range(0, 180))  # degrees, uniform in [-r, r]
    shear: float = _checked(0.1, non_negative)  # shear factor, uniform in [-s, s]
    zoom: float = _checked(0.15, unit)  # scale uniform in [1 - z, 1 + z]
    shift: float = _checked(0.1, unit)  # fraction of the side, uniform in [-s, s]
    flip: bool = True  # horizontal
    erasing: float = _checked(0.25, number_range(0, 1))  # probability of erasing one random rectangle
    brightness: float = _checked(0.0, number_range(0, 1))  # additive, fraction of 255, uniform in [-b, b]
    contrast: float = _checked(0.0, unit)  # multiplicative, uniform in [1 - c, 1 + c]
    # camera degradations (bench/robustness.py measures what each costs an unprepared model)
    blur: float = _checked(0.0, number_range(0, 1))  # probability of a Gaussian blur, sigma uniform in [0.5, 1.5] px
    # probability of passing through 12-32 px and back (a small, distant face)
    downscale: float = _checked(0.0, number_range(0, 1))
    noise: float = _checked(0.0, number_range(0, 1))  # probability of Gaussian sensor noise, sigma uniform in [2, 12]
    jpeg: float = _checked(0.0, number_range(0, 1))  # probability of JPEG compression at quality 15-60


def augment_batch(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Return an augmented copy of ``x`` (uint8, (N, H, W)); each image gets its own draw.

    The draws are made for the whole batch at once; the per-image loop only calls OpenCV, which
    releases the GIL, so several input threads keep a GPU fed.
    """
    n: int
    n, h, w = x.shape
    out = np.empty_like(x)
    angles = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n))
    shears = rng.uniform(-cfg.shear, cfg.shear, n)
    scales = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, n)
    shifts = rng.uniform(-cfg.shift, cfg.shift, (n, 2)) * (w, h)
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg.flip else np.ones(n)
    cos, sin = np.cos(angles), np.sin(angles)
    # scale * rotation @ shear @ mirror, then an offset that keeps the (shifted) centre in place
    linear = scales[:, None, None] * np.stack(
        [
            np.stack([cos * mirror, cos * shears - sin], axis=1),
            np.stack([sin * mirror, sin * shears + cos], axis=1),
        ],
        axis=1,
    )
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])  # pixel centres: a mirror maps column i to w-1-i
    offsets = centre + shifts - linear @ centre
    matrices = np.concatenate([linear, offsets[:, :, None]], axis=2)
    for i in range(n):
        cv2.warpAffine(x[i], matrices[i], (w, h), dst=out[i], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if cfg.brightness or cfg.contrast:
        gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, (n, 1, 1)).astype(np.float32)
        bias = rng.uniform(-cfg.brightness, cfg.brightness, (n, 1, 1)).astype(np.float32) * 255.0
        mean = out.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
        out = np.clip((out - mean) * gain + mean + bias, 0, 255).astype(np.uint8)
    if cfg.blur or cfg.downscale or cfg.noise or cfg.jpeg:
        degrade(out, rng, cfg)
    if cfg.erasing:
        erased = np.flatnonzero(rng.random(n) < cfg.erasing)
        sizes = rng.integers((h // 8, w // 8), (h // 2, w // 2), (len(erased), 2))
        corners = (rng.random((len(erased), 2)) * ((h, w) - sizes)).astype(int)
        noise = rng.integers(0, 256, (len(erased), h, w), dtype=np.uint8)
        for k, image in enumerate(erased):
            (y0, x0), (eh, ew) = corners[k], sizes[k]
            out[image, y0 : y0 + eh, x0 : x0 + ew] = noise[k, :eh, :ew]
    return out


def degrade(out: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> None:
    """Camera degradations, in place: blur, a small face, sensor noise, compression (in that order)."""
    n = len(out)
    blurred = np.flatnonzero(rng.random(n) < cfg.blur)
    for i, sigma in zip(blurred, rng.uniform(0.5, 1.5, len(blurred))):
        out[i] = blur(out[i], float(sigma))
    small = np.flatnonzero(rng.random(n) < cfg.downscale)
    for i, side in zip(small, rng.integers(12, 33, len(small))):
        out[i] = shrink(out[i], int(side))
    noisy = np.flatnonzero(rng.random(n) < cfg.noise)
    if len(noisy):
        out[noisy] = add_noise(out[noisy], rng.uniform(2.0, 12.0, (len(noisy), 1, 1)), rng)
    compressed = np.flatnonzero(rng.random(n) < cfg.jpeg)
    for i, quality in zip(compressed, rng.integers(15, 61, len(compressed))):
        out[i] = jpeg(out[i], int(quality))


# The degradations one at a time, shared with bench/robustness.py, which measures what each costs.


def blur(face: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(face, (0, 0), sigma)


def shrink(face: np.ndarray, side: int) -> np.ndarray:
    """The face as a camera sees it ``side`` pixels wide: area-averaged down, bilinear back up."""
    h, w = face.shape
    tiny = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)


def add_noise(faces: np.ndarray, sigma, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sensor noise of standard deviation ``sigma`` (a number, or one per face)."""
    return np.clip(faces + rng.normal(0.0, 1.0, faces.shape) * sigma, 0, 255).astype(np.uint8)


def jpeg(face: np.ndarray, quality: int) -> np.ndarray:
    _, encoded = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    assert decoded is not None  # OpenCV's own encoding
    return decoded
