"""Decoding videos in tests: every frame of a recording, with PyAV and with OpenCV, as a user's player would; one
frame of a clip."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np


def decode_pyav(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def decode_opencv(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def read_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` of the video at ``path``."""
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"{path} frame {index}"
    return frame
