"""Expression classification with a TFLite model and its sidecar (labels, input spec, face margin, calibration).

Scores are calibrated with the sidecar's temperature and confidence map (``fer_edge.vision.calibration``), so
that a shown 0.87 is right about 87% of the time on FER-2013's held-out faces; with ``mirror`` the scores of the
face and its mirror image are averaged first, and the calibration fitted on such averages applies.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from fer_edge.config import ModelConfig, resolve_model_path
from fer_edge.contract import Calibration, ContractError, ModelSidecar, read_sidecar
from fer_edge.errors import ModelError
from fer_edge.runtime import build_interpreter, dequantize, first_line, pixel_lut
from fer_edge.types import Box, Detection, Prediction
from fer_edge.vision.calibration import calibrate

log = logging.getLogger(__name__)


class ExpressionClassifier:
    """Classifies a face box of a grayscale frame; the interpreter and buffers are built once."""

    @classmethod
    def from_config(cls, model: ModelConfig) -> ExpressionClassifier:
        """The classifier the ``model`` section names (its path, else the shipped model: see
        :func:`fer_edge.config.resolve_model_path`)."""
        return cls(
            resolve_model_path(model.path), threads=model.threads, mirror=model.mirror, unsure_below=model.unsure_below
        )

    def __init__(
        self, model_path: str | os.PathLike, threads: int = 1, mirror: bool = False, unsure_below: float = 0.0
    ) -> None:
        model_path = Path(model_path)
        self.sidecar: ModelSidecar = read_sidecar(model_path)  # ContractError: missing/inconsistent/checksum
        self.labels = self.sidecar.labels
        self.face_margin = self.sidecar.face_margin
        self.mirror = mirror
        self.unsure_below = unsure_below
        self.calibration = self.sidecar.calibration or Calibration()
        if self.sidecar.calibration is None:
            log.warning("%s: its sidecar has no calibration: scores are shown uncalibrated", model_path)
        try:
            model_bytes = model_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{model_path}: cannot read ({exc.strerror or exc})") from None
        if hashlib.sha256(model_bytes).hexdigest() != self.sidecar.sha256:
            raise ModelError(f"{model_path}: changed while it was loaded (sha256 no longer matches its sidecar)")
        self._interpreter, self.runtime = build_interpreter(model_bytes, threads, str(model_path))
        self.pass_calibration = self.calibration.for_pass(mirror)  # chosen once: the pass never changes
        log.info(
            "model %s (%s, %s) on %s, %d thread(s), %s, temperature %g%s",
            model_path,
            self.sidecar.variant,
            ", ".join(self.labels),
            self.runtime,
            threads,
            "mirrored pass" if mirror else "single pass",
            self.pass_calibration.temperature,
            ", confidence map" if self.pass_calibration.confidence else "",
        )

        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        self._check_against_sidecar(model_path, inp, out)
        self._input_index = inp["index"]
        self._output_index = out["index"]
        _, self.input_height, self.input_width, _ = (int(d) for d in inp["shape"])
        self._input = np.zeros(inp["shape"], inp["dtype"])
        self._input_plane = self._input.reshape(self.input_height, self.input_width)
        self._resized = np.empty((self.input_height, self.input_width), np.uint8)
        self._mirrored = np.empty((self.input_height, self.input_width), np.uint8)
        self._pixel_lut = pixel_lut(inp)
        self._output_detail = out
        self._run_once(model_path)

    def _run_once(self, model_path: Path) -> None:
        """One inference on a blank face at load: a model that loads but cannot run (an op that fails in
        invoke) is refused here, before the camera opens, not when the first face appears."""
        try:
            self._interpreter.set_tensor(self._input_index, self._input)
            self._interpreter.invoke()
            scores = self._interpreter.get_tensor(self._output_index)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{model_path}: the model loads but fails when run ({first_line(exc)})") from None
        if not np.all(np.isfinite(dequantize(scores, self._output_detail))):
            raise ModelError(f"{model_path}: the model's scores for a blank face are not finite numbers")

    def _check_against_sidecar(self, model_path: Path, inp: dict, out: dict) -> None:
        shape = tuple(int(d) for d in inp["shape"])
        spec = self.sidecar.input
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 1:
            raise ModelError(f"{model_path}: expected a [1, H, W, 1] grayscale input, the model has {list(shape)}")
        if shape != tuple(spec.shape) or np.dtype(inp["dtype"]).name != spec.dtype:
            raise ModelError(
                f"{model_path}: input {list(shape)} {np.dtype(inp['dtype']).name} disagrees with the sidecar "
                f"({list(spec.shape)} {spec.dtype})"
            )
        scale, zero_point = inp["quantization"]
        if abs(scale - spec.scale) > 1e-6 * max(1.0, abs(spec.scale)) or zero_point != spec.zero_point:
            raise ModelError(
                f"{model_path}: input quantization (scale {scale}, zero point {zero_point}) disagrees with the "
                f"sidecar (scale {spec.scale}, zero point {spec.zero_point})"
            )
        classes = int(out["shape"][-1])
        if classes != len(self.labels):
            raise ModelError(f"{model_path}: output has {classes} classes, the sidecar {len(self.labels)} labels")

    def crop(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The face crop the model expects, in grayscale: a square of side ``max(w, h) * face_margin`` around the
        box, padded by edge replication where it leaves the frame. A box mostly past the frame's edge (a track
        carried out of the picture) whose square, narrower than the box, misses the frame is cropped around the
        part of it that is in the frame."""
        height, width = image.shape[:2]
        square = box.square(self.face_margin)
        inside = square.clipped(width, height)
        if inside.area == 0:
            square = box.clipped(width, height).square(self.face_margin)
            inside = square.clipped(width, height)
        if inside.area == 0:
            raise ValueError(f"{box} lies outside the {width}x{height} frame")
        crop = _gray(image[inside.y : inside.y2, inside.x : inside.x2])
        if inside != square:
            crop = cv2.copyMakeBorder(
                crop,
                inside.y - square.y,
                square.y2 - inside.y2,
                inside.x - square.x,
                square.x2 - inside.x2,
                cv2.BORDER_REPLICATE,
            )
        return crop

    def face_crop(self, image: np.ndarray, face: Detection | Box) -> np.ndarray:
        """The input-sized grayscale crop of a face: the square around its box (crops aligned on the keypoints
        measured no better, docs/BENCHMARKS.md)."""
        box = face.box if isinstance(face, Detection) else face
        crop = self.crop(image, box)
        return cv2.resize(crop, (self.input_width, self.input_height), dst=self._resized, interpolation=cv2.INTER_AREA)

    def model_scores(self, crop: np.ndarray) -> np.ndarray:
        """The model's own (uncalibrated) scores for one input-sized grayscale crop: one pass."""
        np.take(self._pixel_lut, crop, out=self._input_plane)
        self._interpreter.set_tensor(self._input_index, self._input)
        self._interpreter.invoke()
        scores: np.ndarray = dequantize(self._interpreter.get_tensor(self._output_index)[0], self._output_detail)
        return np.asarray(scores, np.float64)

    def classify(self, image: np.ndarray, face: Detection | Box) -> Prediction:
        """Calibrated class scores of one face of a BGR (or grayscale) frame."""
        crop = self.face_crop(image, face)
        scores = self.model_scores(crop)
        if self.mirror:
            scores = (scores + self.model_scores(cv2.flip(crop, 1, dst=self._mirrored))) / 2
        calibrated = calibrate(scores, self.pass_calibration)
        return Prediction(self.labels, tuple(calibrated.tolist()), floor=self.unsure_below)


def _gray(patch: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY) if patch.ndim == 3 else patch


__all__ = ["ContractError", "ExpressionClassifier", "ModelError"]
