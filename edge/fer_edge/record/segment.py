"""The MP4 segment writer and the choice of its encoder: one fragmented MP4 (``empty_moov``, a ``moof`` + ``mdat``
fragment per forced keyframe) encoded from I420 frames, and a one-frame check of the encoder settings.

PyAV is imported here only, lazily, so that importing the recorder costs nothing when video is off."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_edge.errors import RecordingError
from fer_edge.record.diskspace import MB, check_floor, create_private, fsync_directory
from fer_edge.record.pyav import pyav
from fer_edge.record.recovery import repair_fragmented_mp4

if TYPE_CHECKING:
    from fer_edge.config import RecordingConfig

log = logging.getLogger(__name__)

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
TIME_BASE = Fraction(1, 30000)  # exact for 30, 29.97, 25, 24, 15 fps; mpeg4 allows denominators up to 65535


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HARDWARE_ENCODER = "h264_v4l2m2m"  # the Raspberry Pi 4's H.264 encoder, through V4L2
HARDWARE_ENCODER_DEVICE = Path("/dev/video11")


def choose_codec(codec: str) -> str:
    """The encoder to use: for ``auto`` the Pi's hardware H.264 encoder where it exists, else libx264; otherwise
    ``codec`` if this PyAV/FFmpeg build can encode video with it, else ``mpeg4`` (logged)."""
    av = pyav()

    if codec == "auto":
        codec = "libx264"
        if HARDWARE_ENCODER_DEVICE.exists() and HARDWARE_ENCODER in av.codecs_available:
            return HARDWARE_ENCODER

    try:
        kind = av.Codec(codec, "w").type
    except (av.FFmpegError, ValueError) as exc:
        log.warning("recording: encoder %s is not available (%s); falling back to mpeg4", codec, exc)
    else:
        if kind != "video":
            raise RecordingError(
                f"recording.codec: {codec} is an {kind} encoder; expected a video encoder such as libx264"
            )
        return codec
    try:
        av.Codec("mpeg4", "w")
    except (av.FFmpegError, ValueError) as exc:
        raise RecordingError(f"no usable video encoder: neither {codec} nor mpeg4 ({exc})") from None
    return "mpeg4"


@dataclass(frozen=True)
class EncoderSettings:
    """What the MP4 writer encodes with: the video's size and rate (the camera's, or smaller as the recording
    section asks) and the recording section's encoder settings."""

    width: int
    height: int
    fps: float
    crf: int
    preset: str
    tune: str
    fragment_seconds: float

    @classmethod
    def for_recording(cls, recording: RecordingConfig, frame_size: tuple[int, int], fps: float) -> EncoderSettings:
        """The settings a recording section gives frames of ``frame_size`` arriving at ``fps``."""
        width, height = record_size(frame_size, recording.record_width)
        return cls(width, height, float(min(fps, recording.record_fps or fps)), recording.crf, recording.preset,
                   recording.tune, recording.fragment_seconds)  # fmt: skip


def _open_mp4(target: str | io.BytesIO, codec: str, settings: EncoderSettings) -> tuple[Any, Any]:
    """A fragmented MP4 container on ``target`` (a path or a binary file object) and its video stream."""
    av = pyav()
    width, height, fps, crf = settings.width, settings.height, settings.fps, settings.crf
    preset, tune, fragment_seconds = settings.preset, settings.tune, settings.fragment_seconds

    gop = max(1, round(fps * fragment_seconds))
    if codec == "libx264":
        # zerolatency: no lookahead/B-frames, a packet out per frame in; fixed GOP without scene-cut keyframes
        options = {
            "preset": preset,
            "tune": tune,
            "crf": str(crf),
            "forced-idr": "1",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
    else:
        options = {}
    container = av.open(target, "w", format="mp4", options={"movflags": MOVFLAGS, "flush_packets": "1"})
    try:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        context = stream.codec_context
        context.time_base = TIME_BASE
        context.gop_size = gop
        if codec != "libx264":
            context.max_b_frames = 0
            context.bit_rate = int(width * height * fps * 0.15)
    except BaseException:
        container.close()
        raise
    return container, stream


def check_encoder(codec: str, settings: EncoderSettings) -> None:
    """Encode one grey frame into an in-memory MP4 with these settings; RecordingError if that fails."""
    av = pyav()
    width, height = settings.width, settings.height
    try:
        container, stream = _open_mp4(io.BytesIO(), codec, settings)
        with container:
            frame = av.VideoFrame.from_numpy_buffer(np.full((height * 3 // 2, width), 128, np.uint8), format="yuv420p")
            frame.pts = 0
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise RecordingError(
            f"recording.codec: {codec} cannot record {width}x{height} MP4 video here ({' '.join(str(exc).split())})"
        ) from None


def working_codec(codec: str, settings: EncoderSettings) -> str:
    """The encoder ``choose_codec`` picks, checked by encoding one frame with ``settings`` (see ``check_encoder``);
    for ``auto``, libx264 when the hardware encoder is there but does not work."""
    chosen = choose_codec(codec)
    try:
        check_encoder(chosen, settings)
    except RecordingError as exc:
        if not (codec == "auto" and chosen == HARDWARE_ENCODER):
            raise
        log.warning("recording: the hardware encoder does not work here (%s); using libx264", exc)
        chosen = "libx264"
        check_encoder(chosen, settings)
    return chosen


class VideoSegment:
    """One ``<stem>.mp4.part`` being encoded; ``finish()`` finalizes and renames it to ``<stem>.mp4``."""

    def __init__(self, path: Path, stem: str, *, codec: str, settings: EncoderSettings):
        av = pyav()
        fps = settings.fps

        self.stem = stem
        self.part_path = path
        self.first_ts: float | None = None
        self.frames = 0
        self._fps = fps
        self._fragment_seconds = settings.fragment_seconds
        self._nominal_ticks = max(1, round(1 / (fps * TIME_BASE)))
        self._last_pts = -1
        self._last_ts = float("-inf")
        self._last_key_ts = float("-inf")
        self._picture_i = av.video.frame.PictureType.I
        self._video_frame = av.VideoFrame
        os.close(create_private(path))  # FFmpeg would create it 0666 less the umask; it keeps an existing mode
        self._container, self._stream = _open_mp4(str(path), codec, settings)

    def encode(self, image_i420: np.ndarray, timestamp: float) -> bool:
        """Encode one frame; True when it started a new fragment, i.e. the previous one was written out."""
        frame = self._video_frame.from_numpy_buffer(image_i420, format="yuv420p")
        if self.first_ts is None:
            self.first_ts = timestamp
        pts = round((timestamp - self.first_ts) / TIME_BASE)
        if timestamp <= self._last_ts or pts <= self._last_pts:
            pts = self._last_pts + self._nominal_ticks  # timestamps stalled or went back: assume the nominal rate
        frame.pts = pts
        frame.time_base = TIME_BASE
        keyframe = timestamp - self._last_key_ts >= self._fragment_seconds - 0.5 / self._fps
        if keyframe:
            frame.pict_type = self._picture_i  # a keyframe closes the previous fragment, which then gets written
            self._last_key_ts = timestamp
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._last_pts, self._last_ts = pts, timestamp
        self.frames += 1
        return keyframe and self.frames > 1

    def finish(self) -> Path | None:
        """Flush the encoder, close, fsync and rename to ``.mp4``, cut to its complete fragments: FFmpeg does not
        always raise when the disk refuses the last fragment or the close (it keeps the error to itself), so the
        file on disk is checked rather than trusted. None when none of it is kept."""
        av = pyav()

        error: Exception | None = None
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except (OSError, av.FFmpegError) as exc:
            error = exc
        try:
            self._container.close()
        except (OSError, av.FFmpegError) as exc:
            error = error or exc
        if error is not None:
            log.warning(
                "recording: %s could not be finalized cleanly (%s); keeping its complete fragments",
                self.part_path.name,
                error,
            )
        return self._publish(torn_said=error is not None)

    def abandon(self) -> Path | None:
        """After an encode/mux error: close whatever can be closed and keep the complete fragments."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the container is already broken; what matters is the file on disk
            pass
        return self._publish(torn_said=True)

    def drop(self) -> None:
        """Close without publishing: the file is gone (its folder was deleted)."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - writing into a deleted file; nothing on disk to save
            pass

    def _publish(self, *, torn_said: bool) -> Path | None:
        """Cut a torn last fragment off, then rename; ``torn_said``: the write error was logged already."""
        final = self.part_path.with_name(self.stem + ".mp4")
        try:
            fragments, cut = repair_fragmented_mp4(self.part_path)
            if cut and not torn_said:
                log.warning(
                    "recording: the disk did not take the end of %s (%d bytes of a fragment cut); %s",
                    self.part_path.name,
                    cut,
                    f"keeping its {fragments} complete fragments" if fragments else "nothing of it to keep",
                )
            if fragments == 0:
                self.part_path.unlink(missing_ok=True)
                return None
            _fsync_path(self.part_path)
            os.replace(self.part_path, final)
            fsync_directory(final.parent)
        except OSError as exc:
            log.warning(
                "recording: cannot finalize %s (%s); it will be recovered at the next start", self.part_path.name, exc
            )
            return None
        return final


def record_size(frame_size: tuple[int, int], record_width: int | None) -> tuple[int, int]:
    """The video's size: the frames' own, or scaled to ``record_width`` keeping the aspect ratio; even sides
    (yuv420p), at least 2x2. Never scaled up."""
    width, height = frame_size
    if record_width is not None and record_width < width:
        width, height = record_width, round(height * record_width / width)
    return max(2, width - width % 2), max(2, height - height % 2)


def check_recording(recording: RecordingConfig, frame_size: tuple[int, int], fps: float) -> None:
    """What the recorder refuses at start-up, checked without recording (``fer-edge check-config``): a codec that
    cannot write MP4 video here, and a disk floor larger than the file system that will hold the recordings."""
    if not recording.enabled:
        return
    working_codec(recording.codec, EncoderSettings.for_recording(recording, frame_size, fps))
    folder = Path(recording.output_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    check_floor(folder, int(recording.min_free_mb * MB))
