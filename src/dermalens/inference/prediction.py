"""What every predictor returns, and the part of predicting that does not depend on the runtime.

`Prediction` (one image's class probabilities), `read_rgb_image` (the one
image decoder), `predict_sources` (files or arrays in batches -> Predictions)
and `predict_files` (many files, decoded on worker threads while the model
runs, each failure reported by file while the others are answered):
all of it only calls a predictor's `predict_arrays`, so the PyTorch
`Predictor` and the `OnnxPredictor` share it. No torch here: serving an .onnx
model must not load PyTorch.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..classes import RESEARCH_DISCLAIMER, class_name
from ..data.geometry import check_large_enough, resolution_caution
from ..data.readers.images import UnreadableImageError, decode_image_file
from .settings import DEFAULT_BATCH_SIZE


@dataclass
class Prediction:
    source: str
    probabilities: dict[str, float]      # class code -> probability, in class order
    # The class the model's decision rule reports (inference.postprocess.DecisionRule, fitted on held-out
    # data and shipped with the model); the most probable class when the model has no fitted rule.
    predicted_class: str | None = None
    melanoma_flag: bool | None = None    # P(mel) at or above the model's melanoma operating point
    decision_rule: str = "raw argmax"
    caution: str | None = None           # why this answer is unreliable (`image_caution`), None: nothing known

    @property
    def top_class(self) -> str:
        """The most probable class (which may differ from `predicted_class` under a fitted rule)."""
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def decided_class(self) -> str:
        return self.predicted_class or self.top_class

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, k: int | None = None) -> dict:
        top = self.top_k(k or len(self.probabilities))
        return {
            "image": self.source,
            "predicted_class": self.decided_class,
            "predicted_class_name": class_name(self.decided_class),
            "decision_rule": self.decision_rule,
            "melanoma_flag": self.melanoma_flag,
            "top_class": self.top_class,
            "top_class_name": class_name(self.top_class),
            "probabilities": self.probabilities,
            "top_k": [{"class": c, "name": class_name(c), "probability": p} for c, p in top],
            "caution": self.caution,
            "disclaimer": RESEARCH_DISCLAIMER,
        }


def as_prediction(source: str, probabilities: Sequence[float], classes: Sequence[str], decision=None,
                  caution: str | None = None) -> Prediction:
    """One row of `predict_arrays` as a Prediction; `classes` are the model's, in output order.

    decision: the model's `postprocess.DecisionRule` (None: the argmax decides);
    caution: `image_caution`'s sentence for the image, if any.
    """
    probabilities = np.asarray(probabilities).reshape(-1)
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes ({', '.join(classes)})")
    prediction = Prediction(source, {code: float(p) for code, p in zip(classes, probabilities)}, caution=caution)
    if decision is not None:
        prediction.predicted_class = classes[int(decision.decide(probabilities[None])[0])]
        flags = decision.melanoma_flags(probabilities[None])
        prediction.melanoma_flag = None if flags is None else bool(flags[0])
        prediction.decision_rule = "raw argmax" if decision.is_raw else f"{decision.objective} (fitted on " \
                                                                       f"{decision.fitted_on})"
    return prediction


def image_caution(image: np.ndarray, preprocessing, what: str = "image") -> str | None:
    """Whether a model with this `Preprocessing` can answer for this RGB image: ImageTooSmallError (a ValueError
    naming the size) under `geometry.MIN_IMAGE_SIDE` pixels a side; the low-resolution caution when the model
    sees it enlarged more than `geometry.MAX_ENLARGEMENT` times; else None."""
    height, width = np.asarray(image).shape[:2]
    check_large_enough(height, width, what)
    if preprocessing is None:
        return None
    return resolution_caution(height, width, preprocessing.image_size, preprocessing.geometry)


def read_rgb_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode an image file upright (EXIF orientation applied) as RGB uint8.

    The same decoder as training data; errors are ValueErrors naming the file.
    min_side: the shorter side the caller needs at least (see `draft_side`);
    None = full resolution.
    """
    try:
        return decode_image_file(path, min_side=min_side)
    except UnreadableImageError as error:
        raise ValueError(str(error)) from None


# When reduced decoding is asked for: the decoded shorter side stays at least this many times the input side.
DRAFT_MARGIN = 2


def draft_side(predictor, margin: int | None = DRAFT_MARGIN) -> int | None:
    """The shorter side a file must keep to be decoded at reduced scale for this predictor, or None (in full).

    margin: the decoded shorter side is kept at least `margin` x the model's
    input side (so the model's own INTER_AREA resize still averages margin x
    margin decoded pixels into each input pixel). Reduced-scale JPEG decoding
    is several times faster on camera-sized photos, but it is not the pixels
    the model was trained on: benchmarks/decode_throughput.py measured the
    recipe model's probabilities moving by up to 0.04 (margin 4) and 0.07
    (margin 2) on enlarged sample photos, so it is off unless asked for.
    """
    preprocessing = getattr(predictor, "preprocessing", None)
    size = getattr(preprocessing, "image_size", None)
    return int(size) * int(margin) if size and margin else None


def _decode_workers() -> int:
    # Pillow and OpenCV release the GIL while decoding: one thread per core the process may use.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(2, min(8, cores))


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
        names = ["<array>" if isinstance(s, np.ndarray) else str(s) for s in chunk]
        cautions = [image_caution(array, getattr(predictor, "preprocessing", None), f"image {name}")
                    for array, name in zip(arrays, names)]
        probs = predictor.predict_arrays(arrays)
        for name, row, caution in zip(names, probs, cautions):
            results.append(as_prediction(name, row, predictor.classes, getattr(predictor, "decision", None),
                                         caution))
    return results


def predict_files(predictor, paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = True, reduced_decode: int | None = None) -> tuple[list[Prediction], list[str]]:
    """Predictions for many image files, in batches, with a progress bar.

    Works with any predictor (`Predictor`, `OnnxPredictor`): it only calls
    `predict_arrays`. The next batch is decoded on worker threads while the
    model runs on this one. A file that cannot be read, or that the model
    cannot take, is reported (its name and why) and the others are still
    answered. reduced_decode: decode large JPEGs at reduced scale, keeping
    their shorter side at least this many times the model's input (e.g.
    `DRAFT_MARGIN`; faster on camera-sized photos, not the same pixels: see
    `draft_side`); None = every pixel, as the web app and training decode.
    """
    min_side = draft_side(predictor, reduced_decode)
    preprocessing = getattr(predictor, "preprocessing", None)

    def decode(path):
        # (path, image, its caution, None) or (path, None, None, why it is not answered)
        try:
            image = read_rgb_image(path, min_side)
            return path, image, image_caution(image, preprocessing), None   # the failure line names the file
        except Exception as error:  # noqa: BLE001 - whatever one file does, the others are still answered
            return path, None, None, f"{path}: {error}"

    batches = [list(paths[start:start + batch_size]) for start in range(0, len(paths), batch_size)]
    results: list[Prediction] = []
    failures: list[str] = []
    with ThreadPoolExecutor(_decode_workers()) as pool, tqdm(total=len(paths), unit="image", desc="predict",
                                                             disable=not progress or len(paths) < 2) as bar:
        upcoming = pool.map(decode, batches[0]) if batches else iter(())
        for index in range(len(batches)):
            decoded = list(upcoming)
            if index + 1 < len(batches):
                upcoming = pool.map(decode, batches[index + 1])   # decoded while the model runs below
            good = [(path, image, caution) for path, image, caution, error in decoded if error is None]
            failures += [error for *_, error in decoded if error is not None]
            answered, refused = _predict_batch(predictor, good)
            results += answered
            failures += refused
            bar.update(len(decoded))
    return results, failures


def _predict_batch(predictor, good: list[tuple]) -> tuple[list[Prediction], list[str]]:
    """One `predict_arrays` call; if it fails, image by image, so one bad image costs only its own answer."""
    if not good:
        return [], []
    try:
        probs = predictor.predict_arrays([image for _, image, _ in good])
        return [as_prediction(str(path), row, predictor.classes, getattr(predictor, "decision", None), caution)
                for (path, _, caution), row in zip(good, probs)], []
    except Exception as batch_error:  # noqa: BLE001 - found out below, image by image
        if len(good) == 1:
            return [], [f"{good[0][0]}: {batch_error}"]
        answered, refused = [], []
        for path, image, caution in good:
            try:
                answered.append(as_prediction(str(path), predictor.predict_arrays([image])[0], predictor.classes,
                                              getattr(predictor, "decision", None), caution))
            except Exception as error:  # noqa: BLE001
                refused.append(f"{path}: {error}")
        if not answered:   # no image goes through: the model is broken, not the files
            raise batch_error
        return answered, refused
