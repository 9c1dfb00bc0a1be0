"""``make bench`` (second table): the shipped models on PublicTest faces under camera-like conditions.

FER-2013 faces are web photos: well lit, sharp, tightly cropped. A Pi camera sees dim rooms, low
contrast, blur, sensor noise, heavy compression, small faces and a Haar box that sits a little off.
Each condition is applied to every PublicTest face (never PrivateTest: these numbers may guide
training choices) and the model is read through its JSON labels as the device reads it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from bench.models import REPO, bench_parser, data_classes, machine_description, on_one_core, publish, shown_path
from convert.tflite import tflite_scores
from fer_edge.contract import read_sidecar
from train import data
from train.augment import add_noise, blur, jpeg, shrink


def _per_face(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda faces: np.stack([fn(face) for face in faces])


def _affine(scale: float, dx: float) -> Callable[[np.ndarray], np.ndarray]:
    """The face ``scale`` times its size, moved ``dx`` of its side to the right, edges replicated."""

    def apply(face):
        h, w = face.shape
        matrix = np.array([[scale, 0.0, (1 - scale) * (w - 1) / 2 + dx * w], [0.0, scale, (1 - scale) * (h - 1) / 2]])
        return cv2.warpAffine(face, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    return _per_face(apply)


def _levels(gain: float, gamma: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """Contrast ``gain`` around each face's mean, then a gamma curve (> 1 darkens)."""

    def apply(faces):
        x = faces.astype(np.float32)
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = np.clip((x - mean) * gain + mean, 0, 255) / 255.0
        return np.round(255 * x**gamma).astype(np.uint8)

    return apply


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda faces: faces,
    "mirrored": lambda faces: faces[:, :, ::-1],
    "dim (gamma 2)": _levels(1.0, 2.0),
    "low contrast (x0.5)": _levels(0.5),
    "blur (Gaussian, sigma 1 px)": _per_face(lambda face: blur(face, 1.0)),
    "sensor noise (sigma 10)": lambda faces: add_noise(faces, 10.0, np.random.default_rng(0)),
    "face 32 px wide, upscaled": _per_face(lambda face: shrink(face, 32)),
    "face 20 px wide, upscaled": _per_face(lambda face: shrink(face, 20)),
    "JPEG quality 20": _per_face(lambda face: jpeg(face, 20)),
    "box 10% off centre": _affine(1.0, 0.10),
    "box 15% too large": _affine(1 / 1.15, 0.0),
}


def robustness(model_path: Path, faces: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """PublicTest accuracy under each condition, read through the model's own JSON labels."""
    model_labels = read_sidecar(model_path).labels
    return {
        name: float((data_classes(model_labels, tflite_scores(model_path, condition(faces))) == labels).mean())
        for name, condition in CONDITIONS.items()
    }


def table(results: dict[str, dict[str, float]]) -> str:
    models = list(results)
    lines = ["| condition | " + " | ".join(f"`{m}`" for m in models) + " |", "|---|" + "---:|" * len(models)]
    for condition in CONDITIONS:
        cells = []
        for m in models:
            accuracy, clean = results[m][condition], results[m]["clean"]
            delta = "" if condition == "clean" else f" ({100 * (accuracy - clean):+.1f})"
            cells.append(f"{100 * accuracy:.1f}%{delta}")
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = bench_parser(__doc__, "default: models/*.tflite").parse_args(argv)
    on_one_core()
    paths = [Path(p) for p in args.models] or sorted((REPO / "models").glob("*.tflite"))
    public = data.load_split(data.resolve_data_dir(args.data), "public", REPO / "build" / "cache")
    results = {shown_path(path): robustness(path, public.x, public.y) for path in paths}
    text = (
        f"{table(results)}\n\nPublicTest accuracy (points against clean in brackets), measured by `make bench` on "
        f"{time.strftime('%Y-%m-%d')} ({machine_description()}).\n"
    )
    publish("robustness", text, results, record=not args.models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
