"""Crash recovery of a recording folder, run once at start-up before recording: ``.part`` videos cut at their last
complete fragment (only once what remains is known to decode) and renamed, a leftover ``events.jsonl`` given its
stem; a ``.part`` that cannot be repaired is kept unchanged as ``<stem>.mp4.broken``."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from fer_edge.record.diskspace import fsync_directory
from fer_edge.record.events import recover_leftover_events
from fer_edge.record.naming import PART_SUFFIX, make_stem
from fer_edge.record.pyav import pyav

log = logging.getLogger(__name__)


def _complete_boxes(path: Path) -> tuple[list[tuple[bytes, int, int]], int]:
    """The top-level boxes of an MP4 that lie whole in the file, in order, as (type, start, end), and its size.

    The muxer gives every box its size, so a size of 0 ("to the end of the file") is a header that never reached
    the disk (FAT and exFAT leave zeros there after a power cut): the file's complete boxes end before it."""
    size = path.stat().st_size
    boxes = []
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size = int.from_bytes(header[:4], "big")
            box_type = header[4:8]
            if box_size == 1:
                if len(header) < 16:
                    break
                box_size = int.from_bytes(header[8:16], "big")
            if box_size < 8 or offset + box_size > size:
                break
            boxes.append((box_type, offset, offset + box_size))
            offset += box_size
    return boxes, size


def _fragments(boxes: list[tuple[bytes, int, int]]) -> list[tuple[int, int]]:
    """(start, end) of each fragment: a ``moof`` and the ``mdat`` right after it."""
    return [(moof[1], mdat[2]) for moof, mdat in zip(boxes, boxes[1:]) if (moof[0], mdat[0]) == (b"moof", b"mdat")]


def scan_fragmented_mp4(path: Path) -> tuple[int, int, int]:
    """Read-only walk over the top-level boxes of a fragmented MP4: (complete fragments, end of the complete boxes,
    file size). Everything after that end is a half-written tail, including a trailing ``moof`` without its ``mdat``.
    """
    boxes, size = _complete_boxes(path)
    return len(_fragments(boxes)), _complete_end(boxes), size


def _complete_end(boxes: list[tuple[bytes, int, int]]) -> int:
    """Where the complete boxes end: a ``moof`` is only useful with the ``mdat`` right after it, and one without it
    is where the file was torn."""
    end = 0
    for (box_type, start, box_end), following in zip(boxes, [*boxes[1:], None]):
        if box_type == b"moof" and (following is None or following[0] != b"mdat"):
            return start
        end = box_end
    return end


def repair_fragmented_mp4(path: Path) -> tuple[int, int]:
    """Cut a half-written tail off a fragmented MP4 we just wrote, so that every remaining fragment is complete.

    Returns (complete fragments, bytes removed). Start-up recovery of files from earlier runs does not use this: it
    checks that the shortened file decodes before cutting anything (see ``recover_partial_recordings``).
    """
    fragments, good_end, size = scan_fragmented_mp4(path)
    _truncate(path, good_end, size)
    return fragments, size - good_end


def _truncate(path: Path, end: int, size: int) -> None:
    if end < size:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())


class _FileSpans(io.RawIOBase):
    """Byte ranges of a file read one after the other as one file, read-only: the file as it would be with only
    those bytes (the first ``end`` of them: as it will be once cut there), without writing anything."""

    def __init__(self, path: Path, spans: list[tuple[int, int]]):
        super().__init__()
        self._file = open(path, "rb")
        self._spans = spans
        self._size = sum(end - start for start, end in spans)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view, done, base = memoryview(buffer), 0, 0
        for start, end in self._spans:
            inside = self._position - base
            if 0 <= inside < end - start and done < len(view):
                self._file.seek(start + inside)
                got = self._file.readinto(view[done : done + min(len(view) - done, end - start - inside)])
                done += got
                self._position += got
            base += end - start
        return done

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, origin + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._file.close()
        super().close()


def count_video_frames(path: Path, *, decode: bool = False, end: int | None = None) -> int:
    """Number of video frames in ``path``: packets demuxed (fast), or frames decoded when ``decode`` is True.

    In packet mode frames are decoded only until the first one comes out, so a file that counts is one a player
    can open. ``end``: count in the first ``end`` bytes only, as if the file were cut there.
    """
    av = pyav()

    if end is not None:
        with _FileSpans(path, [(0, end)]) as prefix:
            return _count_frames(av.open(prefix, "r", format="mp4"), decode)
    return _count_frames(av.open(str(path)), decode)


def _decodes_whole(path: Path, header_end: int, fragment: tuple[int, int]) -> bool:
    """Every packet of ``fragment`` decodes to a frame, read after the file's first ``header_end`` bytes (each
    fragment starts with a key frame, and its offsets count from its own ``moof``)."""
    av = pyav()
    packets = frames = 0
    try:
        with _FileSpans(path, [(0, header_end), fragment]) as spans, av.open(spans, "r", format="mp4") as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    frames += len(stream.decode(packet))
            frames += len(stream.decode(None))
    except (av.FFmpegError, IndexError, ValueError):
        return False
    return packets > 0 and frames == packets


def _decodable_end(path: Path, boxes: list[tuple[bytes, int, int]], end: int) -> int:
    """``end``, or the end of an earlier fragment when the last ones before it do not decode: where a file system
    grows a file before its data reaches the disk (FAT and exFAT on a USB stick), a power cut leaves a last fragment
    whole in its boxes and zeros in its frames."""
    fragments = [fragment for fragment in _fragments(boxes) if fragment[1] <= end]
    while fragments and not _decodes_whole(path, fragments[0][0], fragments[-1]):
        end = fragments.pop()[0]
    return end


def _count_frames(opened_container: Any, decode: bool) -> int:
    packets = decoded = 0
    with opened_container as container:
        if not container.streams.video:
            return 0
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packets += 1
            if decode or not decoded:
                decoded += len(stream.decode(packet))
        if decode or not decoded:
            decoded += len(stream.decode(None))
    if decode:
        return decoded
    return packets if decoded else 0


def recover_leftovers(directory: Path) -> None:
    """Start-up: finish what an interrupted run left in ``directory`` (see ``recover_partial_recordings``), once,
    before the recorder opens. A failure is logged and never stops the start: an old crash's leftovers must not
    keep the service from recording (a boot loop)."""
    if not directory.is_dir():
        return
    try:
        recover_partial_recordings(directory)
    except Exception as exc:  # noqa: BLE001 - whatever the leftovers hold, the new recording must start
        log.warning("recording: could not recover leftovers in %s: %s: %s", directory, type(exc).__name__, exc)


def recover_partial_recordings(directory: Path) -> list[Path]:
    """Finish what a crash left: ``.part`` videos become ``.mp4`` if they hold frames, ``events.jsonl`` gets its stem.

    A half-written last fragment is cut off only after the file without it is known to decode. A ``.part`` holding
    nothing but headers is deleted; any other that cannot be decoded is renamed ``.mp4.broken`` with every byte
    unchanged (kept for inspection, deleted by age like any recording when disk space runs low). Returns the
    recovered video paths.
    """
    parts = sorted(directory.glob("*" + PART_SUFFIX))
    recovered = [video for part in parts if (video := _recover_part(part))]
    if recovered:
        fsync_directory(directory)
    open_video_stem = parts[-1].name[: -len(PART_SUFFIX)] if parts else None  # the newest: open at the crash
    recover_leftover_events(directory, lambda t: make_stem(directory, t, 0), open_video_stem)
    return recovered


def _recover_part(part: Path) -> Path | None:
    av = pyav()

    target = part.with_name(part.name[: -len(".part")])
    try:
        boxes, size = _complete_boxes(part)  # walked once: the cut and the decode check both need them
        end = _complete_end(boxes)
        if end == 0 and size > 0:
            _keep_broken(part, target, "cannot be read (no complete MP4 box at its start)")
            return None
        end = _decodable_end(part, boxes, end)
        frames = count_video_frames(part, end=end) if size else 0  # as it will be once cut: nothing is cut before
    except (OSError, av.FFmpegError, ValueError) as exc:
        _keep_broken(part, target, f"cannot be read ({exc})")
        return None
    if frames == 0 and end < size:
        _keep_broken(part, target, "holds no complete frame, only a partial first fragment")
        return None
    if frames == 0:
        log.warning(
            "recording: %s from an interrupted run holds no complete frame (only headers, if any); deleted", part.name
        )
        part.unlink()
        return None
    try:
        _truncate(part, end, size)
    except OSError as exc:
        _keep_broken(part, target, f"cannot be shortened to its complete fragments ({exc})")
        return None
    os.replace(part, target)
    log.info(
        "recording: recovered %s from an interrupted run (%d frames%s)",
        target.name,
        frames,
        f", cut {size - end} bytes of a partial fragment" if end < size else "",
    )
    return target


def _keep_broken(part: Path, target: Path, why: str) -> None:
    broken = target.with_name(target.name + ".broken")
    log.warning("recording: %s from an interrupted run %s; kept unchanged as %s", part.name, why, broken.name)
    os.replace(part, broken)
