"""Cost of recording: ms per frame and file size of each encoder setting on real clips, on the cores it runs on.

    taskset -c 0 .venv-edge/bin/python -m bench.recording ../shared/clips/*.mp4

Each clip is decoded into memory first; then the recorder alone (video only, no events) writes every frame of it,
timed from the first ``write`` to the end of ``close``, so the BGR -> I420 conversion, any scaling, the encoder
and the MP4 writes are all counted. Time is the process's CPU time (all its threads: x264 runs its own), which a
busy machine disturbs far less than wall-clock time; the best of ``--repeats`` passes is kept. Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = (  # (label, recording settings); scaled ones only where the clip is wider than the scale
    ("libx264 ultrafast", {"preset": "ultrafast"}),
    ("libx264 superfast", {"preset": "superfast"}),
    ("libx264 veryfast", {"preset": "veryfast"}),
    ("libx264 faster", {"preset": "faster"}),
    ("libx264 ultrafast, 640 wide", {"preset": "ultrafast", "record_width": 640}),
    ("libx264 superfast, 640 wide", {"preset": "superfast", "record_width": 640}),
    ("libx264 superfast, 640 wide, 10 fps", {"preset": "superfast", "record_width": 640, "record_fps": 10.0}),
    ("mpeg4", {"codec": "mpeg4"}),
)


def load_clip(path: Path) -> tuple[list, float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
        return frames, float(stream.average_rate)


def record_once(frames: list, fps: float, settings: dict) -> tuple[float, int]:
    """(seconds, bytes) for recording ``frames`` once with ``settings``."""
    from fer_edge.config import EventsConfig, RecordingConfig
    from fer_edge.record.recorder import open_recorder
    from fer_edge.types import Frame

    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        config = RecordingConfig(output_dir=folder, min_free_mb=0.0, **{"codec": "libx264", **settings})
        recorder = open_recorder(config, EventsConfig(enabled=False), fps, (width, height))
        start = time.process_time()
        for index, image in enumerate(frames):
            recorder.write(Frame(image, index, index / fps), [])
        recorder.close()
        elapsed = time.process_time() - start
        size = sum(p.stat().st_size for p in Path(folder).glob("*.mp4"))
    return elapsed, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("clips", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import os

    import av

    cores = sorted(os.sched_getaffinity(0))
    print(
        f"{platform.machine()} {platform.processor() or _cpu_name()}, Python {platform.python_version()}, "
        f"PyAV {av.__version__}, cores {cores}\n"
    )
    print("| clip | setting | recorded size | CPU ms/frame | kB per second of video |")
    print("|---|---|---|---:|---:|")
    for clip in args.clips:
        frames, fps = load_clip(clip)
        height, width = frames[0].shape[:2]
        for label, settings in SETTINGS:
            if settings.get("record_width", width) >= width:
                if "record_width" in settings:
                    continue
            runs = [record_once(frames, fps, settings) for _ in range(args.repeats)]
            seconds, size = min(runs)
            out_width = settings.get("record_width", width)
            out_height = round(height * out_width / width) // 2 * 2
            rate = settings.get("record_fps") or fps
            print(
                f"| {clip.name} | {label} | {out_width}x{out_height} @ {min(rate, fps):g} | "
                f"{1000 * seconds / len(frames):.2f} | {size / 1000 / (len(frames) / fps):.0f} |",
                flush=True,
            )
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
