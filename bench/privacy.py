"""``make bench-privacy``: how many faces ``privacy.mode: blur`` lets through sharp, on real footage.

A reference detector, independent of the device's BlazeFace, looks at every captured frame at full resolution:
OpenCV's frontal Haar cascade (scaleFactor 1.1, minNeighbors 5, faces from ``detector.min_face``), each face
confirmed by the alt2 cascade (the default cascade alone also finds collars, earrings and hands on these clips).
A face counts as leaked when the frame the sinks receive (recording, live view) keeps more than a quarter of
the captured face's detail in the middle of the reference box (Laplacian variance of its central 60%, output
over input): a blurred face keeps a few percent, a face half inside a blurred region about half. The middle
only, so the step at a blurred region's edge does not count as detail; overlays are off for the same reason.

Clips: a 1280x720 walk-in clip built from ``performer-640x360.mp4`` (4 s of empty stage, then the performer
slides in, then the clip's own cuts: to the audience, to the wide shot, to a close profile), 10 s of its empty
stage alone (a still room with nobody in it: what the device does most of a day), both with a camera's sensor
noise added to each frame, and ``street-1080p.mp4`` as it is. Counter-metrics beside the leak: the share of
the frame blurred per frame (a leak rate met by blurring everything would show there), the reference faces per
frame, and frames per second on one core with privacy off and on (the whole-frame scan on every frame is the
price of privacy; regions whose picture has not changed keep their faces, so a still room costs little). The
Haar detector's row shows what privacy lets through with ``detector.kind: haar`` (docs/CONFIG.md warns of it).

Results go to bench/results-privacy.md and .json only.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO.parent / "shared" / "clips"
PERFORMER = CLIPS / "performer-640x360.mp4"
STREET = CLIPS / "street-1080p.mp4"
WALK_IN_SIZE = (1280, 720)
EMPTY_STAGE_S = 4.0
SLIDE_FRAMES = 24  # the performer's shot slides in from the right over 0.8 s
EMPTY_ROOM_S = 10.0
SENSOR_NOISE = 2.0  # grey levels (standard deviation) added to each pixel of each built frame: no two are equal
# What privacy's every-frame coverage costs, and what each saving does to the leak.
OPTIONS: dict[str, dict] = {
    "every frame scanned, score 0.2, hold 0.25 s (default)": {},
    "every frame scanned, score 0.2, no hold": {"privacy.hold_s": 0.0},
    "every frame scanned, model's threshold, no hold": {"detector.privacy_min_score": None, "privacy.hold_s": 0.0},
    "sweep + 1 tile": {"detector.sweep_tiles": 1},
    "every region run on every frame (no memory)": {"detector.rescan_change": 0.0},
    "Haar detector (`detector.kind: haar`)": {"detector.kind": "haar"},
}
SCAN_KEYS = ("detector.kind", "detector.rescan_change")  # the options' settings that change privacy-off scans too
# the options run on the empty room: nothing to leak there, only the cost of watching it
EMPTY_ROOM_OPTIONS = (next(iter(OPTIONS)), "every region run on every frame (no memory)")
KEPT_DETAIL = 0.25  # a reference face keeping more of its detail than this is leaked
TARGET_LEAK = 0.02


def read_all(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def empty_stage(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The curtain right of the performer (no face), mirrored to the frame's width and scaled to ``size``."""
    curtain = frame[:, 440:640]
    wide = np.hstack([curtain, curtain[:, ::-1], curtain, curtain[:, ::-1]])[:, : frame.shape[1]]
    return cv2.resize(wide, size, interpolation=cv2.INTER_CUBIC)


def with_sensor_noise(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(frame + rng.normal(0.0, SENSOR_NOISE, frame.shape), 0, 255).astype(np.uint8) for frame in frames]


def empty_room_frames() -> tuple[list[np.ndarray], float]:
    """The walk-in's empty stage for ``EMPTY_ROOM_S``, with sensor noise."""
    source, fps = read_all(PERFORMER)
    stage = empty_stage(source[82], WALK_IN_SIZE)
    return with_sensor_noise([stage] * round(EMPTY_ROOM_S * fps), seed=1), fps


def walk_in_frames() -> tuple[list[np.ndarray], float]:
    """Empty stage, the performer's close shot (frames 82-210) sliding in, then the audience (211-274), the
    wide shot (0-19) and the close profile (20-81): 4 s of nothing, one walk-in, three cuts; sensor noise on
    every frame."""
    source, fps = read_all(PERFORMER)
    width, height = WALK_IN_SIZE
    stage = empty_stage(source[82], WALK_IN_SIZE)

    def scaled(frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, WALK_IN_SIZE, interpolation=cv2.INTER_CUBIC)

    frames = [stage.copy() for _ in range(round(EMPTY_STAGE_S * fps))]
    for step, frame in enumerate(source[82:211]):
        image = scaled(frame)
        if step < SLIDE_FRAMES:
            offset = round(width * (1 - (step + 1) / (SLIDE_FRAMES + 1)))
            slid = stage.copy()
            slid[:, offset:] = image[:, : width - offset]
            image = slid
        frames.append(image)
    frames += [scaled(frame) for frame in source[211:] + source[:82]]
    return with_sensor_noise(frames), fps


def write_clip(frames: list[np.ndarray], fps: float, path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())


class ReferenceFaces:
    """The independent reference: Haar's default frontal cascade on the full-resolution frame, each face
    confirmed by the alt2 cascade."""

    def __init__(self, min_face: int) -> None:
        folder = cv2.data.haarcascades
        self._cascade = cv2.CascadeClassifier(folder + "haarcascade_frontalface_default.xml")
        self._confirm = cv2.CascadeClassifier(folder + "haarcascade_frontalface_alt2.xml")
        self.min_face = min_face

    def find(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        from fer_edge.types import Box

        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        side = (self.min_face, self.min_face)
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=side)
        height, width = grey.shape
        smaller = (round(0.8 * self.min_face),) * 2
        faces = []
        for face in (Box(*map(int, b)) for b in found):
            window = face.square(2.0).clipped(width, height)  # the second opinion looks only around the face
            patch = grey[window.y : window.y2, window.x : window.x2]
            confirming = self._confirm.detectMultiScale(patch, scaleFactor=1.1, minNeighbors=3, minSize=smaller)
            if any(
                face.iou(Box(window.x + int(x), window.y + int(y), int(w), int(h))) > 0.3 for x, y, w, h in confirming
            ):
                faces.append((face.x, face.y, face.w, face.h))
        return faces


def core(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The central 60% of ``box``: eyes, nose and mouth."""
    x, y, w, h = box
    return x + round(0.2 * w), y + round(0.2 * h), max(1, round(0.6 * w)), max(1, round(0.6 * h))


def detail(image: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x, y, w, h = core(box)
    grey = cv2.cvtColor(image[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


class LeakSink:
    """A sink after the recorder: decodes the same clip in step (the captured frame), finds the reference
    faces there and checks each one in the frame the sinks got."""

    def __init__(self, clip: Path, reference: ReferenceFaces) -> None:
        self._capture = cv2.VideoCapture(str(clip))
        self._reference = reference
        self.faces = 0
        self.leaked = 0
        self.frames = 0
        self.longest_run = 0  # most consecutive frames with a leaked face
        self._run = 0
        self.blurred_area = 0.0  # frame shares, summed over frames (set by the privacy wrapper)

    def write(self, frame, faces) -> None:
        ok, captured = self._capture.read()
        if not ok:
            raise RuntimeError("the reference decoder ran out of frames before the loop")
        self.frames += 1
        leaked_here = 0
        for box in self._reference.find(captured):
            before = detail(captured, box)
            if before <= 0:
                continue
            self.faces += 1
            leaked_here += detail(frame.image, box) / before > KEPT_DETAIL
        self.leaked += leaked_here
        self._run = self._run + 1 if leaked_here else 0
        self.longest_run = max(self.longest_run, self._run)

    def close(self) -> None:
        self._capture.release()


def measure(clip: Path, overrides: dict) -> dict:
    """Leaked reference faces with ``overrides`` on the defaults (privacy blur, no overlays, no recording)."""
    from bench.loop import clip_config, run_closed
    from fer_edge import app
    from fer_edge.vision.privacy import covered_regions

    with tempfile.TemporaryDirectory() as out:
        settings = {"privacy.mode": "blur", "overlay.enabled": False, "recording.enabled": False, **overrides}
        cfg = clip_config(clip, out, settings)
        sink = LeakSink(clip, ReferenceFaces(cfg.detector.min_face))
        pipeline = app.build_pipeline(cfg, extra_sinks=[sink])
        blur = pipeline.privacy
        assert blur is not None
        width, height = pipeline.source.size

        def counted(image: np.ndarray, boxes: list) -> None:
            mask = np.zeros((height, width), bool)
            for region in covered_regions(boxes, width, height):
                mask[region.y : region.y2, region.x : region.x2] = True
            sink.blurred_area += float(mask.mean())
            blur(image, boxes)

        pipeline.privacy = counted
        run_closed(pipeline)
    return {
        "frames": sink.frames,
        "faces": sink.faces,
        "leaked": sink.leaked,
        "leak": sink.leaked / max(1, sink.faces),
        "longest_leak_frames": sink.longest_run,
        "blurred_share": sink.blurred_area / max(1, sink.frames),
    }


def inferences_per_frame(clip: Path, overrides: dict) -> float:
    """BlazeFace inferences per frame with privacy on: the detection cost without the noise of a shared CPU; NaN
    for the Haar detector, which runs no model."""
    from bench.loop import clip_config, run_closed
    from fer_edge import app
    from fer_edge.testing import count_face_model_runs
    from fer_edge.vision.detector import BlazeFaceDetector

    if overrides.get("detector.kind", "blazeface") != "blazeface":
        return math.nan
    with tempfile.TemporaryDirectory() as out:
        settings = {"privacy.mode": "blur", "overlay.enabled": False, "recording.enabled": False, **overrides}
        pipeline = app.build_pipeline(clip_config(clip, out, settings))
        detector = pipeline.detector
        assert isinstance(detector, BlazeFaceDetector)
        runs = count_face_model_runs(detector)
        stats = run_closed(pipeline, warm=False)  # a warm-up's detection would count too
    return runs[0] / max(1, stats.frames)


def loop_fps(clip: Path, overrides: dict) -> float:
    from bench.loop import fer_edge_loop

    return float(fer_edge_loop(clip, {"recording.enabled": False, **overrides})["fps"])


def figure(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def table(rows: list[dict], machine: str) -> str:
    lines = [
        "| clip | privacy detection | frames | reference faces | leaked sharp | longest leak, frames "
        "| frame blurred | face-detector inferences per frame | fps privacy off / on |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clip']} | {r['option']} | {r['frames']} | {r['faces']} | {r['leaked']} ({100 * r['leak']:.1f}%) "
            f"| {r['longest_leak_frames']} | {100 * r['blurred_share']:.1f}% | {figure(r['inferences'])} "
            f"| {r['fps_off']:.1f} / {r['fps_on']:.1f} |"
        )
    return (
        "\n".join(lines)
        + f"\n\nMeasured by `make bench-privacy` on {time.strftime('%Y-%m-%d')} ({machine}, one core); device "
        f"defaults with `privacy.mode: blur` and the option's settings; reference: Haar frontal cascade, confirmed "
        f"by the alt2 cascade, on every full-resolution frame; leaked: the output keeps more than "
        f"{KEPT_DETAIL:.0%} of the face's detail; target: at most {TARGET_LEAK:.0%} leaked on each clip with the "
        f"defaults.\n"
    )


def main(argv: list[str] | None = None) -> int:
    from bench.models import bench_parser, machine_description, on_one_core

    parser = bench_parser(__doc__)
    parser.add_argument("--no-fps", action="store_true", help="leave out the frames-per-second runs")
    parser.add_argument("--option", action="append", choices=list(OPTIONS), help="only these (default: all)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results-privacy"), help="results path, no suffix")
    args = parser.parse_args(argv)
    if not PERFORMER.is_file() or not STREET.is_file():
        print(f"error: the real clips are not in {CLIPS}", file=sys.stderr)
        return 2
    on_one_core()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        walk_in, empty_room = Path(tmp) / "walk-in-720p.mp4", Path(tmp) / "empty-room-720p.mp4"
        for path, build in ((walk_in, walk_in_frames), (empty_room, empty_room_frames)):
            frames, fps = build()
            write_clip(frames, fps, path)
            del frames
        clips = (
            ("walk-in 720p (from `performer-640x360.mp4`)", walk_in, list(OPTIONS)),
            ("empty room 720p (its stage, nobody in it)", empty_room, list(EMPTY_ROOM_OPTIONS)),
            (f"`{STREET.name}`", STREET, list(OPTIONS)),
        )
        for name, clip, options in clips:
            fps_off: dict[tuple, float] = {}  # by the detector settings, which privacy-off scans use as well
            for option in [option for option in options if option in (args.option or options)]:
                overrides = OPTIONS[option]
                row = {"clip": name, "option": option, **measure(clip, overrides)}
                row["inferences"] = inferences_per_frame(clip, overrides)
                off = {key: overrides[key] for key in SCAN_KEYS if key in overrides}
                if tuple(off.items()) not in fps_off:
                    fps_off[tuple(off.items())] = math.nan if args.no_fps else loop_fps(clip, off)
                row["fps_off"] = fps_off[tuple(off.items())]
                row["fps_on"] = math.nan if args.no_fps else loop_fps(clip, {"privacy.mode": "blur", **overrides})
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = table(rows, machine_description())
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=2) + "\n")
    worst = max((r["leak"] for r in rows if not OPTIONS[r["option"]]), default=0.0)
    return 0 if worst <= TARGET_LEAK else 1


if __name__ == "__main__":
    sys.exit(main())
