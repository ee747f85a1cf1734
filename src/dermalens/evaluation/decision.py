"""Fitting the decision rule shipped with a model: per-class biases and a melanoma operating point.

A classifier trained on a class-balanced stream over-calls the rare classes
(many nevi called melanoma); one trained on the natural mix under-calls them.
Which class to report is a decision of its own, made on held-out
predictions, never on test:

- `fit_class_biases`: per-class additive biases on the log-probabilities
  that maximise balanced accuracy (the ISIC 2018 metric) without lowering
  accuracy below the raw argmax's, by coordinate ascent over a grid. A
  post-hoc logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via
  logit adjustment") with one free bias per class, fitted on out-of-fold or
  validation predictions. scikit-learn has no multi-class bias search, so it
  is written here (a few dozen lines).
- `fit_melanoma_operating_point`: the P(mel) threshold that gives a chosen
  specificity on those predictions (a screening view: "flag for review").

Both go into the calibration record beside the temperature and are applied
by every runtime through `inference.postprocess.DecisionRule`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..inference.postprocess import DecisionRule, MelanomaOperatingPoint, calibrated_probabilities, served_probabilities
from .calibration import fit_temperature

BIAS_GRID = np.round(np.arange(-3.0, 3.0001, 0.1), 4)
SWEEPS = 4
# Ties in balanced accuracy (a step function) go to the smaller bias: the rule moves only as far as it must.
BIAS_PENALTY = 1e-4


def _recall_and_accuracy(log_probs: np.ndarray, labels: np.ndarray, bias: np.ndarray,
                         present: np.ndarray) -> tuple[float, float]:
    predicted = (log_probs + bias).argmax(axis=1)
    correct = predicted == labels
    recalls = [correct[labels == k].mean() for k in present]
    return float(np.mean(recalls)), float(correct.mean())


def fit_class_biases(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     accuracy_tolerance: float = 0.0) -> tuple[dict[str, float], dict]:
    """Biases (class code -> value) maximising balanced accuracy with accuracy >= raw accuracy - tolerance.

    Returns the biases and a summary (raw and fitted balanced accuracy and
    accuracy on the fitting data). The most frequent class keeps bias 0: only
    differences between biases matter.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, C) probabilities and N labels, got {probabilities.shape} and {labels.shape}")
    log_probs = np.log(np.clip(probabilities, 1e-12, 1.0))
    present = np.unique(labels)
    bias = np.zeros(probabilities.shape[1])
    raw_balanced, raw_accuracy = _recall_and_accuracy(log_probs, labels, bias, present)
    floor = raw_accuracy - accuracy_tolerance
    reference = int(np.bincount(labels, minlength=len(classes)).argmax())

    def score(candidate: np.ndarray) -> float:
        balanced, accuracy = _recall_and_accuracy(log_probs, labels, candidate, present)
        if accuracy < floor - 1e-12:
            return -np.inf
        return balanced - BIAS_PENALTY * np.abs(candidate).sum()

    best = score(bias)
    for _ in range(SWEEPS):
        improved = False
        for k in range(len(classes)):
            if k == reference:
                continue
            for value in BIAS_GRID:
                candidate = bias.copy()
                candidate[k] = value
                value_score = score(candidate)
                if value_score > best + 1e-12:
                    best, bias, improved = value_score, candidate, True
        if not improved:
            break
    fitted_balanced, fitted_accuracy = _recall_and_accuracy(log_probs, labels, bias, present)
    summary = {"raw_balanced_accuracy": raw_balanced, "raw_accuracy": raw_accuracy,
               "balanced_accuracy": fitted_balanced, "accuracy": fitted_accuracy, "n_images": int(len(labels))}
    return {code: float(bias[k]) for k, code in enumerate(classes)}, summary


def fit_melanoma_operating_point(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                                 specificity: float = 0.8, fitted_on: str = "") -> MelanomaOperatingPoint | None:
    """The lowest P(mel) threshold whose specificity on these predictions is at least `specificity`."""
    classes = list(classes)
    if "mel" not in classes or not 0 < specificity < 1:
        return None
    scores = served_probabilities(probabilities)[:, classes.index("mel")]
    positive = np.asarray(labels) == classes.index("mel")
    negatives = np.sort(scores[~positive])
    if len(negatives) == 0 or positive.sum() == 0:
        return None
    # Flag p >= t: specificity = share of negatives below t. The threshold sits just above the
    # negative at the target quantile, so at least `specificity` of the negatives fall below it:
    # one float32 step above, as the flag is taken on float32 probabilities (`served_probabilities`).
    index = min(len(negatives) - 1, int(np.ceil(specificity * len(negatives))) - 1)
    threshold = float(np.nextafter(negatives[index], np.float32(np.inf)))
    sensitivity = float((scores[positive] >= threshold).mean())
    return MelanomaOperatingPoint(threshold, float(specificity), sensitivity, fitted_on)


def cross_fitted_decisions(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                           classes: Sequence[str], accuracy_tolerance: float = 0.0, *,
                           logits: bool = False) -> np.ndarray:
    """Each fold's decisions under biases fitted on the other folds' predictions.

    What the rule is worth on predictions it was not fitted on: a recipe
    comparison scores the rule this way, so fitting it cannot flatter it.
    `accuracy_tolerance` is `fit_class_biases`'s: how much accuracy the fitted
    rule may give up (0, the shipped rule's setting: none). logits=True: the
    scores are logits, and the temperature too is fitted on the other folds
    (argmax(z / T + bias) moves with T, so a temperature fitted on every fold's
    labels would let a fold's own labels move its decisions).
    """
    probabilities, labels, folds = np.asarray(probabilities), np.asarray(labels), np.asarray(folds)
    if not len(probabilities) == len(labels) == len(folds):
        raise ValueError(f"{len(probabilities)} predictions, {len(labels)} labels and {len(folds)} fold numbers")
    if len(np.unique(folds)) < 2:
        raise ValueError("cross-fitting needs at least two folds")
    decided = np.empty(len(labels), dtype=np.int64)
    for fold in np.unique(folds):
        held_out = folds == fold
        scores = probabilities
        if logits:
            scores = calibrated_probabilities(probabilities, fit_temperature(probabilities[~held_out],
                                                                             labels[~held_out]))
        bias, _ = fit_class_biases(scores[~held_out], labels[~held_out], classes, accuracy_tolerance)
        decided[held_out] = DecisionRule(tuple(classes), bias).decide(scores[held_out])
    return decided


def fit_decision_rule(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, fitted_on: str,
                      objective: str = "balanced", melanoma_specificity: float | None = 0.8) -> tuple[DecisionRule, dict]:
    """The rule for a model from its held-out calibrated probabilities; objective 'raw' keeps the argmax."""
    classes = tuple(classes)
    if objective not in ("raw", "balanced"):
        raise ValueError(f"decision objective must be 'raw' or 'balanced', got {objective!r}")
    # Fitted on what it decides on (`DecisionRule.decide`): float32 probabilities, as served.
    probabilities = served_probabilities(probabilities).astype(np.float64)
    if objective == "balanced":
        bias, summary = fit_class_biases(probabilities, labels, classes)
    else:
        bias, summary = {}, {}
    melanoma = (fit_melanoma_operating_point(probabilities, labels, classes, melanoma_specificity, fitted_on)
                if melanoma_specificity else None)
    rule = DecisionRule(classes, bias, "balanced accuracy, accuracy kept" if objective == "balanced" else "raw",
                        fitted_on, melanoma)
    return rule, summary
