"""Face detectors behind one interface: ``detect(image, regions=None) -> [Detection]``.

``regions=None`` scans the whole frame for faces of at least the configured size; a list of regions searches
only there (the windows around tracked faces, a fraction of the cost). Two kinds, chosen by ``detector.kind``:

- ``blazeface``: MediaPipe's BlazeFace models on the TFLite interpreter, with eye, nose and mouth keypoints. A
  whole-frame scan is a small pyramid: tiles of the full-range model sized so the smallest face to find fills
  the model's smallest reliable face, then the whole frame at once for the large faces.
- ``haar``: the origin's OpenCV Haar cascade on a downscaled grayscale frame (no keypoints).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_edge.config.device import DetectorConfig
from fer_edge.errors import DetectorError
from fer_edge.types import Box, Detection
from fer_edge.vision.blazeface import MODELS, BlazeFaceModelRunner
from fer_edge.vision.schedule import FaceScan

log = logging.getLogger(__name__)

CASCADE_FILENAME = "haarcascade_frontalface_default.xml"
# Pi OS' python3-opencv has no cv2.data; its cascades come with the opencv-data package.
SYSTEM_CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")


def cascade_candidates(configured: str | None = None) -> list[Path]:
    """Where the cascade is looked for, in order."""
    if configured:
        return [Path(configured)]
    candidates = []
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", None):
        candidates.append(Path(data.haarcascades) / CASCADE_FILENAME)
    candidates += [Path(d) / CASCADE_FILENAME for d in SYSTEM_CASCADE_DIRS]
    return candidates


def find_cascade(configured: str | None = None) -> Path:
    candidates = cascade_candidates(configured)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DetectorError(f"Haar cascade not found (tried {tried}); set detector.cascade or install opencv-data")


class HaarDetector:
    """Finds frontal faces with a Haar cascade on a grayscale copy downscaled to ``detect_width``."""

    def __init__(
        self,
        cascade_path: str | os.PathLike | None = None,
        detect_width: int = 320,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 40,
    ):
        path = find_cascade(str(cascade_path) if cascade_path else None)
        try:
            cascade: cv2.CascadeClassifier | None = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError):  # SystemError: OpenCV's binding on a malformed XML
            cascade = None
        if cascade is None or cascade.empty():
            raise DetectorError(f"Haar cascade {path} could not be loaded (not a cascade XML file?)")
        self._cascade = cascade
        log.debug("Haar cascade: %s", path)
        self.cascade_path = path
        self.detect_width = detect_width
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def smallest_face(self, width: int) -> int:
        """The side of the smallest face found in frames ``width`` pixels wide: the cascade's window (24 px), seen
        on the frame downscaled to ``detect_width``, or ``min_size`` where that is larger."""
        window = self._cascade.getOriginalWindowSize()[0]
        return max(self.min_size, int(np.ceil(window * width / min(width, self.detect_width))))

    def detect(self, image: np.ndarray, regions: list[Box] | None = None) -> list[Detection]:
        height, width = image.shape[:2]
        scale = min(1.0, self.detect_width / width)
        found: list[Detection] = []
        for region in [Box(0, 0, width, height)] if regions is None else regions:
            found += self._detect_in(image, region.clipped(width, height), scale)
        return merge_overlapping(found) if regions is not None and len(regions) > 1 else found

    def _detect_in(self, image: np.ndarray, region: Box, scale: float) -> list[Detection]:
        if region.area == 0:
            return []
        patch = image[region.y : region.y2, region.x : region.x2]
        if scale < 1.0:
            size = (max(1, round(region.w * scale)), max(1, round(region.h * scale)))
            patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY) if patch.ndim == 3 else patch
        min_side = max(1, round(self.min_size * scale))
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        height, width = image.shape[:2]
        back = 1.0 / scale
        return [
            Detection(
                Box(region.x + round(x * back), region.y + round(y * back), round(w * back), round(h * back)).clipped(
                    width, height
                )
            )
            for x, y, w, h in found
        ]


def covers(outer: Box, inner: Box, share: float = 0.9) -> bool:
    """Whether at least ``share`` of ``inner``'s area lies inside ``outer``."""
    w = min(outer.x2, inner.x2) - max(outer.x, inner.x)
    h = min(outer.y2, inner.y2) - max(outer.y, inner.y)
    return w > 0 and h > 0 and w * h >= share * inner.area


def merge_overlapping(detections: list[Detection], iou_threshold: float = 0.3) -> list[Detection]:
    """The most confident of each group of detections overlapping by more than ``iou_threshold`` (the same
    face found by two tiles, two pyramid levels or two tracks' windows)."""
    kept: list[Detection] = []
    for detection in sorted(detections, key=lambda d: -d.score):
        if all(detection.box.iou(other.box) <= iou_threshold for other in kept):
            kept.append(detection)
    return kept


@dataclass(frozen=True)
class ScanLevel:
    """One level of a whole-frame scan: which model, and the frame regions it looks at (each letterboxed into
    the model's input)."""

    model: str
    regions: tuple[Box, ...]


def tile(length: int, window: int, step: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels, ``step`` apart, covering ``length`` pixels."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window, step))
    return [*starts, length - window]


def scan_plan(width: int, height: int, min_face: int) -> list[ScanLevel]:
    """The levels that find every face of at least ``min_face`` pixels in a ``width`` x ``height`` frame.

    Measured on real clips (faces seen by both models, scaled): the full-range model finds >= 94% of faces of
    14-64 px in its 192-px input and loses larger ones; the short-range model finds faces of 20-80 px in its
    128-px input. Each tiled level covers faces of ``min_face`` to 64/14 times that; windows overlap by the
    largest face of their level, so each such face lies whole inside one window. The whole frame at once
    (short-range, then full-range where the short one's smallest face is larger than the tiles reach) ends it.
    """
    full, short = MODELS["full"], MODELS["short"]
    longest = max(width, height)
    levels: list[ScanLevel] = []
    smallest = float(min_face)
    while smallest * full.input_size / full.min_face < longest:  # the frame does not fit one input at this scale
        window = round(full.input_size * smallest / full.min_face)  # frame pixels one input covers
        overlap = round(window * full.max_face / full.input_size)
        step = max(1, window - overlap)
        regions = tuple(
            Box(x, y, min(window, width), min(window, height))
            for y in tile(height, window, step)
            for x in tile(width, window, step)
        )
        levels.append(ScanLevel("full", regions))
        smallest = smallest * full.max_face / full.min_face
    whole = (Box(0, 0, width, height),)
    if longest * short.min_face / short.input_size > smallest:
        levels.append(ScanLevel("full", whole))
    levels.append(ScanLevel("short", whole))
    return levels


# A scan region whose picture changed runs on every scan until it has been still for this many scans: a face near
# the detector's threshold is found in some frames' noise and missed in others', and one miss must not be what a
# still region keeps.
SETTLE_SCANS = 8
# A face a still region's runs found stays until this many of its runs in a row have missed it: long enough for a
# dim face, found on half the frames, short enough that the noise's chance false alarms do not pile up in a still
# room for hours.
KEEP_MISSED_RUNS = 4


@dataclass(frozen=True)
class RegionRun:
    """A scan region's remembered runs of a face model: its coarse picture when it last changed and the scan then
    (``since``), the scan of its latest run, and the faces its runs found since it changed."""

    picture: np.ndarray
    since: int
    scan: int
    faces: list[Detection]
    missed: tuple[int, ...]  # per face: the runs in a row that have not found it again


class RegionMemory:
    """The faces each scan region gave when the model last ran on it, and a coarse picture of the region then.

    A camera on a wall mostly looks at a room where nothing moves, and a whole-frame scan runs the face model on
    every region of it. The model's answer depends on the region's pixels, and on their noise for a face near its
    threshold: a region whose picture has not changed since its runs began keeps the faces they found, every face
    any of them found (one run may miss a dim face the next one finds). The picture is the mean of each ``cell`` x
    ``cell`` block per colour; a region counts as changed when one of its blocks moved by more than ``level``
    grey levels since then (so a slow change adds up until it counts). Sensor noise averages out over a block; a
    face coming in, turning or leaving moves blocks by tens of levels. A changed region runs on every scan until
    it has been still for ``SETTLE_SCANS``; after that, one region a scan runs again, the one that waited longest,
    so that each still region is looked at again every few frames without a scan's stall.
    """

    def __init__(self, cell: int, level: float) -> None:
        self.cell = max(1, cell)
        self.level = level
        self._grid: np.ndarray | None = None
        self._scans = 0
        self._refreshed = False  # an old region already ran again on this scan
        self._runs: dict[tuple[str, Box], RegionRun] = {}

    def look(self, image: np.ndarray) -> None:
        """The picture of this scan's frame."""
        height, width = image.shape[:2]
        size = (-(-width // self.cell), -(-height // self.cell))
        self._grid = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.int16)
        self._scans += 1
        self._refreshed = False

    def recall(self, model: str, region: Box) -> list[Detection] | None:
        """The faces ``model`` found in ``region`` when it last ran there, if the region has not changed since."""
        run = self._runs.get((model, region))
        if run is None or self._grid is None:
            return None
        if not self._unchanged(run.picture, self._grid[self._cells(region)]) or self._scans - run.since < SETTLE_SCANS:
            return None
        if self._scans - run.scan >= len(self._runs) and not self._refreshed:
            self._refreshed = True
            return None
        return run.faces

    def remember(self, model: str, region: Box, found: list[Detection]) -> list[Detection]:
        """Keep this run of ``model`` on ``region``; the faces the region has now: ``found``, and while its
        picture has not changed, those an earlier run found that this one missed."""
        if self._grid is None:
            return found
        picture = self._grid[self._cells(region)]
        kept = self._runs.get((model, region))
        if kept is not None and self._unchanged(kept.picture, picture):
            # nothing has moved since the face was found: it is still there (a leak costs more than a blurred
            # patch of a still room)
            missed = [0] * len(found)
            for face, times in zip(kept.faces, kept.missed):
                if times + 1 < KEEP_MISSED_RUNS and all(face.box.iou(new.box) <= 0.3 for new in found):
                    found, missed = found + [face], missed + [times + 1]
            self._runs[(model, region)] = RegionRun(kept.picture, kept.since, self._scans, found, tuple(missed))
        else:
            self._runs[(model, region)] = RegionRun(picture.copy(), self._scans, self._scans, found, (0,) * len(found))
        return found

    def _unchanged(self, then: np.ndarray, now: np.ndarray) -> bool:
        return now.shape == then.shape and int(np.abs(now - then).max(initial=0)) <= self.level

    def forget(self) -> None:
        self._runs.clear()

    def _cells(self, region: Box) -> tuple[slice, slice]:
        c = self.cell
        return slice(region.y // c, -(-region.y2 // c)), slice(region.x // c, -(-region.x2 // c))


# A tracked face is searched for again in a square window this many times its side: the face fills 1/2.5 of the
# short-range model's input (51 px of 128, inside its 20-80 px range) and may move 0.75 of its side either way.
REGION_FACTOR = 2.5
# While privacy is on, the full-range model runs once more on the whole frame mirrored past each edge by this share
# of its longer side: a face mostly outside the frame (someone walking in) is too little of a face for the model,
# its visible part and that part's mirror image are enough. The whole-frame pass finds faces from about a tenth of
# the frame's longer side up; a margin as wide holds the mirror of such a face's part inside.
EDGE_MIRROR = 0.1
# A face's mirror image in the margin reaches into the frame by its box's margin alone; a face found there counts
# when at least this share of its box lies inside.
EDGE_INSIDE = 0.15
# The full-range model finds smaller faces on a whole frame than the short-range one: a face mostly outside a 640-px
# frame is one of those.
EDGE_MODELS = ("full",)
# a run of a face model: model, frame region, tile index (None: not a tile), on the frame mirrored past its edges
Job = tuple[str, Box, int | None, bool]
# A privacy sweep skips the window of a tracked face this much larger than the smallest face its whole-frame
# pass finds (the track's box is last frame's; the margin is for a face moving away).
SWEEP_MARGIN = 1.5


class BlazeFaceDetector:
    """Whole-frame scans by :func:`scan_plan`; regions around tracked faces with the short-range model.

    While privacy is on (:meth:`privacy_scan`) faces down to ``privacy_score`` count too: a blurred collar costs
    little, a sharp face is a leak; they are blurred but neither tracked nor classified. Between whole-frame
    scans a sweep looks at the whole frame cheaply: the untiled levels (the whole frame at once, one inference
    per model), ``sweep_tiles`` of the tiles in turn, and the windows around the tracked faces (None: no sweep,
    a whole-frame scan every frame). With ``rescan_change`` above 0, a scan region whose picture changed by no
    more than that since the model last ran on it keeps that run's faces (:class:`RegionMemory`).
    """

    def __init__(
        self,
        min_face: int = 40,
        min_score: float | None = None,
        threads: int = 1,
        privacy_score: float | None = None,
        sweep_tiles: int | None = None,
        rescan_change: float = 0.0,
    ):
        self.min_face = min_face
        self.sweep_tiles = sweep_tiles
        # cells half the smallest face: a face coming in covers whole cells
        self._memory = RegionMemory(min_face // 2, rescan_change) if rescan_change > 0 else None
        self._runners = {
            name: BlazeFaceModelRunner(name, min_score, threads=threads, unsure_score=privacy_score) for name in MODELS
        }
        self._plans: dict[tuple[int, int], list[ScanLevel]] = {}
        self._next_tile = 0
        self._held: dict[int, list[Detection]] = {}  # unsure faces each tile found when last looked at
        self._held_size = (0, 0)

    def plan(self, width: int, height: int) -> list[ScanLevel]:
        key = (width, height)
        if key not in self._plans:
            self._plans[key] = scan_plan(width, height, self.min_face)
            log.info(
                "face detection on %dx%d frames, faces from %d px: %s",
                width,
                height,
                self.min_face,
                ", ".join(f"{len(level.regions)} x {level.model}" for level in self._plans[key]),
            )
        return self._plans[key]

    def detect(self, image: np.ndarray, regions: list[Box] | None = None) -> list[Detection]:
        return self.privacy_scan(image, regions, sweep=False, edges=False).faces

    def privacy_scan(
        self, image: np.ndarray, regions: list[Box] | None = None, *, sweep: bool = True, edges: bool = True
    ) -> FaceScan:
        """A whole-frame scan (``regions=None``), else the windows ``regions``, after a sweep if ``sweep``; the
        faces at the model's threshold, and the less sure ones down to ``privacy_score``. Unsure faces are not
        tracked: one a tile found stays in the answer until that tile is looked at again. With ``edges``, the
        full-range model also runs on the frame mirrored past its edges (:data:`EDGE_MIRROR`): faces mostly outside
        the frame are blurred too."""
        height, width = image.shape[:2]
        tiles = self._tiles(width, height)
        whole = Box(0, 0, width, height)  # the untiled levels' region; the scan's tiles have indices
        jobs: list[Job] = []
        if regions is None or (sweep and self.sweep_tiles is None):
            jobs = [(model, region, index, False) for index, (model, region) in enumerate(tiles)]
            jobs += self._whole_jobs(width, height, edges)
        else:
            if sweep:
                jobs = self._whole_jobs(width, height, edges) + self._sweep(width, height, len(tiles))
                # the whole-frame pass finds faces this large itself; their windows would find them again
                found_whole = SWEEP_MARGIN * max(width, height) * MODELS["full"].min_face / MODELS["full"].input_size
                regions = [region for region in regions if min(region.w, region.h) < REGION_FACTOR * found_whole]
            jobs += [("short", region, None, False) for region in regions]
        sure: list[Detection] = []
        unsure: list[Detection] = []
        beyond: list[Detection] = []  # found on the mirrored frame
        # the scan's regions stay put from frame to frame; the windows around tracked faces move with them
        memories = [self._memory if index is not None or region == whole else None for _, region, index, _ in jobs]
        if self._memory is not None and any(memories):
            self._memory.look(image)
        for (model, region, index, mirrored), memory in zip(jobs, memories):
            if index is not None:
                self._held[index] = []
            key = f"{model} mirrored" if mirrored else model  # the memory keeps the two kinds of run apart
            found = memory.recall(key, region) if memory is not None else None
            if found is None:
                found = self._mirrored(model, image) if mirrored else self._runners[model].detect(image, region)
                if memory is not None:
                    found = memory.remember(key, region, found)
            if mirrored:
                beyond += found
                continue
            for detection in found:
                if detection.score >= self._runners[model].min_score:
                    sure.append(detection)
                elif index is not None:
                    self._held[index].append(detection)
                else:
                    unsure.append(detection)
        faces = merge_overlapping(sure)
        unsure += [detection for held in self._held.values() for detection in held]
        others = [d.box for d in merge_overlapping(unsure) if all(d.box.iou(f.box) <= 0.3 for f in faces)]
        # Faces the mirrored frame showed are blurred, not tracked; one that a box of the frame's own covers already
        # adds nothing (a face inside the frame, found again), one that box covers only in part is blurred whole.
        shown = [face.box for face in faces] + others
        others += [d.box for d in merge_overlapping(beyond) if not any(covers(box, d.box) for box in shown)]
        return FaceScan(faces, others)

    def _mirrored(self, model: str, image: np.ndarray) -> list[Detection]:
        """``model`` on the whole of ``image`` mirrored past its edges, the faces clipped to the frame."""
        height, width = image.shape[:2]
        pad = round(EDGE_MIRROR * max(width, height))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        found = []
        for detection in self._runners[model].detect(padded):
            moved = detection.moved(-pad, -pad)
            box = moved.box.clipped(width, height)
            if box.area >= EDGE_INSIDE * moved.box.area:
                found.append(Detection(box, moved.score, moved.keypoints))
        return found

    def _tiles(self, width: int, height: int) -> list[tuple[str, Box]]:
        if (width, height) != self._held_size:
            self._held_size, self._held, self._next_tile = (width, height), {}, 0
            if self._memory is not None:
                self._memory.forget()
        levels = self.plan(width, height)
        return [(level.model, region) for level in levels if len(level.regions) > 1 for region in level.regions]

    def _whole_jobs(self, width: int, height: int, edges: bool) -> list[Job]:
        """The untiled levels, each model once on the whole frame; with ``edges``, then the mirrored frame
        (:data:`EDGE_MODELS`)."""
        whole = Box(0, 0, width, height)
        jobs: list[Job] = [
            (level.model, whole, None, False) for level in self.plan(width, height) if len(level.regions) == 1
        ]
        return jobs + [(model, whole, None, True) for model in (EDGE_MODELS if edges else ())]

    def _sweep(self, width: int, height: int, tiles: int) -> list[Job]:
        jobs: list[Job] = []
        all_tiles = self._tiles(width, height)
        for _ in range(min(self.sweep_tiles or 0, tiles)):
            self._next_tile %= tiles
            jobs.append((*all_tiles[self._next_tile], self._next_tile, False))
            self._next_tile += 1
        return jobs


def build_detector(cfg: DetectorConfig, threads: int = 1) -> HaarDetector | BlazeFaceDetector:
    """The detector ``cfg`` names."""
    if cfg.kind == "haar":
        return HaarDetector(cfg.cascade, cfg.detect_width, cfg.scale_factor, cfg.min_neighbors, cfg.min_face)
    return BlazeFaceDetector(
        cfg.min_face, cfg.min_score, threads, cfg.privacy_min_score, cfg.sweep_tiles, cfg.rescan_change
    )
