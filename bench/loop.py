"""The fer-edge loop on one clip, as the benchmarks run it, and what its shown labels did: flicker, and the
counter-metrics it can be bought with (contradiction, held leads, unsure faces)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path


def label_flicker(faces_per_frame: list[list]) -> tuple[float, int]:
    """Share of consecutive frame pairs of one track whose shown label changes, and the number of such pairs."""
    previous: dict[int, str | None] = {}
    pairs = changes = 0
    for faces in faces_per_frame:
        current = {}
        for face in faces:
            if face.track_id is None:
                continue
            label = face.shown.shown_label if face.shown is not None else None
            current[face.track_id] = label
            if face.track_id in previous and label is not None and previous[face.track_id] is not None:
                pairs += 1
                changes += label != previous[face.track_id]
        previous = current
    return (changes / pairs if pairs else 0.0), pairs


@dataclass(frozen=True)
class ShownAgainstSmoothed:
    """How the shown labels stand against the smoothed scores, over the ``faces`` face-frames that have smoothed
    scores: ``contradiction``, the share whose top smoothed class has 0.5 or more while another label (or "?")
    is shown; ``held``, the share where a label (not "?") is shown that is not the top smoothed class, a weak
    lead the dwell and the hysteresis hold a label against. Flicker can be bought with either."""

    contradiction: float
    held: float
    faces: int


def shown_against_smoothed(faces_per_frame: list[list]) -> ShownAgainstSmoothed:
    contradicted = held = total = 0
    for faces in faces_per_frame:
        for face in faces:
            if face.smoothed is None:
                continue
            scores = face.smoothed.scores
            top = max(range(len(scores)), key=scores.__getitem__)
            other_label = face.shown.shown_label != face.smoothed.labels[top]
            total += 1
            contradicted += scores[top] >= 0.5 and other_label
            held += not face.shown.unsure and other_label
    if not total:
        return ShownAgainstSmoothed(0.0, 0.0, 0)
    return ShownAgainstSmoothed(contradicted / total, held / total, total)


def unsure_share(faces_per_frame: list[list]) -> float:
    """Share of the faces with a shown prediction that were shown as unsure."""
    shown = [face.shown for faces in faces_per_frame for face in faces if face.shown is not None]
    return sum(p.unsure for p in shown) / len(shown) if shown else 0.0


def clip_config(clip: Path, output_dir: str, overrides: dict):
    """The defaults, reading ``clip`` as fast as it decodes, recording into ``output_dir``, no status lines."""
    from fer_edge.config import load_config

    settings = {"source.path": str(clip), "source.kind": "file", "recording.output_dir": output_dir}
    return load_config(None, {**settings, "logging.status_interval_s": 3600.0, **overrides})


def fer_edge_loop(clip: Path, overrides: dict, max_frames: int | None = None) -> dict:
    from fer_edge import app
    from fer_edge.testing import ListSink

    sink = ListSink(keep_images=False)
    with tempfile.TemporaryDirectory() as out:
        cfg = clip_config(clip, out, overrides)
        stats = run_closed(app.build_pipeline(cfg, extra_sinks=[sink]), max_frames)
    flicker, pairs = label_flicker(sink.faces)
    against = shown_against_smoothed(sink.faces)
    tracks = {face.track_id for faces in sink.faces for face in faces if face.track_id is not None}
    return {
        "frames": stats.frames,
        "fps": stats.fps,
        "ms_per_frame": stats.stage_ms,
        "frames_with_faces": stats.frames_with_faces,
        "faces": stats.faces,
        "tracks": len(tracks),
        "flicker": flicker,
        "flicker_pairs": pairs,
        "contradiction": against.contradiction,
        "smoothed_faces": against.faces,
        "held": against.held,
        "unsure": unsure_share(sink.faces),
    }


def run_closed(pipeline, max_frames: int | None = None, *, warm: bool = True):
    """Run ``pipeline`` (after :func:`warm_up` if ``warm``) and close it and its notifier, whatever happens; its
    run's stats."""
    try:
        if warm:
            warm_up(pipeline)
        return pipeline.run(max_frames)
    finally:
        pipeline.close()
        pipeline.notifier.close()


def warm_up(pipeline) -> None:
    """The interpreters' first invokes allocate and plan: one untimed detection and classification."""
    import numpy as np

    from fer_edge.types import Box, Detection

    width, height = pipeline.source.size
    blank = np.zeros((height, width, 3), np.uint8)
    pipeline.detector.detect(blank)
    side = max(1, min(width, height) // 2)
    pipeline.classifier.classify(blank, Detection(Box(0, 0, side, side)))
