"""Frame sources: Pi camera, OpenCV capture (USB/URL), video files, image folders, and a list fake.

Backends are chosen by :func:`open_source` from the ``source`` config section; OpenCV and picamera2
are imported only by the backend that needs them.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fer_edge.capture.files import ImageFolderSource, VideoFileSource, quiet_opencv
from fer_edge.capture.prefetch import Prefetcher
from fer_edge.config.device import DEFAULT_CAMERA
from fer_edge.errors import SourceError, mask_credentials
from fer_edge.types import Frame, SourceWaiting

if TYPE_CHECKING:
    from fer_edge.config import SourceConfig
    from fer_edge.pipeline import Source

log = logging.getLogger(__name__)

LIVE_DEPTH = 2  # camera frames held for the loop: the newest two (one decodes while the loop works); older dropped
WAIT_SLICE_S = 5.0  # the longest one read() waits for a lost camera before handing the loop a SourceWaiting
# How often a lost local camera's device node is looked at (one stat): a camera plugged back in is reopened this
# soon, whatever the back-off has grown to, and nothing is opened while the node is gone.
NODE_POLL_S = 0.5


def open_source(cfg: SourceConfig) -> Source:
    """Build the source described by a :class:`fer_edge.config.SourceConfig`."""
    kind = resolve_kind(cfg)
    log.debug("source kind %s", kind)
    if kind == "picamera2":
        check_picamera2(cfg)
        return Picamera2Source(cfg.width, cfg.height, cfg.fps)
    if kind == "opencv":
        return OpenCvCaptureSource(
            cfg.device,
            cfg.width,
            cfg.height,
            cfg.fps,
            reopen_initial_s=cfg.reopen_initial_s,
            reopen_max_s=cfg.reopen_max_s,
            wait_at_start=cfg.wait_at_start,
        )
    if not cfg.path:
        raise SourceError(f"source.path: required for source kind {kind}")
    if kind == "images":
        return ImageFolderSource(cfg.path, fps=cfg.fps, realtime=cfg.realtime, loop=cfg.loop)
    return VideoFileSource(cfg.path, realtime=cfg.realtime, loop=cfg.loop)


def resolve_kind(cfg: SourceConfig) -> str:
    """``auto``: a folder path plays images, a file path a video; without a path the Pi camera when
    picamera2 is installed, else OpenCV capture of ``device``."""
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.path:
        return "images" if Path(cfg.path).is_dir() else "file"
    import importlib.util

    return "picamera2" if importlib.util.find_spec("picamera2") is not None else "opencv"


PICAMERA2_MISSING = "picamera2 is not installed (apt install python3-picamera2)"


def check_picamera2(cfg: SourceConfig) -> None:
    """picamera2 can be imported (found, not imported: that would start libcamera). A camera named in
    ``source.device`` beside ``kind: auto`` is not the one used: said, since the config reads as if it were."""
    import importlib.util

    if importlib.util.find_spec("picamera2") is None:
        raise SourceError(PICAMERA2_MISSING)
    if cfg.kind == "auto" and str(cfg.device) != DEFAULT_CAMERA:
        log.warning(
            "source.device %s is not used: kind auto takes the camera module, as picamera2 is installed; "
            "set source.kind: opencv to use that camera",
            mask_credentials(str(cfg.device)),
        )


def source_overrides(spec: str) -> dict:
    """Config overrides for a ``--source`` argument: picamera2, a camera index, /dev path or URL, a folder, or a
    file."""
    if spec == "picamera2":
        return {"source.kind": "picamera2"}
    if (spec.isascii() and spec.isdigit()) or "://" in spec or spec.startswith(("/dev/video", "/dev/v4l/")):
        return {"source.kind": "opencv", "source.device": spec}
    if Path(spec).is_dir():
        return {"source.kind": "images", "source.path": spec}
    return {"source.kind": "file", "source.path": spec}


# A stream camera's open and each of its reads may take this long: together well inside systemd's 30 s watchdog,
# which a stalled read followed by a reopen must not reach.
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000


def stream_timeouts(cv2: Any) -> list[int]:
    """VideoCapture parameters: the stream timeouts above, where this OpenCV knows the properties."""
    limits = (
        ("CAP_PROP_OPEN_TIMEOUT_MSEC", STREAM_OPEN_TIMEOUT_MS),
        ("CAP_PROP_READ_TIMEOUT_MSEC", STREAM_READ_TIMEOUT_MS),
    )
    return [value for name, limit in limits if hasattr(cv2, name) for value in (getattr(cv2, name), limit)]


def video_node(device: int | str) -> Path | None:
    """The device node a local camera is opened through: ``/dev/videoN`` for index N (OpenCV's V4L2 and GStreamer
    backends open that node; Linux only), the path itself for a ``/dev/`` path such as a ``/dev/v4l/by-id/`` link;
    None for a stream URL, and for an index elsewhere."""
    if isinstance(device, int):
        return Path(f"/dev/video{device}") if sys.platform.startswith("linux") else None
    return Path(device) if device.startswith("/dev/") else None


NodeId = tuple[int, int, int]


def node_id(node: Path) -> NodeId | None:
    """Which device file ``node`` names now (links followed, as they are re-made with the device); None when
    there is none. A node made again (the camera plugged back) or given its permissions by udev is another one."""
    try:
        st = os.stat(node)
    except OSError:
        return None
    return st.st_rdev, st.st_ino, st.st_ctime_ns


def whole_seconds(seconds: float) -> int:
    """A wait as the status line says it: rounded up, so a wait left is never "0 s"."""
    return math.ceil(round(seconds, 3))


class OpenCvCaptureSource:
    """A USB camera (index or /dev path) or stream (URL) through OpenCV. A camera that disappears is reopened
    with exponential back-off; while it waits, :meth:`read` returns a :class:`SourceWaiting` at least every
    :data:`WAIT_SLICE_S`, so the loop stays alive for systemd; :meth:`interrupt` ends a wait. A local camera's
    device node (``device_node``; ``"auto"``: :func:`video_node`) is watched while it is lost: nothing is opened
    while the node is gone, and a node that comes back is opened within :data:`NODE_POLL_S`; the back-off
    spaces only the attempts that fail while the same node is there. Frames are read (decoded) up to
    :data:`LIVE_DEPTH` ahead on a thread of their own, stamped when they were read. With ``wait_at_start``, a camera
    that does not open at start is waited for in the same way (its frames then come at the requested size)."""

    def __init__(
        self,
        device: int | str = 0,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        reopen_initial_s: float = 1.0,
        reopen_max_s: float = 30.0,
        device_node: str | Path | Literal["auto"] | None = "auto",
        wait_at_start: bool = False,
    ):
        import cv2

        quiet_opencv(cv2)
        self._cv2 = cv2
        digits = isinstance(device, str) and device.isascii() and device.isdigit()
        self.device: int | str = int(device) if digits else device
        self.name = mask_credentials(str(self.device))  # what lines show: a stream URL without its password
        self._requested = (width, height, fps)
        self.reopen_initial_s = reopen_initial_s
        self.reopen_max_s = reopen_max_s
        self._interrupted = threading.Event()
        self._index = 0
        self._delay = self._wait_left = 0.0  # back-off while the camera is lost
        self._node = video_node(self.device) if device_node == "auto" else Path(device_node) if device_node else None
        self._seen: NodeId | None = None  # the node at the last look
        self._failed_on: NodeId | None = None  # the node the camera was lost on, or the last attempt failed on
        self._ahead: Prefetcher[tuple[np.ndarray, float]] | None = None  # reads the open capture ahead
        self._dropped = 0  # frames skipped by the readers of earlier openings
        self._capture = self._open()
        self._opened_once = self._capture is not None
        if self._capture is None:
            is_camera = isinstance(self.device, int) or str(self.device).startswith("/dev/")
            what = f"camera {self.name}" if is_camera else f"stream {self.name}"
            if not wait_at_start:
                raise SourceError(f"cannot open {what} (not connected, or in use by another process?)")
            # the service waits for a camera plugged in late as for one lost: a restart every few seconds
            # would start Python and load the models each time, and say the same error line each time
            log.warning("cannot open %s at start (not connected, or in use by another process?); waiting for it", what)
            self.size, self.fps = (width, height), fps
            self._delay = self._wait_left = self.reopen_initial_s
            self._look_at_node()
            self._failed_on = self._seen
            return
        self.size = (
            int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)) or width,
            int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) or height,
        )
        reported = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = reported if reported and 0 < reported < 1000 else fps
        log.info("camera %s opened: %dx%d at %.1f fps", self.name, *self.size, self.fps)
        if self._node is not None and node_id(self._node) is None:
            # opened without the node: this OpenCV does not open it, and its absence would say nothing
            log.debug("camera %s: no %s; a lost camera is retried with back-off only", self.name, self._node)
            self._node = None

    def _open(self) -> Any:
        cv2 = self._cv2
        if isinstance(self.device, str) and "://" in self.device:
            # FFmpeg waits 30 s by default for a stream that does not answer or stops sending, as long as
            # systemd's watchdog waits for the loop; a stream is given up sooner and reopened with back-off
            capture = cv2.VideoCapture(self.device, cv2.CAP_FFMPEG, stream_timeouts(cv2))
        else:
            capture = cv2.VideoCapture(self.device)
        if not capture.isOpened():
            capture.release()
            return None
        width, height, fps = self._requested
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        return capture

    def status(self) -> str | None:
        """For the status line: the camera frames skipped for newer ones, once there are any."""
        dropped = self._dropped + (self._ahead.dropped if self._ahead is not None else 0)
        return f"camera frames skipped {dropped} (loop behind the camera)" if dropped else None

    def read(self) -> Frame | SourceWaiting | None:
        while not self._interrupted.is_set():
            if self._capture is None:
                waiting = self._reopen_step()
                if waiting is not None or self._capture is None:
                    return waiting  # still waiting, or None: interrupted
                continue
            if self._ahead is None:
                self._ahead = Prefetcher(self._grab, depth=LIVE_DEPTH, name="fer-edge-decode-camera", keep_newest=True)
            grabbed = self._ahead.get()
            if grabbed is not None:
                image, timestamp = grabbed
                if (image.shape[1], image.shape[0]) != self.size:
                    image = self._cv2.resize(image, self.size, interpolation=self._cv2.INTER_AREA)
                index = self._index
                self._index += 1
                return Frame(image, index, timestamp)
            if self._interrupted.is_set():
                break
            log.warning("camera %s stopped delivering frames; reopening", self.name)
            self._release()
            self._delay = self._wait_left = self.reopen_initial_s
            if self._node is not None:
                self._failed_on = self._seen = node_id(self._node)
        return None

    def _grab(self) -> tuple[np.ndarray, float] | None:
        """The next image and when it was captured; None once the camera stops delivering. On the decode thread."""
        ok, image = self._capture.read()
        return (image, time.monotonic()) if ok else None

    def _release(self) -> None:
        """Stop decoding ahead, then release the capture (unless a read on it is still in progress)."""
        ahead, self._ahead = self._ahead, None
        joined = ahead.close() if ahead is not None else True
        self._dropped += ahead.dropped if ahead is not None else 0
        if self._capture is not None and joined:
            self._capture.release()
        self._capture = None

    def _reopen_step(self) -> SourceWaiting | None:
        """Wait one slice for the lost camera, then try to reopen it when due; None once it is back (or on
        interrupt). A watched node is looked at after each slice of :data:`NODE_POLL_S`."""
        self._look_at_node()
        if not self._attempt_due():
            slice_s = NODE_POLL_S if self._node is not None else WAIT_SLICE_S
            wait = min(self._wait_left, slice_s) if self._wait_left > 0 else slice_s
            if self._interrupted.wait(wait):
                return None
            self._wait_left = max(self._wait_left - wait, 0.0)
            self._look_at_node()
            if not self._attempt_due():
                return SourceWaiting(self._waiting_reason())
        capture = self._open()
        if capture is not None:
            log.info("camera %s %s", self.name, "reopened" if self._opened_once else "opened")
            self._capture = capture
            self._opened_once = True
            return None
        fresh = self._node is not None and self._seen != self._failed_on
        self._failed_on = self._seen
        # a node that came back is a camera plugged in again: its back-off starts over
        self._delay = self.reopen_initial_s if fresh else min(self._delay * 2, self.reopen_max_s)
        self._wait_left = self._delay
        log.warning("camera %s still unavailable; next try in %d s", self.name, whole_seconds(self._delay))
        return SourceWaiting(f"camera {self.name} {self._absence}; next try in {whole_seconds(self._delay)} s")

    def _look_at_node(self) -> None:
        if self._node is not None:
            self._seen = node_id(self._node)

    def _attempt_due(self) -> bool:
        """Whether to try opening now: when the back-off is over, or its node (as last looked at) is back, or
        another one is there; never while the node is gone."""
        if self._node is None:
            return self._wait_left <= 0
        return self._seen is not None and (self._seen != self._failed_on or self._wait_left <= 0)

    def _waiting_reason(self) -> str:
        if self._node is not None and self._seen is None:
            return f"camera {self.name} {self._absence}; waiting for {self._node} to appear"
        return f"camera {self.name} {self._absence}; next try in {whole_seconds(self._wait_left)} s"

    @property
    def _absence(self) -> str:
        return "lost" if self._opened_once else "not opened yet"

    def interrupt(self) -> None:
        self._interrupted.set()
        if self._ahead is not None:
            self._ahead.stop()

    def close(self) -> None:
        self._interrupted.set()
        self._release()


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (apt package python3-picamera2)."""

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(PICAMERA2_MISSING) from None
        try:
            self._camera = Picamera2()
            # "RGB888" is libcamera's name for B, G, R byte order: OpenCV's BGR, no conversion needed.
            config = self._camera.create_video_configuration(
                main={"size": (width, height), "format": "RGB888"}, controls={"FrameRate": float(fps)}
            )
            self._camera.configure(config)
            self._camera.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceError(f"cannot start the Pi camera ({exc})") from None
        self.size = (width, height)
        self.fps = fps
        self._index = 0
        self._interrupted = threading.Event()
        log.info("Pi camera started: %dx%d at %.1f fps", width, height, fps)

    def read(self) -> Frame | None:
        if self._interrupted.is_set():
            return None
        index = self._index
        self._index += 1
        try:
            image = self._camera.capture_array("main")
        except (RuntimeError, OSError) as exc:  # libcamera gave up on the camera: no reopen here, systemd restarts
            raise SourceError(f"the Pi camera stopped ({exc})") from None
        return Frame(image, index, time.monotonic())  # the loop drops an alpha

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._interrupted.set()
        try:
            self._camera.stop()
        finally:
            self._camera.close()
