"""Per-stage timings of the device loop on one thread (``fer-edge bench``)."""

from __future__ import annotations

import json
import logging
import platform
import tempfile
from dataclasses import replace

import cv2
import numpy as np

from fer_edge import app
from fer_edge.config import Config
from fer_edge.pipeline import STAGES
from fer_edge.types import Box, Detection

log = logging.getLogger(__name__)


def run_bench(cfg: Config, frames: int) -> dict:
    """Run ``frames`` frames with every stage single-threaded; recordings go to a temporary folder."""
    cv2.setNumThreads(1)
    cfg = replace(cfg, model=replace(cfg.model, threads=1), source=replace(cfg.source, realtime=False))
    with tempfile.TemporaryDirectory(prefix="fer-edge-bench-") as scratch:
        cfg = replace(cfg, recording=replace(cfg.recording, output_dir=scratch))
        pipeline = app.build_pipeline(cfg)
        try:
            # One untimed frame first: the interpreters' first invokes allocate and plan.
            width, height = pipeline.source.size
            side = max(1, min(width, height) // 2)
            blank = np.zeros((height, width, 3), np.uint8)
            pipeline.classifier.classify(blank, Detection(Box(0, 0, side, side)))
            pipeline.detector.detect(blank)
            stats = pipeline.run(frames)
        finally:
            pipeline.close()
    return {
        "frames": stats.frames,
        "faces": stats.faces,
        "fps": stats.fps,
        "ms_per_frame": stats.stage_ms,
        "frame_size": list(pipeline.source.size),
        "runtime": pipeline.classifier.runtime,
        "recording": bool(pipeline.sinks),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def format_table(result: dict) -> str:
    width, height = result["frame_size"]
    lines = [
        f"fer-edge bench: {result['frames']} frames {width}x{height}, {result['faces']} faces, "
        f"runtime {result['runtime']}, {result['machine']}, 1 thread",
        f"{'stage':<10}{'ms/frame':>10}",
    ]
    for name in (*STAGES, "total"):
        lines.append(f"{name:<10}{result['ms_per_frame'][name]:>10.2f}")
    lines.append(f"{'fps':<10}{result['fps']:>10.1f}")
    if not result["recording"]:
        lines.append("(recording off: record is 0)")
    return "\n".join(lines) + "\n"


def format_json(result: dict) -> str:
    return json.dumps(result, indent=2) + "\n"
