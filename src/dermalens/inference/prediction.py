"""What every predictor returns, and the part of predicting that does not depend on the runtime.

`Prediction` (one image's class probabilities), `read_rgb_image` (the one
image decoder), `predict_sources` (files or arrays in batches -> Predictions)
and `predict_files` (many files, decoded on two threads, failures reported):
all of it only calls a predictor's `predict_arrays`, so the PyTorch
`Predictor` and the `OnnxPredictor` share it. No torch here: serving an .onnx
model must not load PyTorch.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..classes import RESEARCH_DISCLAIMER, class_name
from ..data.readers.images import UnreadableImageError, decode_image_file
from .settings import DEFAULT_BATCH_SIZE


@dataclass
class Prediction:
    source: str
    probabilities: dict[str, float]      # class code -> probability, in class order

    @property
    # The class the model's decision rule reports (inference.postprocess.DecisionRule, fitted on held-out
    # data and shipped with the model); the most probable class when the model has no fitted rule.
    predicted_class: str | None = None
    melanoma_flag: bool | None = None    # P(mel) at or above the model's melanoma operating point
    decision_rule: str = "raw argmax"
    def top_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

        """The most probable class (which may differ from `predicted_class` under a fitted rule)."""
    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]
    @property
    def decided_class(self) -> str:
        return self.predicted_class or self.top_class


    def to_dict(self, k: int | None = None) -> dict:
        top = self.top_k(k or len(self.probabilities))
        return {
            "image": self.source,
            "top_class": self.top_class,
            "top_class_name": class_name(self.top_class),
            "predicted_class": self.decided_class,
            "predicted_class_name": class_name(self.decided_class),
            "decision_rule": self.decision_rule,
            "melanoma_flag": self.melanoma_flag,
            "probabilities": self.probabilities,
            "top_k": [{"class": c, "name": class_name(c), "probability": p} for c, p in top],
            "disclaimer": RESEARCH_DISCLAIMER,
        }


def as_prediction(source: str, probabilities: Sequence[float], classes: Sequence[str], decision=None) -> Prediction:
    """One row of `predict_arrays` as a Prediction; `classes` are the model's, in output order.

    decision: the model's `postprocess.DecisionRule` (None: the argmax decides).
    """
    probabilities = np.asarray(probabilities).reshape(-1)
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes ({', '.join(classes)})")
    prediction = Prediction(source, {code: float(p) for code, p in zip(classes, probabilities)})
    if decision is not None:
        prediction.predicted_class = classes[int(decision.decide(probabilities[None])[0])]
        flags = decision.melanoma_flags(probabilities[None])
        prediction.melanoma_flag = None if flags is None else bool(flags[0])
        prediction.decision_rule = "raw argmax" if decision.is_raw else f"{decision.objective} (fitted on " \
                                                                       f"{decision.fitted_on})"
    return prediction


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Decode an image file upright (EXIF orientation applied) as RGB uint8.

    The same decoder as training data; errors are ValueErrors naming the file.
    """
    try:
        return decode_image_file(path)
    except UnreadableImageError as error:
        raise ValueError(str(error)) from None


# `predictor` below is any `base.ImagePredictor` (only its predict_arrays is called);
# not annotated, since base.py imports this module for `Prediction`.

def predict_sources(predictor, sources: Iterable[str | Path | np.ndarray],
                    batch_size: int = 16) -> list[Prediction]:
    """Files or RGB uint8 arrays -> one Prediction each, `batch_size` images per `predict_arrays` call."""
    sources = list(sources)
    results: list[Prediction] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        arrays = [s if isinstance(s, np.ndarray) else read_rgb_image(s) for s in chunk]
        probs = predictor.predict_arrays(arrays)
        for source, row in zip(chunk, probs):
            results.append(as_prediction("<array>" if isinstance(source, np.ndarray) else str(source), row,
                                         predictor.classes, getattr(predictor, "decision", None)))
    return results


def predict_files(predictor, paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = True) -> tuple[list[Prediction], list[str]]:
    """Predictions for many image files, in batches, with a progress bar.

    Works with any predictor (`Predictor`, `OnnxPredictor`): it only calls
    `predict_arrays`. Files are decoded on two threads while the model runs;
    a file that cannot be read is reported (its name and why) and the others
    are still answered.
    """
    def decode(path):
        try:
            return path, read_rgb_image(path), None
        except (ValueError, FileNotFoundError, OSError) as error:
            return path, None, f"{path}: {error}"

    results: list[Prediction] = []
    failures: list[str] = []
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(paths), unit="image", desc="predict",
                                             disable=not progress or len(paths) < 2) as bar:
        for start in range(0, len(paths), batch_size):
            decoded = list(pool.map(decode, paths[start:start + batch_size]))
            good = [(path, image) for path, image, error in decoded if error is None]
            failures += [error for _, _, error in decoded if error is not None]
            if good:
                probs = predictor.predict_arrays([image for _, image in good])
                results += [as_prediction(str(path), row, predictor.classes) for (path, _), row in zip(good, probs)]
            bar.update(len(decoded))
    return results, failures
