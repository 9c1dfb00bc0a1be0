"""Geometric and photometric augmentation on uint8 batches, in NumPy and OpenCV.

It runs in the input pipeline, not in the graph, so the model compiles the same way on every
Keras backend (Keras' random layers cannot be jit-compiled on JAX).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 15.0  # degrees, uniform in [-r, r]
    shear: float = 0.1  # shear factor, uniform in [-s, s]
    zoom: float = 0.15  # scale uniform in [1 - z, 1 + z]
    shift: float = 0.1  # fraction of the side, uniform in [-s, s]
    flip: bool = True  # horizontal
    erasing: float = 0.25  # probability of erasing one random rectangle
    brightness: float = 0.0  # additive, fraction of 255, uniform in [-b, b]
    contrast: float = 0.0  # multiplicative, uniform in [1 - c, 1 + c]


def augment_batch(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Return an augmented copy of ``x`` (uint8, (N, H, W)); each image gets its own draw."""
    n, h, w = x.shape
    out = np.empty_like(x)
    centre = np.array([w / 2.0, h / 2.0])
    angles = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n))
    shears = rng.uniform(-cfg.shear, cfg.shear, n)
    scales = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, n)
    shifts = rng.uniform(-cfg.shift, cfg.shift, (n, 2)) * (w, h)
    flips = rng.random(n) < 0.5 if cfg.flip else np.zeros(n, bool)
    for i in range(n):
        c, s = np.cos(angles[i]), np.sin(angles[i])
        linear = scales[i] * np.array([[c, -s], [s, c]]) @ np.array([[1.0, shears[i]], [0.0, 1.0]])
        if flips[i]:
            linear = linear @ np.array([[-1.0, 0.0], [0.0, 1.0]])
        offset = centre + shifts[i] - linear @ centre
        matrix = np.hstack([linear, offset[:, None]])
        cv2.warpAffine(x[i], matrix, (w, h), dst=out[i], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if cfg.brightness or cfg.contrast:
        gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, (n, 1, 1))
        bias = rng.uniform(-cfg.brightness, cfg.brightness, (n, 1, 1)) * 255.0
        mean = out.mean(axis=(1, 2), keepdims=True)
        out = np.clip((out - mean) * gain + mean + bias, 0, 255).astype(np.uint8)
    if cfg.erasing:
        for i in np.flatnonzero(rng.random(n) < cfg.erasing):
            eh, ew = rng.integers(h // 8, h // 2, 2)
            y0, x0 = rng.integers(0, h - eh), rng.integers(0, w - ew)
            out[i, y0 : y0 + eh, x0 : x0 + ew] = rng.integers(0, 256, (eh, ew), dtype=np.uint8)
    return out
