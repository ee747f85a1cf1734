"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks"): one scalar T divides the logits so that softmax(logits / T) has
minimal negative log-likelihood on held-out validation data. T > 1 softens
over-confident predictions; the argmax, hence accuracy, never changes.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar  # scipy ships with scikit-learn
from scipy.special import log_softmax

__all__ = ["MAX_TEMPERATURE", "MIN_TEMPERATURE", "fit_temperature"]

# Bounds keep the fit sane on degenerate validation sets: perfectly separated
# logits push T towards 0, constant or uninformative ones towards infinity.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def _validated_logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N > 0; got {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite")
    return logits


def _mean_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_probs = log_softmax(logits / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the validation NLL of softmax(logits / T).

    Returns T in [MIN_TEMPERATURE, MAX_TEMPERATURE]. The NLL is convex in 1/T,
    hence unimodal in log T, so a bounded 1-D Brent search on log T finds the
    global minimum inside the bounds without step sizes or iteration tuning.
    """
    logits = _validated_logits(logits)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},); got {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")

    result = minimize_scalar(
        lambda log_t: _mean_nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = math.exp(result.x) if np.isfinite(result.x) else 1.0
    return float(np.clip(temperature, MIN_TEMPERATURE, MAX_TEMPERATURE))
