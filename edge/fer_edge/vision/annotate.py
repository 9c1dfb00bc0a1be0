"""Overlays drawn in place on the BGR frame: box, filled label bar, label and score."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from fer_edge.types import Face

if TYPE_CHECKING:
    from fer_edge.config import OverlayConfig

FONT = cv2.FONT_HERSHEY_SIMPLEX


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
        self._text_thickness = max(1, thickness // 2)

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
        for face in faces:
            box = face.box
            cv2.rectangle(image, (box.x, box.y), (box.x2 - 1, box.y2 - 1), self.box_color, self.thickness)
            text = self.caption(face)
            if not text:
                continue
            (text_w, text_h), baseline = cv2.getTextSize(text, FONT, self.font_scale, self._text_thickness)
            bar_w, bar_h = text_w + 6, text_h + baseline + 4
            # Above the box when there is room, else below it; moved in from the side a face at the edge leaves by.
            top = box.y - bar_h if box.y - bar_h >= 0 else min(box.y2, height - bar_h)
            left = max(0, min(box.x - self.thickness // 2, width - 1 - bar_w))
            cv2.rectangle(image, (left, top), (left + bar_w, top + bar_h), self.box_color, cv2.FILLED)
            cv2.putText(
                image,
                text,
                (left + 3, top + bar_h - baseline - 2),
                FONT,
                self.font_scale,
                self.text_color,
                self._text_thickness,
                cv2.LINE_AA,
            )
