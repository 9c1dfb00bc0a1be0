"""``make bench-edge``: the device loop on real camera clips and the bundled demo, one core, recording on.

Every clip in ``../shared/clips/`` (or $FER_EDGE_CLIPS), then ``assets/demo.mp4`` (synthetic: FER-2013 stills
moving on a flat background, where a detector is cheaper than on any real picture). For each clip, fer-edge
with its defaults and with the origin's Haar detector, and the origin's own loop (Haar on the full-size frame
at scaleFactor 1.3, ``model.predict`` on each face, no recording, no tracking): frames per second end to end,
ms per stage, frames with a face, faces per frame, tracks, label flicker (the share of consecutive frame
pairs of one track whose shown label changes), its counter-metric label contradiction (the share of smoothed
face-frames whose smoothed scores put 0.5 or more on one class while another label, or "?", is shown), the
share of smoothed face-frames whose label is held against a weaker lead (a label shown that is not the top
smoothed class: the lag that the dwell and the hysteresis cost) and the share of face-frames shown as
unsure; and with privacy on the share of faces an independent reference detector finds that still reach the
sinks sharp (``bench/privacy.py``).

Then what one live-view viewer and an unreachable MQTT broker cost the loop (``bench/web.py``), on the first
clip; and what recording costs the loop (``bench/recording.py``): how far it falls behind a camera-paced 720p
clip when the first face starts a recording with a 3 s pre-roll, and its fps with recording on one core and on
two, with the frames the recorder dropped. Results go to bench/results-edge.md and .json only; ``make docs``
copies the table into the docs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.loop import fer_edge_loop

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CLIPS = REPO.parent / "shared" / "clips"
STAGE_NAMES = ("read", "detect", "classify", "annotate", "record")


def real_clips() -> list[Path]:
    folder = Path(os.environ.get("FER_EDGE_CLIPS") or DEFAULT_CLIPS)
    return sorted(folder.glob("*.mp4")) if folder.is_dir() else []


def origin_loop(clip: Path, max_frames: int | None = None) -> dict:
    """The origin's webcam loop: Haar on the full-size frame, the origin's CNN (untrained: the same cost)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import numpy as np
    import tensorflow as tf

    from train.data import CLASS_NAMES
    from train.models import build_model

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cv2.setNumThreads(1)
    model, labels = build_model("seed"), list(CLASS_NAMES)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    capture = cv2.VideoCapture(str(clip))
    model.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0)  # warm-up, not timed
    frames = with_faces = faces_found = 0
    start = time.perf_counter()
    while max_frames is None or frames < max_frames:
        ok, frame = capture.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.3, minNeighbors=5)
        for x, y, w, h in faces:
            cv2.rectangle(frame, (x, y - 50), (x + w, y + h + 10), (255, 0, 0), 2)
            face = np.expand_dims(np.expand_dims(cv2.resize(gray[y : y + h, x : x + w], (48, 48)), -1), 0)
            prediction = model.predict(face.astype(np.float32), verbose=0)
            cv2.putText(
                frame,
                labels[int(np.argmax(prediction))],
                (x + 20, y - 60),
                cv2.FONT_HERSHEY_SIMPLEX,
                1,
                (255, 255, 255),
                2,
                cv2.LINE_AA,
            )
        frames += 1
        with_faces += len(faces) > 0
        faces_found += len(faces)
    elapsed = time.perf_counter() - start
    return {
        "frames": frames,
        "fps": frames / elapsed,
        "ms_per_frame": None,
        "frames_with_faces": with_faces,
        "faces": faces_found,
        "tracks": None,
        "flicker": None,
        "flicker_pairs": 0,
        "contradiction": None,
        "smoothed_faces": 0,
        "held": None,
        "unsure": None,
    }


def variants() -> list[tuple[str, dict]]:
    return [
        ("fer-edge defaults (BlazeFace)", {}),
        ("fer-edge, Haar detector", {"detector.kind": "haar"}),
        ("fer-edge defaults, no recording", {"recording.enabled": False}),
        ("fer-edge defaults, single pass (no mirror)", {"model.mirror": False}),
        ("fer-edge defaults, privacy blur", {"privacy.mode": "blur"}),
    ]


def table(results: list[dict], machine: str, load: float | None = None) -> str:
    lines = [
        "| clip | loop | fps | ms/frame: read / detect / classify / annotate / record | frames with a face "
        "| faces per frame | tracks | label flicker | contradiction | held | unsure | privacy leak |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ms = r["ms_per_frame"]
        stages = " / ".join(f"{ms[name]:.1f}" for name in STAGE_NAMES) if ms else "—"
        flicker = f"{100 * r['flicker']:.1f}%" if r["flicker"] is not None and r["flicker_pairs"] else "—"
        tracks = "—" if r["tracks"] is None else str(r["tracks"])
        contradiction = f"{100 * r['contradiction']:.1f}%" if r.get("smoothed_faces") else "—"
        held = f"{100 * r['held']:.1f}%" if r.get("smoothed_faces") else "—"
        unsure = f"{100 * r['unsure']:.1f}%" if r.get("unsure") is not None else "—"
        leak = r.get("privacy_leak")
        leak_text = (  # beside it what blurring costs: blurring the whole frame would leak nothing
            "—"
            if leak is None
            else f"{100 * leak['leak']:.1f}% of {leak['faces']}, {100 * leak['blurred_share']:.0f}% of frame blurred"
        )
        lines.append(
            f"| {r['clip']} | {r['loop']} | {r['fps']:.0f} | {stages} "
            f"| {r['frames_with_faces']}/{r['frames']} ({100 * r['frames_with_faces'] / max(1, r['frames']):.0f}%) "
            f"| {r['faces'] / max(1, r['frames']):.2f} | {tracks} | {flicker} | {contradiction} | {held} | {unsure} "
            f"| {leak_text} |"
        )
    return (
        "\n".join(lines)
        + f"\n\nMeasured by `make bench-edge` on {time.strftime('%Y-%m-%d')} ({machine}, pinned to one core, "
        "one interpreter thread"
        + ("" if load is None else f"; load average {load:.1f} on {os.cpu_count()} cores at the start")
        + "). Real clips first; `demo.mp4` is synthetic. Timings are wall time: compare rows of one run only; "
        "flicker, contradiction, held and unsure do not depend on the machine's load; held: a label shown that is "
        "not the top smoothed class (a weak lead held through the dwell).\n"
    )


def integrations_line(clip: Path, cost: dict) -> str:
    return (
        f"\nLive view and MQTT on `{clip.name}` (recording on; frames per CPU second, median of {cost['rounds']}): "
        f"{cost['fps_plain']:.0f} plain, {cost['fps_one_viewer']:.0f} with one browser on the MJPEG stream "
        f"({-100 * cost['viewer_cost']:+.1f}%; its JPEG encodes alone take {100 * cost['viewer_encode_share']:.2f}% "
        f"of a core), {cost['fps_broker_unreachable']:.0f} with the MQTT broker unreachable "
        f"({-100 * cost['broker_unreachable_cost']:+.1f}%; MQTT's threads alone "
        f"{100 * cost['broker_unreachable_cpu_share']:.3f}% of a core).\n"
    )


def recording_line(costs: dict) -> str:
    late, one, two = costs["lateness"], costs["street_one_core"], costs["street_two_cores"]
    performer = costs["performer_one_core"]
    return (
        f"\nRecording on its own thread: the loop fell {late['lateness_at_first_face_s']:.3f} s further behind the "
        f"camera at the first face of `{late['clip']}` (paced, presence-triggered, 3 s pre-roll, two cores; "
        f"{costs['lateness_recording_off']['lateness_at_first_face_s']:.3f} s with recording off; "
        f"{late.get('dropped', '?')} frames dropped by the recorder; longest loop frame "
        f"{late['longest_frame_after_face_s']:.3f} s, median before {late['median_frame_before_face_s']:.3f} s). "
        f"`{one['clip']}` with recording: {one['fps']:.0f} fps on one core ({one['dropped']} of {one['frames']} "
        f"frames dropped by the recorder), {two['fps']:.0f} on two ({two['dropped']} dropped), "
        f"{costs['speedup_two_cores']:.2f}x; `{performer['clip']}` with recording on one core: "
        f"{performer['fps']:.0f} fps ({performer['dropped']} dropped); load average {costs['load_average']:.1f} "
        "during the run.\n"
    )


def recording_costs(clips: list[Path], work: Path) -> dict | None:
    """:func:`bench.recording.device_loop`: lateness at the first face (``performer-640x360.mp4`` made 720p), fps
    on one and two cores (``street-1080p.mp4``) and on one core (``performer-640x360.mp4``); None without those
    clips or without two cores to run on."""
    from bench.recording import device_loop

    by_name = {clip.name: clip for clip in clips}
    performer, street = by_name.get("performer-640x360.mp4"), by_name.get("street-1080p.mp4")
    if performer is None or street is None or len(os.sched_getaffinity(0)) < 2:
        return None
    return device_loop(performer, street, work)


def main(argv=None) -> int:
    from bench.models import bench_parser, machine_description, on_one_core

    parser = bench_parser(__doc__)
    parser.add_argument("clips", nargs="*", help="video files (default: the real clips, then assets/demo.mp4)")
    parser.add_argument("--frames", type=int, help="at most this many frames of each clip")
    parser.add_argument("--no-origin", action="store_true", help="leave out the origin's loop (needs TensorFlow)")
    parser.add_argument("--no-integrations", action="store_true", help="leave out the live view and MQTT costs")
    parser.add_argument("--no-recording", action="store_true", help="leave out the recording costs")
    args = parser.parse_args(argv)
    all_cores = sorted(os.sched_getaffinity(0))
    on_one_core()
    load = os.getloadavg()[0]  # other work on the machine slows every row alike
    clips = [Path(c) for c in args.clips] or [*real_clips(), REPO / "assets" / "demo.mp4"]
    results = []
    for clip in clips:
        name = f"`{clip.name}`" + (" (synthetic)" if clip.name == "demo.mp4" else "")
        for loop, overrides in variants():
            results.append({"clip": name, "loop": loop, **fer_edge_loop(clip, overrides, args.frames)})
            if overrides.get("privacy.mode", "off") != "off":
                from bench.privacy import measure

                results[-1]["privacy_leak"] = measure(clip, overrides)
            print(json.dumps(results[-1]), flush=True)
        if not args.no_origin:
            results.append(
                {"clip": name, "loop": "origin loop (Haar on the full frame, Keras)", **origin_loop(clip, args.frames)}
            )
            print(json.dumps(results[-1]), flush=True)
    text = table(results, machine_description(), load)
    integrations = None
    if not args.no_integrations:
        from bench.web import stream_cost

        integrations = stream_cost(clips[0], args.frames or 600, record=True)
        text += integrations_line(clips[0], integrations)
    recording = None
    if not args.no_recording:
        with tempfile.TemporaryDirectory() as work:
            os.sched_setaffinity(0, set(all_cores[:2]))  # two cores: the loop's and the recorder's
            recording = recording_costs(clips, Path(work))
        if recording is not None:
            text += recording_line(recording)
    print(text)
    if not args.clips:
        (REPO / "bench" / "results-edge.md").write_text(text)
        (REPO / "bench" / "results-edge.json").write_text(
            json.dumps({"loops": results, "integrations": integrations, "recording": recording}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
