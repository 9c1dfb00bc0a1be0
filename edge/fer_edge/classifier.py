"""Expression classification with a TFLite model and its sidecar (labels, input spec, face margin)."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from fer_edge.config import ModelConfig, resolve_model_path
from fer_edge.contract import ContractError, ModelSidecar, read_sidecar
from fer_edge.errors import ModelError
from fer_edge.types import Box, Detection, Point, Prediction

log = logging.getLogger(__name__)

# Runtimes in order of preference: ai-edge-litert is tflite-runtime's successor (tflite-runtime ends at
# 2.14 and breaks under NumPy 2); full TensorFlow is the workstation fallback, never needed on the Pi.
RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def load_interpreter_class():
    """The ``Interpreter`` class of the first runtime that imports, and the runtime's module name."""
    for name in RUNTIMES:
        try:
            if name == "tensorflow.lite":
                # The importable tensorflow.lite package lacks Interpreter; the public one is tf.lite.
                return importlib.import_module("tensorflow").lite.Interpreter, name
            return importlib.import_module(name).Interpreter, name
        except ImportError:
            continue
    raise ModelError(f"no TFLite runtime found (tried {', '.join(RUNTIMES)}); pip install ai-edge-litert")


def pixel_lut(input_detail: dict) -> np.ndarray:
    """Pixel value 0-255 -> the model's input value: quantized per the input's scale and zero point, or the
    plain value for float models (they rescale inside the graph)."""
    dtype = input_detail["dtype"]
    scale, zero_point = input_detail["quantization"]
    if np.issubdtype(dtype, np.floating) or scale <= 0:
        return np.arange(256).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(np.arange(256) / scale + zero_point), info.min, info.max).astype(dtype)


# Where BlazeFace puts the subject's right eye, left eye, nose tip and mouth centre on a 48x48 FER-2013 face: the
# mean over 1456 PublicTest images (each upscaled to 72 px and padded to the detector's 128-px input; the
# spread is about 3.6 px). An aligned crop maps a face's keypoints onto these.
FER_KEYPOINTS = np.array([[15.66, 18.50], [32.49, 18.39], [24.25, 28.47], [24.22, 36.68]])
FER_SIDE = 48.0


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that maps ``source`` points onto ``target`` in least squares."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    s, t = source - source_mean, target - target_mean
    a = (s * t).sum() / (s * s).sum()
    b = (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum() / (s * s).sum()
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (target_mean - rotation @ source_mean)[:, None]])


def dequantize(values: np.ndarray, output_detail: dict) -> np.ndarray:
    """A raw output tensor as float32 scores."""
    scale, zero_point = output_detail["quantization"]
    if scale > 0:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


class ExpressionClassifier:
    """Classifies a face box of a grayscale frame; the interpreter and buffers are built once."""

    @classmethod
    def from_config(cls, model: ModelConfig) -> ExpressionClassifier:
        """The classifier the ``model`` section names (its path, else the shipped model: see
        :func:`fer_edge.config.resolve_model_path`)."""
        return cls(resolve_model_path(model.path), threads=model.threads, align=model.align)

    def __init__(self, model_path: str | os.PathLike, threads: int = 1, align: bool = False):
        model_path = Path(model_path)
        self.align = align
        self.sidecar: ModelSidecar = read_sidecar(model_path)  # ContractError: missing/inconsistent/checksum
        self.labels = self.sidecar.labels
        self.face_margin = self.sidecar.face_margin
        interpreter_class, self.runtime = load_interpreter_class()
        # From bytes, not model_path=: the runtime would map the file, and a model copied over it in place
        # (cp new.tflite model.tflite) would then kill the process with SIGBUS at the next inference.
        try:
            model_bytes = model_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{model_path}: cannot read ({exc.strerror or exc})") from None
        if hashlib.sha256(model_bytes).hexdigest() != self.sidecar.sha256:
            raise ModelError(f"{model_path}: changed while it was loaded (sha256 no longer matches its sidecar)")
        try:
            self._interpreter = interpreter_class(model_content=model_bytes, num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{model_path}: not a loadable TFLite model ({_first_line(exc)})") from None
        log.info(
            "model %s (%s, %s) on %s, %d thread(s)",
            model_path,
            self.sidecar.variant,
            ", ".join(self.labels),
            self.runtime,
            threads,
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
        self._pixel_lut = pixel_lut(inp)
        self._output_detail = out
        self._fer_keypoints = FER_KEYPOINTS * np.array([self.input_width, self.input_height]) / FER_SIDE
        self._run_once(model_path)

    def _run_once(self, model_path: Path) -> None:
        """One inference on a blank face at load: a model that loads but cannot run (an op that fails in
        invoke) is refused here, before the camera opens, not when the first face appears."""
        try:
            self._interpreter.set_tensor(self._input_index, self._input)
            self._interpreter.invoke()
            scores = self._interpreter.get_tensor(self._output_index)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{model_path}: the model loads but fails when run ({_first_line(exc)})") from None
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
        box, padded by edge replication where it leaves the frame."""
        height, width = image.shape[:2]
        square = box.square(self.face_margin)
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

    def aligned_crop(self, image: np.ndarray, keypoints: tuple[Point, ...]) -> np.ndarray:
        """The model's input-sized grayscale crop with the face's eyes, nose and mouth where FER-2013 has them
        (rotated so the eyes are level), padded by edge replication where it leaves the frame."""
        to_crop = similarity_transform(np.asarray(keypoints[:4], np.float64), self._fer_keypoints)
        scale = float(np.sqrt(abs(np.linalg.det(to_crop[:, :2]))))  # crop pixels per frame pixel
        return self._warp(image, to_crop, scale)

    def _warp(self, image: np.ndarray, to_crop: np.ndarray, scale: float) -> np.ndarray:
        """``image`` warped by ``to_crop`` (frame -> crop pixels, ``scale`` crop pixels per frame pixel) into the
        model's input size, in grayscale; only the part of the frame the crop sees is converted and shrunk."""
        height, width = image.shape[:2]
        out_w, out_h = self.input_width, self.input_height
        to_frame = cv2.invertAffineTransform(to_crop)
        corners = np.array([[0, 0, 1], [out_w, 0, 1], [0, out_h, 1], [out_w, out_h, 1]], np.float64) @ to_frame.T
        x1, y1 = np.floor(corners.min(0)).astype(int) - 1
        x2, y2 = np.ceil(corners.max(0)).astype(int) + 1
        region = Box(int(x1), int(y1), int(x2 - x1), int(y2 - y1))
        inside = region.clipped(width, height)
        if inside.area == 0:
            raise ValueError(f"the face lies outside the {width}x{height} frame")
        patch = _gray(image[inside.y : inside.y2, inside.x : inside.x2])
        to_crop = to_crop.copy()
        to_crop[:, 2] += to_crop[:, :2] @ np.array([inside.x, inside.y], np.float64)  # patch -> crop
        if scale < 1.0:  # shrink by area first: warpAffine alone would alias a large face
            size = (max(1, round(inside.w * scale)), max(1, round(inside.h * scale)))
            patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
            to_crop[:, :2] *= np.array([inside.w / size[0], inside.h / size[1]])
        return cv2.warpAffine(
            patch, to_crop, (out_w, out_h), dst=self._resized, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    def face_crop(self, image: np.ndarray, face: Detection | Box) -> np.ndarray:
        """The input-sized grayscale crop of a face: aligned by its keypoints when it has them and ``align`` is
        on, else the box's square."""
        detection = face if isinstance(face, Detection) else Detection(face)
        if self.align and len(detection.keypoints) >= 4:
            return self.aligned_crop(image, detection.keypoints)
        crop = self.crop(image, detection.box)
        return cv2.resize(crop, (self.input_width, self.input_height), dst=self._resized, interpolation=cv2.INTER_AREA)

    def classify(self, image: np.ndarray, face: Detection | Box) -> Prediction:
        """Class scores of one face of a BGR (or grayscale) frame."""
        np.take(self._pixel_lut, self.face_crop(image, face), out=self._input_plane)
        self._interpreter.set_tensor(self._input_index, self._input)
        self._interpreter.invoke()
        scores = dequantize(self._interpreter.get_tensor(self._output_index)[0], self._output_detail)
        return Prediction(self.labels, tuple(scores.tolist()))


def _gray(patch: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY) if patch.ndim == 3 else patch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["ContractError", "ExpressionClassifier", "ModelError", "dequantize", "load_interpreter_class", "pixel_lut"]
