"""Stable per-track labels: an exponential moving average of the class scores plus hysteresis on the label.

Pure Python/NumPy. Defaults meet issue 7's target (label changes between consecutive frames <= 3% of the time on
a one-person clip, while a real expression change shows within 15 frames at 30 fps); see
tests/test_edge_smoothing.py for the synthetic sequence that checks both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fer_edge.types import Prediction

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeldPrediction(Prediction):
    """Smoothed scores with the label the smoother holds on to.

    While hysteresis holds the label, another class may have a (slightly) higher smoothed score; ``index``,
    ``label`` and ``score`` therefore refer to the held class instead of the argmax, and ``scores`` stay the
    honest smoothed scores.
    """

    held: int = 0

    @property
    def index(self) -> int:
        return self.held


@dataclass(slots=True)
class _TrackState:
    labels: tuple[str, ...]
    scores: np.ndarray  # smoothed, float64
    held: int


class LabelSmoother:
    """Per-track EMA of class scores; the shown label switches only when a rival leads it by ``hysteresis``.

    ``alpha`` is the weight of the newest frame (1.0 = no smoothing), ``hysteresis`` the smoothed-score lead a
    new top class needs over the held label before the label switches (0.0 = plain argmax of the EMA).
    """

    def __init__(self, alpha: float = 0.3, hysteresis: float = 0.1) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: expected a number in (0, 1], got {alpha}")
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis: expected a number in [0, 1), got {hysteresis}")
        self.alpha = alpha
        self.hysteresis = hysteresis
        self._tracks: dict[int, _TrackState] = {}

    def update(self, track_id: int, prediction: Prediction) -> HeldPrediction:
        """Fold this frame's prediction of a track into its state; returns the prediction to display."""
        scores = np.asarray(prediction.scores, dtype=np.float64)
        state = self._tracks.get(track_id)
        if state is None or state.labels != prediction.labels:
            state = _TrackState(prediction.labels, scores.copy(), int(np.argmax(scores)))
            self._tracks[track_id] = state
        else:
            state.scores += self.alpha * (scores - state.scores)
            top = int(np.argmax(state.scores))
            if top != state.held and state.scores[top] - state.scores[state.held] > self.hysteresis:
                log.debug("track %d: %s -> %s", track_id, state.labels[state.held], state.labels[top])
                state.held = top
        return HeldPrediction(state.labels, tuple(float(s) for s in state.scores), held=state.held)

    def forget(self, active_ids: set[int]) -> None:
        """Drop the state of every track not in ``active_ids`` (tracks that ended)."""
        for track_id in [t for t in self._tracks if t not in active_ids]:
            del self._tracks[track_id]

    @property
    def track_ids(self) -> set[int]:
        return set(self._tracks)
