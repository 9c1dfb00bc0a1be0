"""Temperature scaling of class probabilities, its fit, and the calibration error it is judged by.

A model's softmax scores tend to be over- or under-confident; one temperature ``T`` fitted on held-out faces
makes them honest: ``p = softmax(log(p_model) / T)``. NumPy only: convert/ fits with the same function the
device applies, so the shipped temperature means the same on both.
"""

from __future__ import annotations

import numpy as np

from fer_edge.contract import TEMPERATURE_RANGE

# An int8 model's scores are multiples of 1/256 and often exactly 0; log(0) would make a class impossible
# at any temperature. Half a quantization step keeps it merely unlikely.
PROBABILITY_FLOOR = 1.0 / 512
ECE_BINS = 15


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
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(float(confidence[members].mean()) - float(correct[members].mean()))
    return float(error)
