"""Cost of recording: ms per frame and file size of each encoder setting on real clips, on the cores it runs on.

    taskset -c 0 .venv-edge/bin/python -m bench.recording ../shared/clips/*.mp4

Each clip is decoded into memory first; then the recorder alone (video only, no events) writes every frame of it,
timed from the first ``write`` to the end of ``close``, so the BGR -> I420 conversion, any scaling, the encoder
and the MP4 writes are all counted. Time is the process's CPU time (all its threads: x264 runs its own), which a
busy machine disturbs far less than wall-clock time; the best of ``--repeats`` passes is kept. Prints a Markdown
table.

What recording costs the device loop (``bench/edge.py`` puts these in its results):

- :func:`first_face_lateness`: how far the loop falls behind a camera-paced 720p clip when the first face starts a
  presence-triggered recording with a 3 s pre-roll (:func:`paced_clip` builds the clip: a few seconds without a
  face, then ``performer-640x360.mp4`` upscaled);
- :func:`fps_on_cores`: the loop's frames per second with recording on, in a process pinned to the given cores,
  with the frames the recorder dropped beside it (dropping frames would be a way to go faster).

Comparing two versions of ``fer_edge`` on a shared, busy machine (``--compare OLD_EDGE_DIR``, e.g. an export of
``main``'s ``edge/`` folder): :func:`device_loop` in fresh processes, old and new interleaved round by round with
the load average beside each run; writes bench/results-recording.md and .json.

    .venv-train/bin/python -m bench.recording --compare /tmp/old/edge --rounds 3 \
        ../shared/clips/performer-640x360.mp4 ../shared/clips/street-1080p.mp4
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from fractions import Fraction
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


NO_FACE_S = 4.0  # before the performer: longer than the pre-roll, so all of it is there when the face appears


def paced_clip(source: Path, folder: Path, size: tuple[int, int] = (1280, 720)) -> Path:
    """``source`` scaled to ``size``, after ``NO_FACE_S`` of its first frame blurred beyond any face detector (an
    out-of-focus camera), as an H.264 MP4 in ``folder``."""
    import av
    import cv2

    frames, fps = load_clip(source)
    target = folder / f"{source.stem}-{size[0]}x{size[1]}.mp4"
    blurred = cv2.GaussianBlur(cv2.resize(frames[0], size), (0, 0), 25)
    with av.open(str(target), "w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        images = [blurred] * round(NO_FACE_S * fps) + [
            cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames
        ]
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return target


class _DoneTimes:
    """A sink after the recorder: when each frame's sinks were done, and whether it had a face."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, bool]] = []

    def write(self, frame, faces) -> None:
        self.rows.append((frame.index, time.monotonic(), bool(faces)))

    def close(self) -> None:
        pass


def first_face_lateness(clip: Path, overrides: dict | None = None) -> dict:
    """How far the loop falls behind the camera's schedule (frame ``i`` due at ``start + i / fps``, ``start`` from
    the most punctual frame) in the second after the first face, beyond where it was just before it; and the
    longest loop frame there next to the median one before (on a machine too busy to keep up with the camera,
    the loop is behind already and falls further behind at its own rate)."""
    import statistics

    from bench.loop import clip_config, run_closed
    from fer_edge import app

    settings = {"source.realtime": True, "recording.presence_triggered": True, "recording.pre_roll_s": 3.0}
    sink = _DoneTimes()
    with tempfile.TemporaryDirectory() as out:
        cfg = clip_config(clip, out, {**settings, **(overrides or {})})
        pipeline = app.build_pipeline(cfg, extra_sinks=[sink])
        run_closed(pipeline)
        period = 1.0 / pipeline.source.fps
        dropped = sum(getattr(s, "dropped", 0) for s in pipeline.sinks)  # a loop kept punctual by dropping
    start = min(done - index * period for index, done, _ in sink.rows)
    late = [done - (start + index * period) for index, done, _ in sink.rows]
    intervals = [b[1] - a[1] for a, b in zip(sink.rows, sink.rows[1:])]
    first = next(i for i, (_, _, face) in enumerate(sink.rows) if face)
    window = slice(first, first + round(1.0 / period))
    return {
        "clip": clip.name,
        "frames": len(late),
        "first_face_frame": sink.rows[first][0],
        # how much further behind the loop fell within a second of the first face than it was just before it
        "lateness_at_first_face_s": max(late[window]) - late[max(0, first - 1)],
        "longest_frame_after_face_s": max(intervals[max(0, first - 1) : window.stop]),
        "median_frame_before_face_s": statistics.median(intervals[: max(1, first - 1)]),
        "behind_before_face_s": late[max(0, first - 1)],
        "dropped": dropped,
    }


def fps_on_cores(clip: Path, cores: set[int], frames: int = 300) -> dict:
    """The loop's fps with the defaults (recording on) over ``frames`` of ``clip`` played in a loop, in a fresh
    process pinned to ``cores``; the frames the recorder dropped beside it."""
    import json
    import os
    import subprocess

    command = [sys.executable, "-m", "bench.recording", "--loop", str(clip), "--frames", str(frames)]
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=repo, preexec_fn=lambda: os.sched_setaffinity(0, cores), check=True
    )
    return {"cores": sorted(cores), **json.loads(result.stdout.splitlines()[-1])}


def _loop(clip: Path, frames: int) -> dict:
    from bench.loop import clip_config, run_closed
    from fer_edge import app

    with tempfile.TemporaryDirectory() as out:
        pipeline = app.build_pipeline(clip_config(clip, out, {"source.loop": True}))
        stats = run_closed(pipeline, frames)
    dropped = sum(getattr(sink, "dropped", 0) for sink in pipeline.sinks)
    return {
        "clip": clip.name,
        "frames": stats.frames,
        "fps": stats.fps,
        "dropped": dropped,
        "ms_per_frame": {k: round(v, 2) for k, v in stats.stage_ms.items()},
    }


def device_loop(performer: Path, street: Path, work: Path) -> dict:
    """What recording costs the loop, in this process's ``fer_edge``: lateness at the first face (720p, camera-paced,
    presence-triggered, 3 s pre-roll), ``street`` on one core and on two, ``performer`` on one core."""
    import os

    clip720 = work / f"{performer.stem}-1280x720.mp4"
    if not clip720.exists():
        paced_clip(performer, work)
    cores = sorted(os.sched_getaffinity(0))
    one, two = set(cores[:1]), set(cores[:2])
    street_one, street_two = fps_on_cores(street, one), fps_on_cores(street, two)
    return {
        "lateness": first_face_lateness(clip720),
        # the same without recording: what the loop's own work at the first face (its detection) costs
        "lateness_recording_off": first_face_lateness(clip720, {"recording.enabled": False}),
        "street_one_core": street_one,
        "street_two_cores": street_two,
        "speedup_two_cores": street_two["fps"] / street_one["fps"],
        "performer_one_core": fps_on_cores(performer, one, frames=600),
        "load_average": os.getloadavg()[0],
    }


def compare(old_edge: Path, performer: Path, street: Path, rounds: int) -> list[dict]:
    """:func:`device_loop` for ``old_edge``'s ``fer_edge`` and this tree's, interleaved; the order alternates."""
    import json
    import os
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    trees = {"old": old_edge.resolve(), "new": repo / "edge"}
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(rounds):
            for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                env = {**os.environ, "PYTHONPATH": f"{trees[name]}{os.pathsep}{repo}"}
                command = [sys.executable, "-m", "bench.recording", "--device-loop", work, str(performer), str(street)]
                load = os.getloadavg()[0]
                done = subprocess.run(command, capture_output=True, text=True, cwd=repo, env=env, check=True)
                run = {"round": round_, "tree": name, "load_before": load, **json.loads(done.stdout.splitlines()[-1])}
                print(json.dumps(run), flush=True)
                runs.append(run)
    return runs


def compare_markdown(runs: list[dict]) -> str:
    import statistics

    lines = [
        "| round | tree | load (1 min) | street 1 core fps | street 2 cores fps | speedup | dropped (1/2 cores) | "
        "late at first face s (dropped) | same, recording off | longest frame after face s | performer 1 core fps |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['round']} | {r['tree']} | {r['load_before']:.1f}-{r['load_average']:.1f} | "
            f"{r['street_one_core']['fps']:.1f} | {r['street_two_cores']['fps']:.1f} | {r['speedup_two_cores']:.2f} | "
            f"{r['street_one_core']['dropped']}/{r['street_two_cores']['dropped']} | "
            f"{r['lateness']['lateness_at_first_face_s']:.3f} ({r['lateness'].get('dropped', '?')}) | "
            f"{r['lateness_recording_off']['lateness_at_first_face_s']:.3f} | "
            f"{r['lateness']['longest_frame_after_face_s']:.3f} | "
            f"{r['performer_one_core']['fps']:.0f} |"
        )
    lines += ["", "Medians:", ""]
    for tree in ("old", "new"):
        mine = [r for r in runs if r["tree"] == tree]
        if mine:
            lines.append(
                f"- {tree}: speedup {statistics.median(r['speedup_two_cores'] for r in mine):.2f}x, "
                f"lateness {statistics.median(r['lateness']['lateness_at_first_face_s'] for r in mine):.3f} s "
                f"({statistics.median(r['lateness_recording_off']['lateness_at_first_face_s'] for r in mine):.3f} s "
                "with recording off), "
                f"performer one core {statistics.median(r['performer_one_core']['fps'] for r in mine):.0f} fps"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("clips", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop", action="store_true", help="print the device loop's fps on one clip, as JSON")
    parser.add_argument("--frames", type=int, default=300, help="with --loop: this many frames")
    parser.add_argument("--device-loop", type=Path, metavar="WORK", help="print device_loop(performer, street) as JSON")
    parser.add_argument("--compare", type=Path, metavar="OLD_EDGE", help="interleave old and new device loops")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: rounds of old and new")
    parser.add_argument("--old-label", default="", help="with --compare: what the old tree is, for the results")
    args = parser.parse_args(argv)
    import json
    import os

    if args.loop:
        print(json.dumps(_loop(args.clips[0], args.frames)))
        return 0
    if args.device_loop:
        print(json.dumps(device_loop(args.clips[0], args.clips[1], args.device_loop)))
        return 0
    if args.compare:
        runs = compare(args.compare, args.clips[0], args.clips[1], args.rounds)
        header = f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        header += f"; measured {time.strftime('%Y-%m-%d')}"
        header += f"; old: {args.old_label}\n\n" if args.old_label else "\n\n"
        text = header + compare_markdown(runs)
        bench = Path(__file__).resolve().parent
        (bench / "results-recording.md").write_text(text)
        (bench / "results-recording.json").write_text(json.dumps(runs, indent=2) + "\n")
        print(text)
        return 0

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
