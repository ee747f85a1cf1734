"""From a batch of preprocessed images to what a user is told, in one place and without torch.

Every runtime (PyTorch `Predictor`, `OnnxPredictor`, evaluation, the
explanations' captions) goes through these functions:

1. `tta_views`: the test-time-augmentation views of a batch, stacked into ONE
   batch so the model runs once (identity, horizontal, vertical and both
   flips; dermoscopy has no "up");
2. `merge_views`: the mean of the views' logits;
3. `calibrated_probabilities`: softmax(logits / temperature), the temperature
   fitted on validation (the calibration record);
4. `DecisionRule`: the class to report. `raw` is the argmax of the
   probabilities; a fitted rule adds a per-class bias to the log-probabilities
   (fitted on validation or out-of-fold predictions to raise balanced accuracy
   without lowering accuracy), and a melanoma operating point flags images whose
   melanoma probability reaches a threshold chosen for a specificity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

# Inputs per forward pass, whatever the batch: 128 images with flip TTA are 16 passes of 32 views. One
# pass of 512 views through ONNX Runtime took the shipped ensemble to a 14 GB peak (RSS) and ran slower
# than passes of 32 (1.1 GB): measured with evaluation's default batch of 128 images.
MAX_FORWARD_BATCH = 32


def in_passes(forward: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, classes: int) -> np.ndarray:
    """forward(chunk) -> (n, classes) logits over `inputs` in chunks of at most MAX_FORWARD_BATCH, concatenated."""
    outputs = [np.asarray(forward(inputs[start:start + MAX_FORWARD_BATCH]), dtype=np.float32)
               for start in range(0, len(inputs), MAX_FORWARD_BATCH)]
    return np.concatenate(outputs) if outputs else np.zeros((0, classes), dtype=np.float32)

TTA_NONE = "none"
TTA_FLIPS = "flips"
TTA_VIEW_COUNT = {TTA_NONE: 1, TTA_FLIPS: 4}


def tta_name(tta: bool | str) -> str:
    """True/False (the calibration record's flag) or a name -> the name of the view set."""
    if isinstance(tta, str):
        if tta not in TTA_VIEW_COUNT:
            raise ValueError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_VIEW_COUNT)}")
        return tta
    return TTA_FLIPS if tta else TTA_NONE


def tta_views(batch: np.ndarray, tta: bool | str) -> np.ndarray:
    """(N, 3, S, S) -> (V*N, 3, S, S): view v of image i at row v*N + i (identity first)."""
    if tta_name(tta) == TTA_NONE:
        return np.ascontiguousarray(batch)
    return np.ascontiguousarray(np.concatenate(
        [batch, batch[..., ::-1], batch[..., ::-1, :], batch[..., ::-1, ::-1]]))


def merge_views(logits: np.ndarray, n_images: int) -> np.ndarray:
    """(V*N, C) logits of `tta_views` -> (N, C), the mean over the views."""
    logits = np.asarray(logits, dtype=np.float32)
    if n_images == 0:
        return logits.reshape(0, logits.shape[-1])
    return logits.reshape(-1, n_images, logits.shape[-1]).mean(axis=0)


def calibrated_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature), stable for large logits."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number; got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def served_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as every runtime serves them: float32.

    Decisions and the melanoma flag are taken on these, wherever they are
    computed, so that evaluation (float64 from the logits) and predict or the
    server (float32) agree on an image whose P(mel) lies within float32's
    rounding of the threshold.
    """
    return np.asarray(probabilities, dtype=np.float32)


@dataclass
class MelanomaOperatingPoint:
    """Flag an image when P(mel) >= threshold; the threshold gave `specificity` where it was fitted."""

    threshold: float
    specificity: float               # the target, on the data it was fitted on
    sensitivity: float | None = None  # what it reached there
    fitted_on: str = ""

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "specificity": self.specificity, "sensitivity": self.sensitivity,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, record: dict | None) -> "MelanomaOperatingPoint | None":
        if not record:
            return None
        return cls(float(record["threshold"]), float(record["specificity"]),
                   None if record.get("sensitivity") is None else float(record["sensitivity"]),
                   str(record.get("fitted_on", "")))


@dataclass
class DecisionRule:
    """Which class to report from calibrated probabilities: argmax of log p + bias (zero bias: the raw argmax)."""

    classes: tuple[str, ...]
    class_bias: dict[str, float] = field(default_factory=dict)   # class code -> added to log p
    objective: str = "raw"
    fitted_on: str = ""
    melanoma: MelanomaOperatingPoint | None = None

    @property
    def is_raw(self) -> bool:
        return not any(self.class_bias.values())

    def bias_vector(self) -> np.ndarray:
        return np.array([self.class_bias.get(code, 0.0) for code in self.classes], dtype=np.float64)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices, (N,), for probabilities (N, C) in the order of `classes`."""
        probabilities = served_probabilities(probabilities).astype(np.float64)
        if self.is_raw:
            return probabilities.argmax(axis=1)
        return (np.log(np.clip(probabilities, 1e-12, 1.0)) + self.bias_vector()).argmax(axis=1)

    def melanoma_flags(self, probabilities: np.ndarray) -> np.ndarray | None:
        """True where P(mel) reaches the operating point's threshold; None without one (or without a mel class)."""
        if self.melanoma is None or "mel" not in self.classes:
            return None
        return served_probabilities(probabilities)[:, self.classes.index("mel")] >= self.melanoma.threshold

    def to_dict(self) -> dict:
        return {"objective": self.objective, "class_bias": {c: float(self.class_bias.get(c, 0.0)) for c in self.classes},
                "fitted_on": self.fitted_on, "melanoma_operating_point": self.melanoma.to_dict() if self.melanoma else None}

    @classmethod
    def from_dict(cls, record: dict | None, classes: Sequence[str]) -> "DecisionRule":
        """The rule of a calibration record; a record without one (older models) is the raw argmax."""
        classes = tuple(classes)
        if not record:
            return cls(classes)
        bias = {str(code): float(value) for code, value in (record.get("class_bias") or {}).items()}
        unknown = sorted(set(bias) - set(classes))
        if unknown:
            raise ValueError(f"the decision rule names class(es) {', '.join(unknown)}, which the model does not "
                             f"predict ({', '.join(classes)})")
        return cls(classes, bias, str(record.get("objective", "fitted")), str(record.get("fitted_on", "")),
                   MelanomaOperatingPoint.from_dict(record.get("melanoma_operating_point")))
