"""The interfaces of inference: what a predictor offers and what a runtime session must do.

Two predictors answer the same calls: `predictor.Predictor` (PyTorch: the
checkpoint's model, which explanations need) and `onnx_predictor.OnnxPredictor`
(an exported model in ONNX Runtime or OpenVINO). Commands, the web app and
`prediction.predict_files` only use what `ImagePredictor` lists, so they work
with either, and a new runtime is one more class with these members.
`OnnxPredictor` runs any `InferenceSession`: onnxruntime's own, or
`openvino_session.OpenVinoSession`, which copies the part of its interface
listed here.

Protocols are checked by structure, not inheritance (`isinstance` with
`runtime_checkable` looks for the members only). No torch here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..data.preprocess import Preprocessing
from .postprocess import DecisionRule
from .prediction import Prediction


@runtime_checkable
class ImagePredictor(Protocol):
    """A model ready to predict: RGB uint8 images of any size in, class probabilities out."""

    preprocessing: Preprocessing   # the model's own (size, mean, std, geometry)
    temperature: float             # divides the logits before the softmax (calibration)
    tta: bool                      # average the logits of four flipped views
    runtime: str                   # what runs the model: one of runtimes.RUNTIMES but "auto"
    classes: tuple[str, ...]       # the model's class codes, in output order (saved with the model)
    metadata: dict[str, Any]       # classes, preprocessing, model_config, val_metrics, provenance...
    decision: DecisionRule         # which class to report (postprocess.py): fitted rule or raw argmax

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed (N, 3, S, S) float32 batch -> logits (N, C), averaged over the TTA views."""
        ...

    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays of any size -> probabilities (N, C), in the order of `classes`."""
        ...

    def predict(self, sources: Iterable[str | Path | np.ndarray], batch_size: int = 16) -> list[Prediction]:
        """Image files or RGB uint8 arrays -> one `Prediction` each (`prediction.predict_sources`)."""
        ...


@runtime_checkable
class SessionInput(Protocol):
    name: str


@runtime_checkable
class InferenceSession(Protocol):
    """The part of `onnxruntime.InferenceSession` that `OnnxPredictor` calls.

    Positional-only, because onnxruntime names the second argument
    `input_feed` and OpenVinoSession names it `feeds`.
    """

    def get_inputs(self) -> Sequence[SessionInput]:
        ...

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray], /) -> list[np.ndarray]:
        ...
