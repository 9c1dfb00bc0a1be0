"""BlazeFace face detection (MediaPipe's short- and full-range models) on the TFLite interpreter.

The model maps a square RGB image in [-1, 1] to one box, six keypoints and one score per anchor; the anchors
are the SSD grid MediaPipe's face detection graphs describe. Decoding and weighted non-maximum suppression are
plain NumPy. A detector runs on any region of a frame (the whole frame, or a window around a tracked face): the
region is letterboxed into the model's square input and the results mapped back to frame pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from fer_edge.errors import DetectorError
from fer_edge.runtime import build_interpreter
from fer_edge.types import Box, Detection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace variant: its file, the anchor grid its graph was trained with, and the face sides in input
    pixels it finds reliably (measured on the real clips: see :func:`fer_edge.vision.detector.scan_plan`)."""

    filename: str
    input_size: int
    strides: tuple[int, ...]  # one entry per anchor layer; consecutive equal strides share a grid
    anchors_per_layer: int  # anchors per cell per layer (2: the aspect ratio 1 and its interpolated scale)
    min_score: float  # MediaPipe's default threshold for this model
    min_face: int
    max_face: int


MODELS = {
    "short": BlazeFaceModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5, 20, 80),
    "full": BlazeFaceModel("face_detection_full_range.tflite", 192, (4,), 1, 0.6, 14, 64),
}
# BlazeFace's box is tighter than the Haar cascade's box that a model's face_margin refers to (the model contract):
# on 1456 FER-2013 PublicTest faces its box is 40.9 of the 48 px and centred 3.0 px below the image centre, so
# the FER crop is 1.174 of its side (= 1.04 x 1.129, the Haar margin times this) and 0.073 of it higher.
TO_HAAR_SIDE = 1.129
TO_HAAR_SHIFT_UP = 0.073


def model_file(name: str) -> Path:
    return Path(str(resources.files("fer_edge") / "data" / MODELS[name].filename))


def anchor_centres(model: BlazeFaceModel) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], x then y, in the order of the model's outputs."""
    centres = []
    layer = 0
    while layer < len(model.strides):
        stride = model.strides[layer]
        same = 1
        while layer + same < len(model.strides) and model.strides[layer + same] == stride:
            same += 1
        cells = int(np.ceil(model.input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs.ravel() + 0.5) / cells, (ys.ravel() + 0.5) / cells], axis=1)
        centres.append(np.repeat(grid, same * model.anchors_per_layer, axis=0))
        layer += same
    return np.concatenate(centres).astype(np.float32)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's weighted suppression: each kept detection is the score-weighted mean of the detections
    that overlap it by more than ``iou_threshold``. ``boxes`` are (N, 4) x1, y1, x2, y2."""
    order = np.argsort(-scores)
    boxes, scores, points = boxes[order], scores[order], points[order]
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    remaining = np.ones(len(scores), bool)
    kept = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        ix = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = ix * iy
        iou = inter / np.maximum(areas[i] + areas - inter, 1e-9)
        group = remaining & (iou > iou_threshold)
        group[i] = True
        weights = scores[group][:, None]
        kept.append(
            (
                (boxes[group] * weights).sum(0) / weights.sum(),
                float(scores[i]),
                (points[group] * weights[:, :, None]).sum(0) / weights.sum(),
            )
        )
        remaining &= ~group
    return kept


class BlazeFaceModelRunner:
    """One BlazeFace model: faces with keypoints in a region of a BGR frame, in frame pixels."""

    def __init__(
        self,
        model: str = "short",
        min_score: float | None = None,
        nms_iou: float = 0.3,
        threads: int = 1,
        unsure_score: float | None = None,
    ):
        """``unsure_score`` below ``min_score``: faces down to it come too, suppressed apart from the sure ones
        (weighted suppression would pull a sure face's box towards the unsure guesses around it)."""
        if model not in MODELS:
            raise DetectorError(f"unknown BlazeFace model {model!r} (known: {', '.join(MODELS)})")
        self.model = MODELS[model]
        self.min_score = self.model.min_score if min_score is None else min_score
        self.nms_iou = nms_iou
        path = model_file(model)
        try:
            model_bytes = path.read_bytes()
        except OSError as exc:
            raise DetectorError(f"face detection model {path} could not be read: {exc}") from None
        self._interpreter, _ = build_interpreter(model_bytes, threads, f"face detection model {path}", DetectorError)
        inp = self._interpreter.get_input_details()[0]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: int(d["shape"][-1]), reverse=True)
        self._input_index = inp["index"]
        self._regressors_index, self._scores_index = outputs[0]["index"], outputs[1]["index"]
        self._anchors = anchor_centres(self.model)
        if int(outputs[0]["shape"][1]) != len(self._anchors):
            raise DetectorError(f"{path}: {outputs[0]['shape'][1]} outputs, {len(self._anchors)} anchors expected")
        side = self.model.input_size
        self._input = np.zeros((1, side, side, 3), np.float32)
        self._canvas = np.zeros((side, side, 3), np.uint8)
        # Raw score above which sigmoid(raw) >= min_score: thresholding before the sigmoid skips most anchors.
        lowest = self.min_score if unsure_score is None else min(unsure_score, self.min_score)
        self._raw_threshold = float(np.log(lowest / (1.0 - lowest)))
        log.debug("BlazeFace %s model, %d anchors, min score %.2f", model, len(self._anchors), self.min_score)

    def detect(self, image: np.ndarray, region: Box | None = None) -> list[Detection]:
        """Faces in ``region`` of ``image`` (the whole frame by default), in frame coordinates."""
        height, width = image.shape[:2]
        region = Box(0, 0, width, height) if region is None else region.clipped(width, height)
        if region.area == 0:
            return []
        side = self.model.input_size
        scale = side / max(region.w, region.h)  # letterbox: the longer side fills the input
        inner_w, inner_h = max(1, round(region.w * scale)), max(1, round(region.h * scale))
        patch = image[region.y : region.y2, region.x : region.x2]
        self._canvas[:] = 0
        interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR  # area: small faces survive
        resized = cv2.resize(patch, (inner_w, inner_h), interpolation=interpolation)
        # written into the input in place: a NumPy copy of the reversed channels takes about 40 times as long
        to_rgb = cv2.COLOR_GRAY2RGB if resized.ndim == 2 else cv2.COLOR_BGR2RGB
        cv2.cvtColor(resized, to_rgb, dst=self._canvas[:inner_h, :inner_w])
        np.multiply(self._canvas, 1.0 / 127.5, out=self._input[0], casting="unsafe")
        self._input -= 1.0
        self._interpreter.set_tensor(self._input_index, self._input)
        self._interpreter.invoke()
        raw_scores = self._interpreter.get_tensor(self._scores_index)[0, :, 0]
        candidates = np.flatnonzero(raw_scores >= self._raw_threshold)
        if len(candidates) == 0:
            return []
        raw = self._interpreter.get_tensor(self._regressors_index)[0, candidates]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores[candidates], -100, 100)))
        anchors = self._anchors[candidates]
        # Offsets are in input pixels: divide by the input size to get units of the [0, 1] anchor grid.
        centres = anchors + raw[:, 0:2] / side
        sizes = raw[:, 2:4] / side
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
        points = anchors[:, None, :] + raw[:, 4:16].reshape(-1, 6, 2) / side
        to_frame = side / scale  # [0, 1] of the input -> frame pixels, then offset by the region's corner
        offset = np.array([region.x, region.y], np.float32)
        detections = []
        sure = scores >= self.min_score
        kept = weighted_nms(boxes[sure], scores[sure], points[sure], self.nms_iou)
        if not sure.all():
            kept += weighted_nms(boxes[~sure], scores[~sure], points[~sure], self.nms_iou)
        for box, score, points_in_input in kept:
            (x1, y1), (x2, y2) = box[:2] * to_frame + offset, box[2:] * to_frame + offset
            side = max(x2 - x1, y2 - y1) * TO_HAAR_SIDE
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - TO_HAAR_SHIFT_UP * (y2 - y1)
            frame_box = Box(round(cx - side / 2), round(cy - side / 2), round(side), round(side)).clipped(width, height)
            if frame_box.area == 0:
                continue
            keypoints = tuple((float(x), float(y)) for x, y in points_in_input * to_frame + offset)
            detections.append(Detection(frame_box, score, keypoints))
        return detections
