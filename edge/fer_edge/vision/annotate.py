"""Overlays drawn in place on the BGR frame: box, filled label bar, label and score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fer_edge.types import Box, Face

if TYPE_CHECKING:
    from fer_edge.config import OverlayConfig

FONT = cv2.FONT_HERSHEY_SIMPLEX
# font_scale and thickness are for frames this many lines tall; taller ones scale them up, or a 1080p caption would
# be 14 px tall, and 3.5 px in a 480-px-wide snapshot of it
REFERENCE_LINES = 480
# ... a caption as far as its face is this many times as tall as this: in a crowd on a large frame the faces are
# small, and captions grown with the frame would cover each other and the neighbours' faces
REFERENCE_FACE_LINES = 120


class OverlayAnnotator:
    def __init__(
        self,
        *,
        enabled: bool = True,
        show_score: bool = True,
        box_color: tuple[int, int, int] = (0, 255, 0),
        text_color: tuple[int, int, int] = (0, 0, 0),
        font_scale: float = 0.6,
        thickness: int = 2,
    ):
        self.enabled = enabled
        self.show_score = show_score
        self.box_color = tuple(int(c) for c in box_color)
        self.text_color = tuple(int(c) for c in text_color)
        self.font_scale = font_scale
        self.thickness = thickness
        self._below: set[int] = set()  # the tracks whose caption went below their face on the last frame

    @classmethod
    def from_config(cls, overlay: OverlayConfig) -> OverlayAnnotator:
        return cls(
            enabled=overlay.enabled,
            show_score=overlay.show_score,
            box_color=overlay.box_color,
            text_color=overlay.text_color,
            font_scale=overlay.font_scale,
            thickness=overlay.thickness,
        )

    def caption(self, face: Face) -> str:
        parts = []
        if face.track_id is not None:
            parts.append(f"#{face.track_id}")
        shown = face.shown
        if shown is not None:
            parts.append(shown.shown_label)
            if self.show_score and not shown.unsure:
                parts.append(f"{shown.score:.2f}")
        return " ".join(parts)

    def draw(self, image: np.ndarray, faces: list[Face]) -> None:
        if not self.enabled:
            return
        height, width = image.shape[:2]
        thickness = self.style(height).thickness
        for face in faces:
            box = face.box
            cv2.rectangle(image, (box.x, box.y), (box.x2 - 1, box.y2 - 1), self.box_color, thickness)
        for caption in self.captions(faces, width, height):
            bar = caption.bar
            cv2.rectangle(image, (bar.x, bar.y), (bar.x2 - 1, bar.y2 - 1), self.box_color, cv2.FILLED)
            cv2.putText(
                image,
                caption.text,
                (bar.x + 3, bar.y2 - 1 - caption.baseline - 2),
                FONT,
                caption.style.font_scale,
                self.text_color,
                caption.style.text_thickness,
                cv2.LINE_AA,
            )

    def style(self, height: int, face_lines: int | None = None) -> Style:
        """The font scale and line widths for a frame ``height`` lines tall: as configured up to
        ``REFERENCE_LINES``, in proportion above; for a caption, no more than its face's height in proportion to
        ``REFERENCE_FACE_LINES`` asks (never less than configured)."""
        scale = max(1.0, height / REFERENCE_LINES)
        if face_lines is not None:
            scale = min(scale, max(1.0, face_lines / REFERENCE_FACE_LINES))
        thickness = max(1, round(self.thickness * scale))
        return Style(self.font_scale * scale, thickness, max(1, thickness // 2))

    def captions(self, faces: list[Face], width: int, height: int) -> list[Caption]:
        """Where each face's caption goes on a ``width`` x ``height`` frame: above its box when there is room, else
        below it, moved in from the side a face at the edge leaves by. Of those places the one that covers the least
        of the other faces and of the captions placed before it, so that in a crowd each caption stays readable and
        no face hides behind a neighbour's caption; of two that cover as little, the side the face's caption had on
        the last frame."""
        line_width = self.style(height).thickness  # the boxes'
        placed: list[Box] = []
        captions = []
        below: set[int] = set()
        for face in faces:
            text = self.caption(face)
            if not text:
                continue
            box = face.box
            style = self.style(height, box.h)
            (text_w, text_h), baseline = cv2.getTextSize(text, FONT, style.font_scale, style.text_thickness)
            bar_w, bar_h = text_w + 7, text_h + baseline + 5
            left = max(0, min(box.x - line_width // 2, width - bar_w))
            tops = [top for top in (box.y - bar_h + 1, box.y2) if 0 <= top <= height - bar_h]
            places = [Box(left, top, bar_w, bar_h) for top in tops or [min(box.y2, height - bar_h)]]
            covered = [*placed, *(other.box for other in faces if other is not face)]
            # a caption that covers nothing either way keeps its side: it does not hop as neighbours come and go
            hops = [(place.y >= box.y) != (face.track_id in self._below) for place in places]
            costs = [(sum(_overlap(place, other) for other in covered), hop) for place, hop in zip(places, hops)]
            bar = places[costs.index(min(costs))]
            if face.track_id is not None and bar.y >= box.y:
                below.add(face.track_id)
            placed.append(bar)
            captions.append(Caption(text, bar, baseline, style))
        self._below = below
        return captions


@dataclass(frozen=True, slots=True)
class Style:
    """How big the overlay is drawn on a frame of a given height."""

    font_scale: float
    thickness: int  # the boxes'
    text_thickness: int


@dataclass(frozen=True, slots=True)
class Caption:
    """A face's caption as drawn: its text, the filled bar behind it, the text's baseline in the bar, its size."""

    text: str
    bar: Box
    baseline: int
    style: Style


def _overlap(a: Box, b: Box) -> int:
    return max(0, min(a.x2, b.x2) - max(a.x, b.x)) * max(0, min(a.y2, b.y2) - max(a.y, b.y))
