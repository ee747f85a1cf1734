"""The model behind the web app: loaded once per process, one inference at a time.

Waitress answers on several threads; the model (and the explainer's hooks
on it) is shared, so every forward or backward pass holds one lock. Decoding
uploads and encoding responses happen outside it, in parallel.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from .. import __version__
from ..classes import CLASS_CODES, LESION_CLASSES, RESEARCH_DISCLAIMER, class_index
from ..inference.predictor import Prediction, Predictor

log = logging.getLogger(__name__)
EXPLAIN_MODULE = "dermalens.explain.api"


class ExplainUnavailable(RuntimeError):
    """The explanation module cannot be imported on this server (answered as 503)."""


class ModelService:
    def __init__(self, predictor: Predictor, explain_module: str | ModuleType = EXPLAIN_MODULE,
                 fast_predictor=None):
        self.predictor = predictor                      # PyTorch: explanations need its gradients
        self.fast_predictor = fast_predictor or predictor  # predictions: ONNX Runtime when exported
        self._lock = threading.Lock()          # the model: one forward/backward at a time
        self._import_lock = threading.Lock()
        self._explain_module = explain_module
        self._explain_api: ModuleType | None = None
        self._explain_error: str | None = None
        self._explainer = None
        self.info = describe_model(predictor)
        self.info["inference_engine"] = self.fast_predictor.runtime

    @classmethod
    def from_checkpoint(cls, path: str | Path, runtime: str = "auto", threads: int | None = None,
                        **kwargs) -> "ModelService":
        """Predict through ONNX Runtime when `dermalens export` left `<stem>.onnx` beside the checkpoint
        (runtime "auto"), or through the runtime named (see `load_predictor`, which also takes `threads`)."""
        from ..inference.onnx_predictor import load_predictor

        fast = load_predictor(path, runtime=runtime, threads=threads)
        pytorch = fast if isinstance(fast, Predictor) else Predictor.from_checkpoint(path)
        return cls(pytorch, fast_predictor=fast, **kwargs)

    def predict(self, image: np.ndarray, source: str) -> Prediction:
        started = time.perf_counter()
        with self._lock:
            probabilities = self.fast_predictor.predict_arrays([image])[0]
        log.debug("predicted %s in %.1f ms", source, (time.perf_counter() - started) * 1e3)
        return Prediction(source, {code: float(p) for code, p in zip(CLASS_CODES, probabilities)})

    # --- explanations -------------------------------------------------
    def explain_api(self) -> ModuleType:
        """The explanation module, imported on first use; ExplainUnavailable if it cannot be."""
        with self._import_lock:
            if self._explain_api is None and self._explain_error is None:
                module = self._explain_module
                try:
                    self._explain_api = importlib.import_module(module) if isinstance(module, str) else module
                except Exception as error:  # a missing module or a missing dependency of it
                    log.exception("explanations disabled: cannot import %s", module)
                    self._explain_error = f"cannot import {module}: {type(error).__name__}: {error}"
            if self._explain_api is None:
                raise ExplainUnavailable(f"explanations are not available on this server ({self._explain_error})")
            return self._explain_api

    def explain_methods(self) -> tuple[str, ...]:
        try:
            return tuple(self.explain_api().METHODS)
        except ExplainUnavailable:
            return ()

    def explain(self, image: np.ndarray, method: str, target_class: str | None):
        """An explanation (heatmap, overlay, ...) from the explanation API; ValueError for bad names."""
        api = self.explain_api()
        started = time.perf_counter()
        with self._lock:
            if self._explainer is None:
                self._explainer = make_explainer(api, self.predictor)
            explanation = self._explainer.explain(image, method=method, target_class=target_class)
        log.info("%s explanation in %.0f ms", method, (time.perf_counter() - started) * 1e3)
        return explanation

    def overlay_png(self, explanation) -> bytes:
        return self.explain_api().overlay_png_bytes(explanation)


def make_explainer(api: ModuleType, predictor: Predictor):
    """The API's Explainer on the predictor's model; `from_predictor` also carries its calibration."""
    from_predictor = getattr(api.Explainer, "from_predictor", None)
    if from_predictor is not None:
        return from_predictor(predictor)
    return api.Explainer(predictor.model, predictor.preprocessing)


def check_class_code(code: str | None) -> str | None:
    """A lower-case class code, None for 'the top class'; ValueError naming the known codes."""
    if code is None or not code.strip():
        return None
    return CLASS_CODES[class_index(code)]


def model_display_name(model_config: dict) -> str:
    name = model_config.get("backbone", "unknown")
    return f"{name} + CBAM" if model_config.get("cbam") else name


def describe_model(predictor: Predictor) -> dict:
    """What /api/model and the page show: the model, its classes, input and validation metrics."""
    meta = predictor.metadata
    model_config = dict(meta.get("model_config", {}))
    pre = predictor.preprocessing
    metrics = {key.removeprefix("val/"): float(value) for key, value in (meta.get("val_metrics") or {}).items()}
    checkpoint = meta.get("checkpoint")
    return {
        "name": model_display_name(model_config),
        "backbone": model_config.get("backbone"),
        "cbam": bool(model_config.get("cbam", False)),
        "version": meta.get("version"),
        "server_version": __version__,
        "checkpoint": Path(checkpoint).name if checkpoint else None,
        "epoch": meta.get("epoch"),
        "weights_source": meta.get("weights_source"),
        "input_size": pre.image_size,
        "preprocessing": pre.to_dict(),
        "temperature": predictor.temperature,
        "tta": predictor.tta,
        "val_metrics": metrics,
        "classes": [{"index": c.index, "code": c.code, "name": c.name} for c in LESION_CLASSES],
        "disclaimer": RESEARCH_DISCLAIMER,
    }
