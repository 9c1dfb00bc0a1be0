"""What the live view and MQTT cost the frame loop: fps on one core without them, with one browser watching the
MJPEG stream, and with MQTT on and its broker unreachable.

``stream_cost(clip, frames)`` is what ``make bench-edge`` calls; ``python -m bench.web`` prints the same as JSON.
The loop runs flat out on the clip (looped, not paced), so every cycle the viewer's JPEG encoding or the MQTT
threads take shows as lost frames per second. The viewer is a thread in the same process, pinned to the same core,
reading the stream as fast as it comes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0c41d9e2"
UNREACHABLE_BROKER = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Viewer(threading.Thread):
    """Reads /api/stream.mjpeg until stopped, counting the JPEG parts."""

    def __init__(self, port: int):
        super().__init__(name="bench-viewer", daemon=True)
        self.port = port
        self.parts = 0
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/api/stream.mjpeg", headers={"Authorization": f"Bearer {TOKEN}"})
                response = connection.getresponse()
                break
            except OSError:
                time.sleep(0.05)  # the server starts with the pipeline
        else:
            return
        while not self.stop.is_set():
            line = response.fp.readline()
            if not line:
                return
            if line.lower().startswith(b"content-length:"):
                size = int(line.split(b":")[1])
                response.fp.readline()
                response.fp.read(size)
                self.parts += 1
        connection.close()


def _loop_fps(clip: Path, frames: int, overrides: dict, viewer: bool = False) -> dict:
    from bench.loop import clip_config
    from fer_edge import app

    with tempfile.TemporaryDirectory() as out:
        cfg = clip_config(clip, out, {"source.loop": True, "model.threads": 1, **overrides})
        pipeline = app.build_pipeline(cfg)
        watcher = None
        if viewer:
            watcher = _Viewer(int(cfg.web.listen.rsplit(":", 1)[1]))
            watcher.start()
            deadline = time.monotonic() + 10
            pipeline.run(max_frames=1)  # one frame, so the stream has something to send
            while watcher.parts == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            start, cpu_start = time.perf_counter(), time.process_time()
            stats = pipeline.run(max_frames=frames)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        finally:
            if watcher is not None:
                watcher.stop.set()
            pipeline.close()
            pipeline.notifier.close()
    # CPU time of the whole process (loop, server, viewer, MQTT threads): on one core, what a Pi's core gives.
    result = {"frames": stats.frames, "fps": stats.frames / elapsed, "cpu_fps": stats.frames / cpu}
    if watcher is not None:
        result["jpeg_parts_received"] = watcher.parts
        result["parts_per_s"] = watcher.parts / elapsed
    return result


def _jpeg_ms(clip: Path, repeats: int = 50) -> float:
    import cv2

    from fer_edge.serve.web import encode_jpeg

    capture = cv2.VideoCapture(str(clip))
    ok, image = capture.read()
    capture.release()
    start = time.process_time()
    for _ in range(repeats):
        encode_jpeg(image, None, 75)
    return 1000 * (time.process_time() - start) / repeats


def _idle_broker_cpu_share(seconds: float = 10.0) -> float:
    """CPU seconds per second that MQTT's threads (paho's loop, the publisher) take with the broker unreachable:
    the same cost as in the loop, without the loop's noise around it."""
    from fer_edge.config import load_config
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.mqtt import MqttPublisher
    from fer_edge.serve.switches import Switches

    cfg = load_config(None, {"mqtt.enabled": True, "mqtt.host": UNREACHABLE_BROKER, "mqtt.device_id": "bench"})
    publisher = MqttPublisher(LiveFeed(), Switches(), cfg.mqtt, password=None, labels=["neutral"]).start()
    start, cpu_start = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    share = (time.process_time() - cpu_start) / (time.perf_counter() - start)
    publisher.close()
    return share


def stream_cost(clip: Path, frames: int, *, record: bool = False, rounds: int = 3) -> dict:
    """Loop fps on one core: plain; with the web server and one viewer on the MJPEG stream; with MQTT on and its
    broker unreachable. Each variant runs ``rounds`` times, interleaved, and its median counts.

    ``fps_*`` is frames per CPU second of the whole process (every thread), i.e. the fps the loop reaches on a core
    of its own, steady where wall-clock fps jumps with other load on a shared machine (``wall_fps_*``).
    ``*_cost`` is the fraction of the plain fps lost (0.05: 5% fewer frames per second); on a machine shared with
    other work it moves by a few percent from run to run, so ``viewer_encode_share`` and
    ``broker_unreachable_cpu_share`` (fraction of one core, measured alone) say what the two cost for certain."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    logging.getLogger("fer_edge").setLevel(logging.WARNING)
    base = {"recording.enabled": record, "events.enabled": record}
    variants = {
        "plain": (base, False),
        "one_viewer": (
            {**base, "web.enabled": True, "web.listen": f"127.0.0.1:{_free_port()}", "web.token": TOKEN},
            True,
        ),
        "broker_unreachable": (
            {**base, "mqtt.enabled": True, "mqtt.host": UNREACHABLE_BROKER, "mqtt.device_id": "bench"},
            False,
        ),
    }
    _loop_fps(clip, min(frames, 30), base)  # warm-up: file cache, first model load
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (overrides, viewer) in variants.items():
            runs[name].append(_loop_fps(clip, frames, overrides, viewer=viewer))

    def median(name: str, key: str) -> float:
        values = sorted(r[key] for r in runs[name])
        return values[len(values) // 2]

    plain = median("plain", "cpu_fps")
    result = {"frames": frames, "rounds": rounds, "recording": record}
    for name in variants:
        result[f"fps_{name}"] = round(median(name, "cpu_fps"), 2)
        result[f"wall_fps_{name}"] = round(median(name, "fps"), 2)
    result["viewer_jpegs_per_s"] = round(median("one_viewer", "parts_per_s"), 2)
    result["viewer_cost"] = round(1 - result["fps_one_viewer"] / plain, 4)
    result["jpeg_ms"] = round(_jpeg_ms(clip), 2)  # one encode of a frame: the viewer's main cost, at stream_fps/s
    result["broker_unreachable_cost"] = round(1 - result["fps_broker_unreachable"] / plain, 4)
    # Both costs measured alone, steadier than the fps differences above on a shared machine: the viewer's JPEG
    # encodes per second, and MQTT's threads with no broker.
    result["viewer_encode_share"] = round(result["jpeg_ms"] * result["viewer_jpegs_per_s"] / 1000, 4)
    result["broker_unreachable_cpu_share"] = round(_idle_broker_cpu_share(), 5)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default=str(REPO / "assets" / "demo.mp4"))
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="with recording and events on")
    args = parser.parse_args(argv)
    print(json.dumps(stream_cost(Path(args.clip), args.frames, record=args.record, rounds=args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
