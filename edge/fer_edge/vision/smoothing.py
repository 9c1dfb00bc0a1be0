"""Stable per-track labels in time: an exponential moving average of the class scores with a time constant in
seconds, hysteresis on the label, and a minimum dwell before the shown label switches. Hysteresis and dwell only
hold a label against a weak lead: a class whose smoothed score reaches ``decisive`` is shown at once, so the
label never contradicts scores that clearly favour another class.

Pure Python/NumPy. Time, not frames: the frame rate changes with the camera and the detection cadence, and a
track is classified at its own pace, so each update weighs the newest scores by the time since the last one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fer_edge.types import Prediction

if TYPE_CHECKING:
    from fer_edge.config import SmoothingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeldPrediction(Prediction):
    """Smoothed scores with the label the smoother holds on to.

    While hysteresis holds the label, another class may have a (slightly) higher smoothed score; ``index``,
    ``label`` and ``score`` therefore refer to the held class instead of the argmax, and ``scores`` stay the
    honest smoothed scores.
    """

    held: int = 0
    held_unsure: bool = False

    @property
    def index(self) -> int:
        return self.held

    @property
    def unsure(self) -> bool:
        return self.held_unsure


@dataclass(slots=True)
class _TrackState:
    labels: tuple[str, ...]
    scores: np.ndarray  # smoothed, float64
    held: int
    updated_at: float  # seconds: the last update
    held_since: float  # seconds: when the shown label last switched (or the track started)
    unsure: bool  # shown as "?": the held class's smoothed score fell below the floor


class LabelSmoother:
    """Per-track EMA of class scores; the shown label switches when a rival leads it by ``hysteresis`` and the
    held label has been shown for at least ``min_dwell_s``, or at once when the rival's smoothed score reaches
    ``decisive``.

    ``time_constant_s`` is the EMA's time constant: after that long, a step change in the scores is 63% through
    (0 = no smoothing). ``hysteresis`` is the smoothed-score lead a new top class needs over the held label
    (0 = plain argmax of the EMA). ``decisive`` above 0.5 lets the dwell hold a label against a class that
    holds most of the probability; 1 turns the rule off.
    """

    def __init__(
        self,
        time_constant_s: float = 0.2,
        hysteresis: float = 0.1,
        min_dwell_s: float = 1.5,
        decisive: float = 0.5,
    ) -> None:
        self.time_constant_s = time_constant_s
        self.hysteresis = hysteresis
        self.min_dwell_s = min_dwell_s
        self.decisive = decisive
        self._tracks: dict[int, _TrackState] = {}

    @classmethod
    def from_config(cls, smoothing: SmoothingConfig) -> LabelSmoother:
        return cls(smoothing.time_constant_s, smoothing.hysteresis, smoothing.min_dwell_s, smoothing.decisive)

    def update(self, track_id: int, prediction: Prediction, t: float) -> HeldPrediction:
        """Fold a prediction of a track made at ``t`` seconds into its state; returns the prediction to show."""
        scores = np.asarray(prediction.scores, dtype=np.float64)
        state = self._tracks.get(track_id)
        if state is None or state.labels != prediction.labels:
            top = int(np.argmax(scores))
            state = _TrackState(prediction.labels, scores.copy(), top, t, t, bool(scores[top] < prediction.floor))
            self._tracks[track_id] = state
        else:
            elapsed = max(0.0, t - state.updated_at)
            weight = 1.0 if self.time_constant_s == 0 else -math.expm1(-elapsed / self.time_constant_s)
            state.scores += weight * (scores - state.scores)
            state.updated_at = max(state.updated_at, t)
            top = int(np.argmax(state.scores))
            lead = state.scores[top] - state.scores[state.held]
            if top != state.held and (
                (lead > 0 and state.scores[top] >= self.decisive)
                or (lead > self.hysteresis and t - state.held_since >= self.min_dwell_s)
            ):
                log.debug("track %d: %s -> %s", track_id, state.labels[state.held], state.labels[top])
                state.held = top
                state.held_since = t
                state.unsure = bool(state.scores[top] < prediction.floor)
            elif (state.scores[state.held] < prediction.floor) != state.unsure and (
                t - state.held_since >= self.min_dwell_s or state.scores[state.held] >= self.decisive
            ):
                # "?" and back is a change of the shown label too: it dwells like one
                state.unsure = not state.unsure
                state.held_since = t
        return HeldPrediction(
            state.labels,
            tuple(float(s) for s in state.scores),
            floor=prediction.floor,
            held=state.held,
            held_unsure=state.unsure,
        )

    def forget(self, active_ids: set[int]) -> None:
        """Drop the state of every track not in ``active_ids`` (tracks that ended)."""
        for track_id in [t for t in self._tracks if t not in active_ids]:
            del self._tracks[track_id]

    @property
    def track_ids(self) -> set[int]:
        return set(self._tracks)


class NullSmoother:
    """No smoothing: the raw prediction is shown."""

    def update(self, track_id: int, prediction: Prediction, t: float) -> None:
        return None

    def forget(self, active_ids: set[int]) -> None:
        pass
