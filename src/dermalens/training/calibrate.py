"""Training's last step: fit what turns the model's logits into what users are told, on held-out data.

The temperature (softmax(logits / T), Guo et al. 2017) and the decision
rule (per-class biases and the melanoma operating point,
evaluation/decision.py) are fitted on the run's validation split, or on the
out-of-fold predictions of a cross-validated run, for the predictor that is
served (same TTA), and written beside the checkpoint (its calibration
record). Evaluation only reads them: it never changes a model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluation.calibration import fit_temperature
from ..evaluation.decision import fit_decision_rule
from ..inference.postprocess import DecisionRule, calibrated_probabilities
from ..models.calibration_record import write_calibration

log = logging.getLogger(__name__)


def fitted_temperature(logits: np.ndarray, labels: np.ndarray, evaluation: dict) -> float:
    """The temperature the evaluation settings give a model: fitted on held-out `logits`, else 1.

    1 with evaluation.temperature_scaling off, or with no held-out images.
    """
    if not (evaluation["temperature_scaling"] and len(labels)):
        return 1.0
    return float(fit_temperature(np.asarray(logits), np.asarray(labels)))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], evaluation: dict,
                    fitted_on: str) -> tuple[float, DecisionRule, dict]:
    """Temperature and decision rule fitted on held-out `logits`, as the evaluation settings ask; nothing written.

    Returns (temperature, rule, the rule's raw vs fitted balanced accuracy and accuracy there).
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    temperature = fitted_temperature(logits, labels, evaluation)
    rule, summary = fit_decision_rule(calibrated_probabilities(logits, temperature), labels, classes,
                                      fitted_on=fitted_on, objective=evaluation["decision_rule"],
                                      melanoma_specificity=evaluation["melanoma_specificity"])
    return temperature, rule, summary


def calibrate(checkpoint: Path, logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], evaluation: dict,
              fitted_on: str) -> dict:
    """Fit temperature and decision rule on held-out `logits` (with the TTA of evaluation["tta"]) and record them.

    Returns a summary: the temperature, the rule, and raw vs fitted balanced accuracy and accuracy there.
    """
    temperature, rule, summary = fit_calibration(logits, labels, classes, evaluation, fitted_on)
    write_calibration(checkpoint, temperature, evaluation["tta"], len(labels), fitted_on=fitted_on,
                      decision=rule.to_dict())
    log.info("calibrated on %s: temperature %.3f; decision rule %s %s", fitted_on, temperature, rule.objective,
             summary)   # fitted_on names the images and their count
    return {"temperature": temperature, "decision": rule.to_dict(), "fit": summary}
