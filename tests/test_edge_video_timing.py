"""A phone's video changes its frame rate (30 fps in daylight, 10 in the dark): the frames of a file keep their
presentation times, so smoothing, the privacy hold and the recording run on the file's own clock."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fer_edge.capture.sources import VideoFileSource
from fer_edge.cli import main

FAST, SLOW = 15, 15  # frames at 30 fps, then at 10 fps
TIMES = [i / 30 for i in range(FAST)] + [FAST / 30 + i / 10 for i in range(SLOW)]


@pytest.fixture(scope="module")
def phone_clip(demo_clip, tmp_path_factory) -> Path:
    """The demo clip's face frames (30-59) written with a variable frame rate."""
    with av.open(str(demo_clip)) as container:
        images = [f.to_ndarray(format="bgr24") for i, f in zip(range(60), container.decode(video=0)) if i >= 30]
    path = tmp_path_factory.mktemp("vfr") / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = images[0].shape[1], images[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 300)
        for image, t in zip(images, TIMES):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = round(t * 300), Fraction(1, 300)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def timestamps(source: VideoFileSource, count: int) -> list[float]:
    times = []
    while len(times) < count and (frame := source.read()) is not None:
        times.append(frame.timestamp)
    source.close()
    return times


def test_frames_of_a_variable_rate_file_carry_their_presentation_times(phone_clip):
    assert timestamps(VideoFileSource(phone_clip), 100) == pytest.approx(TIMES, abs=0.002)


def test_a_looped_variable_rate_file_counts_on_from_its_last_frame(phone_clip):
    source = VideoFileSource(phone_clip, loop=True)
    times = timestamps(source, 2 * len(TIMES))
    second = [t - times[len(TIMES)] for t in times[len(TIMES) :]]
    assert second == pytest.approx(TIMES, abs=0.002)
    assert 0 < times[len(TIMES)] - times[len(TIMES) - 1] <= 1 / source.fps + 0.002


def test_the_recording_of_a_variable_rate_file_lasts_as_long_as_the_file(phone_clip, model_path, tmp_path):
    assert main(["run", "--source", str(phone_clip), "--model", str(model_path), "--output", str(tmp_path)]) == 0
    (recording,) = tmp_path.glob("*.mp4")
    with av.open(str(recording)) as container:
        stream = container.streams.video[0]
        shown = [float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None]
    assert len(shown) == len(TIMES)
    assert np.diff(sorted(shown)) == pytest.approx(np.diff(TIMES), abs=0.002)
