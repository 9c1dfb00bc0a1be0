"""/metrics text: exact counters past a million, the process's own metrics, and what build runs."""

from __future__ import annotations

import os
import time

from fer_edge import __version__
from fer_edge.serve.live import LiveFeed
from fer_edge.serve.metrics import metrics_text


def _samples(text: str) -> dict[str, str]:
    samples = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = value
    return samples


def test_counters_keep_every_digit():
    stats = LiveFeed(info={"model": "fer_int8.tflite", "runtime": "tflite-runtime"}).stats()
    stats.update(frames=123_456_789, frames_with_faces=10_000_001, faces_total=2**40 + 1, fps=1234567.891)
    samples = _samples(metrics_text(stats))
    assert samples["fer_edge_frames_total"] == "123456789"
    assert samples["fer_edge_frames_with_faces_total"] == "10000001"
    assert int(samples["fer_edge_faces_total"]) == 2**40 + 1
    assert float(samples["fer_edge_fps"]) == 1234567.891


def test_process_metrics_and_build_info():
    stats = LiveFeed(info={"model": 'a "quoted"\\name', "runtime": "tflite-runtime"}).stats()
    samples = _samples(metrics_text(stats))
    [build] = [name for name in samples if name.startswith("fer_edge_build_info{")]
    assert f'version="{__version__}"' in build and 'model="a \\"quoted\\"\\\\name"' in build
    assert samples[build] == "1"
    assert int(samples["process_resident_memory_bytes"]) > 10 * 2**20  # numpy and friends are loaded
    assert int(samples["process_open_fds"]) == len(os.listdir("/proc/self/fd"))
    assert 0 < float(samples["process_cpu_seconds_total"]) < time.process_time() + 1
    assert time.time() - 3600 < float(samples["process_start_time_seconds"]) <= time.time()
