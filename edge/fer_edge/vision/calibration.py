"""Calibration of class probabilities, its fit, and the calibration error it is judged by (with the part of that
error a perfectly calibrated model shows by chance on as many faces).

A model's softmax scores tend to be over- or under-confident. One temperature ``T`` fitted on held-out faces
scales them all, ``p = softmax(log(p_model) / T)``; where the over-confidence has a shape one number cannot
follow (the shipped models are over-confident between 0.6 and 0.8 only), a monotone map of the top class's
probability, fitted after the temperature, follows it. NumPy only: convert/ fits with the same functions the
device applies, so the shipped calibration means the same on both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_edge.contract import TEMPERATURE_RANGE, Calibration, PassCalibration

# An int8 model's scores are multiples of 1/256 and often exactly 0; log(0) would make a class impossible
# at any temperature. Half a quantization step keeps it merely unlikely.
PROBABILITY_FLOOR = 1.0 / 512
ECE_BINS = 15
# The confidence map's knots: one per tenth of the held-out faces, ordered by confidence (about 360 faces each on
# PublicTest, so a knot's accuracy is known to about 2.5 points). More knots follow noise, fewer miss the shape:
# on halves of PublicTest, 10 did best of 4-15.
CONFIDENCE_KNOTS = 10


def temperature_scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` along the last axis; ``T = 1`` returns the (renormalized) scores."""
    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), PROBABILITY_FLOOR)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = temperature_scale(probabilities, temperature)
    return float(-np.log(scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimizes the negative log-likelihood of ``labels`` (golden-section search on
    log T; the likelihood is unimodal in T)."""
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on no faces")
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    ratio = (np.sqrt(5.0) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(probabilities, labels, float(np.exp(log_t)))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > 1e-4:
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return round(float(np.exp((low + high) / 2)), 4)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-1 ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins and
    weighted by how many faces fall in each."""
    probabilities = np.asarray(probabilities, np.float64)
    return _binned_gap(probabilities.max(axis=-1), probabilities.argmax(axis=-1) == labels, bins)


def _binned_gap(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(float(confidence[members].mean()) - float(correct[members].mean()))
    return float(error)


@dataclass(frozen=True)
class ChanceCalibrationError:
    """The ECE a perfectly calibrated model still shows by chance on ``faces`` faces: its ``mean`` and its 90th
    percentile ``p90`` over many draws."""

    mean: float
    p90: float
    faces: int


def chance_calibration_error(
    probabilities: np.ndarray, faces: int | None = None, draws: int = 400, bins: int = ECE_BINS, seed: int = 0
) -> ChanceCalibrationError:
    """What :func:`expected_calibration_error` reads for a model whose confidences are exactly right, on ``faces``
    faces (default: as many as given) like these: each draw takes that many top-class confidences from these
    (with replacement) and makes each face right with the probability it states. A measured ECE near this is
    within what that many faces can tell apart from perfect calibration."""
    confidence = np.asarray(probabilities, np.float64).max(axis=-1)
    faces = len(confidence) if faces is None else faces
    rng = np.random.default_rng(seed)
    errors = np.empty(draws)
    for i in range(draws):
        drawn = rng.choice(confidence, faces)
        errors[i] = _binned_gap(drawn, rng.random(faces) < drawn, bins)
    return ChanceCalibrationError(float(errors.mean()), float(np.percentile(errors, 90)), faces)


def fit_confidence_map(
    probabilities: np.ndarray, labels: np.ndarray, knots: int = CONFIDENCE_KNOTS
) -> tuple[tuple[float, float], ...]:
    """Knots ``(confidence, accuracy)`` of a non-decreasing piecewise-linear map from the top class's probability to
    how often the top class is right: the faces sorted by confidence and cut into ``knots`` equal groups, each
    group's mean confidence and accuracy a knot, groups pooled where accuracy would fall (pool-adjacent-violators)."""
    probabilities = np.asarray(probabilities, np.float64)
    if len(labels) < 2 * knots:
        raise ValueError(f"cannot fit a {knots}-knot confidence map on {len(labels)} faces")
    confidence = probabilities.max(axis=-1)
    order = np.argsort(confidence, kind="stable")
    correct = (probabilities.argmax(axis=-1) == labels)[order].astype(np.float64)
    groups = [
        [float(c.sum()), float(r.sum()), len(c)]
        for c, r in zip(*(np.array_split(a, knots) for a in (confidence[order], correct)))
    ]
    pooled: list[list[float]] = []
    for group in groups:
        pooled.append(group)
        while len(pooled) > 1 and pooled[-2][1] / pooled[-2][2] > pooled[-1][1] / pooled[-1][2]:
            last = pooled.pop()
            pooled[-1] = [a + b for a, b in zip(pooled[-1], last)]
    points: list[tuple[float, float]] = []
    for conf_sum, right, count in pooled:
        x, y = round(conf_sum / count, 4), round(right / count, 4)
        if points and x <= points[-1][0]:  # ties in confidence: one knot
            continue
        points.append((x, y))
    if len(points) < 2:
        raise ValueError("cannot fit a confidence map: the faces' confidences do not differ")
    return tuple(points)


def map_confidence(probabilities: np.ndarray, knots: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The top class's probability put through the map ``knots`` (flat beyond its ends), the others scaled to fill
    the rest in their proportions; never below the runner-up's scaled share, so the top class stays on top (the
    first of equal scores, as ``argmax`` takes it)."""
    probabilities = np.asarray(probabilities, np.float64)
    if not knots:
        return probabilities
    flat = probabilities.reshape(-1, probabilities.shape[-1])
    rows = np.arange(len(flat))
    top = flat.argmax(axis=-1)
    confidence = flat[rows, top]
    runner_up = np.partition(flat, -2, axis=-1)[:, -2] if flat.shape[-1] > 1 else np.zeros(len(flat))
    xs, ys = zip(*knots)
    mapped = np.interp(confidence, xs, ys)
    rest = np.maximum(1.0 - confidence, 1e-12)
    # at exactly the runner-up's scaled share the two tie; a hair above keeps the top class first
    mapped = np.clip(np.maximum(mapped, runner_up / (rest + runner_up) + 1e-9), 0.0, 1.0)
    out = flat * ((1.0 - mapped) / rest)[:, None]
    out[rows, top] = mapped
    return out.reshape(probabilities.shape)


def calibrate(probabilities: np.ndarray, chosen: PassCalibration) -> np.ndarray:
    """The calibration of the pass the scores come from (``Calibration.for_pass``): its temperature, then its
    confidence map."""
    return map_confidence(temperature_scale(probabilities, chosen.temperature), chosen.confidence)


def fit_calibration(single: np.ndarray, mirrored: np.ndarray, labels: np.ndarray) -> Calibration:
    """Both passes' temperatures (by likelihood) and then their confidence maps, on the same held-out faces."""
    temperature, temperature_mirror = fit_temperature(single, labels), fit_temperature(mirrored, labels)
    return Calibration(
        temperature,
        temperature_mirror,
        fit_confidence_map(temperature_scale(single, temperature), labels),
        fit_confidence_map(temperature_scale(mirrored, temperature_mirror), labels),
    )
