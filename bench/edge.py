"""``make bench-edge``: frames per second of fer-edge and of the origin's loop, one core, same clip.

The origin (the Kaggle notebook's webcam script): Haar on the full-size grayscale frame
(scaleFactor 1.3, minNeighbors 5), then ``model.predict`` on each 48x48 face, label drawn, no
recording. fer-edge runs its whole loop from the same file, recording included. Both are pinned
to one core; face-found rate is over the clip's frames that have a face (assets/demo.json).
Results go to bench/results-edge.md and the README between markers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK_BEGIN, MARK_END = "<!-- bench:edge:begin -->", "<!-- bench:edge:end -->"


def face_frames(clip: Path) -> set[int]:
    truth = json.loads(clip.with_suffix(".json").read_text())
    return {f["frame"] for f in truth["faces"]}


def origin_loop(clip: Path, keras_model: Path | None, max_frames: int) -> dict:
    """The origin's webcam loop; without a trained model, its CNN untrained (the same cost per face)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cv2.setNumThreads(1)
    if keras_model is None:
        from train.data import CLASS_NAMES
        from train.models import build_model

        model, labels = build_model("seed"), list(CLASS_NAMES)
    else:
        model = keras.models.load_model(keras_model)
        labels = json.loads((keras_model.parent / "run.json").read_text())["labels"]
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    capture = cv2.VideoCapture(str(clip))
    found, frames = set(), 0
    model.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0)  # warm-up, not timed
    start = time.perf_counter()
    while frames < max_frames:
        ok, frame = capture.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.3, minNeighbors=5)
        for x, y, w, h in faces:
            cv2.rectangle(frame, (x, y - 50), (x + w, y + h + 10), (255, 0, 0), 2)
            face = np.expand_dims(np.expand_dims(cv2.resize(gray[y : y + h, x : x + w], (48, 48)), -1), 0)
            prediction = model.predict(face.astype(np.float32), verbose=0)
            cv2.putText(frame, labels[int(np.argmax(prediction))], (x + 20, y - 60), cv2.FONT_HERSHEY_SIMPLEX, 1,
                        (255, 255, 255), 2, cv2.LINE_AA)
        if len(faces):
            found.add(frames)
        frames += 1
    elapsed = time.perf_counter() - start
    return {"frames": frames, "elapsed": elapsed, "fps": frames / elapsed, "found": found}


def fer_edge_loop(clip: Path, max_frames: int, overrides: dict) -> dict:
    from fer_edge import app
    from fer_edge.config import load_config
    from fer_edge.testing import ListSink

    sink = ListSink(keep_images=False)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, {"source.path": str(clip), "source.kind": "file", "recording.output_dir": out,
                                 "logging.status_interval_s": 3600.0, **overrides})
        start = time.perf_counter()
        stats = app.run(cfg, max_frames, extra_sinks=[sink])
        elapsed = time.perf_counter() - start
    found = {i for i, faces in enumerate(sink.faces) if faces}
    return {"frames": stats.frames, "elapsed": elapsed, "fps": stats.frames / elapsed, "found": found,
            "stage_ms": getattr(stats, "stage_ms", None)}


def main(argv=None) -> int:
    from bench.models import bench_parser, machine_description, on_one_core, publish

    parser = bench_parser(__doc__)
    parser.add_argument("--clip", default=str(REPO / "assets" / "demo.mp4"))
    parser.add_argument(
        "--origin-model", help="Keras model of the origin loop (default: runs/seed, else its CNN untrained)"
    )
    parser.add_argument("--frames", type=int, default=10_000)
    args = parser.parse_args(argv)
    on_one_core()
    clip = Path(args.clip)
    truth = face_frames(clip)
    origin_model = Path(args.origin_model) if args.origin_model else next(
        (p for p in (REPO / "runs" / "seed" / "best.keras",) if p.is_file()), None)
    variants = [
        ("fer-edge, detect every frame", {"detector.every_n_frames": 1}),
        ("fer-edge, detect every 3rd frame, tracking", {"detector.every_n_frames": 3}),
        ("fer-edge, detect every 3rd frame, no recording", {"detector.every_n_frames": 3, "recording.enabled": False}),
    ]
    origin_name = f"`{origin_model.parent.name}` Keras model" if origin_model else "`seed` CNN untrained, same cost"
    rows = [(f"origin loop ({origin_name})", origin_loop(clip, origin_model, args.frames))]
    for name, overrides in variants:
        rows.append((name, fer_edge_loop(clip, args.frames, overrides)))
    base = rows[0][1]["fps"]
    lines = ["| loop | frames | fps (one core) | vs origin | faces found (frames with a face) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows:
        hit = len(r["found"] & truth) / max(1, len(truth & set(range(r["frames"]))))
        speed = f"{r['fps'] / base:.1f}x"
        lines.append(f"| {name} | {r['frames']} | {r['fps']:.1f} | {speed} | {100 * hit:.1f}% |")

    machine = machine_description()
    text = ("\n".join(lines) + f"\n\nMeasured by `make bench-edge` on {time.strftime('%Y-%m-%d')} "
            f"({machine}, pinned to one core) on `{clip.name}` ({len(truth)} of its frames have a face).\n")
    publish("edge", text, None, (MARK_BEGIN, MARK_END), () if args.no_readme else ("README.md",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
