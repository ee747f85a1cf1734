"""The model behind the web app: loaded once per process, with separate capacity for each kind of work.

Predictions and explanations never wait for each other (capacity.py):
predictions run in the request's thread, a few at a time, on the fast
predictor (ONNX Runtime or OpenVINO when exported, else the PyTorch model);
explanations run on their own worker threads, under a time limit.

No lock is held around the model, because none is needed:
- ONNX Runtime's `InferenceSession.run` may be called from several threads
  at once; the OpenVINO session keeps its own lock (one infer request).
- `Predictor.predict_arrays` runs the PyTorch model under
  `torch.inference_mode()` in eval mode: it reads the shared weights and
  writes nothing that another call reads (CBAM only keeps its last spatial
  map, a detached tensor nothing here reads).
- The explainer never touches that model object: every method runs on a
  private module tree that shares the weights (`explain.base.private_module_tree`),
  so its hooks, its layer swaps and its backward passes never reach the
  predictor's forward passes; each method serialises its own work with its
  own lock (`explain.cam.CamMethod.lock`, the SHAP explainer's lock).

Uploads are decoded a few at a time (`decoding`, Limits.decode_slots), and
only once the request has been admitted: a busy server refuses before it
spends memory on pixels. Everything an explanation costs, the map, its
overlay and its PNG or JSON encoding, runs on the explanation worker, inside
the explanation's slot and time limit. The probabilities an explanation
shows are the ones `predict` answered for the same upload (one answer per
upload); the map is computed on one view.

Serving an .onnx file alone (no checkpoint) predicts without PyTorch and
answers explanations with 503: they need the PyTorch model's gradients.
This module imports neither torch nor the explanation code at import time.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar

import numpy as np

from .. import __version__
from ..classes import RESEARCH_DISCLAIMER, class_index, class_name
from ..models.description import model_name
from .capacity import Capacity, Limits, WorkerPool
from .uploads import DEFAULT_MAX_PIXELS, DecodedImage, decode_upload

if TYPE_CHECKING:  # imported for annotations only: predictor.py imports torch
    from ..inference.prediction import Prediction
    from ..inference.predictor import Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")
EXPLAIN_MODULE = "dermalens.explain.api"


class ExplainUnavailable(RuntimeError):
    """Explanations cannot be given by this server (answered as 503)."""


def is_onnx_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


class ModelService:
    """predictor: the PyTorch `Predictor` explanations use (None: explanations are off);
    fast_predictor: what answers predictions (default: the predictor)."""

    def __init__(self, predictor: "Predictor | None", explain_module: str | ModuleType = EXPLAIN_MODULE,
                 fast_predictor=None, limits: Limits | None = None):
        if predictor is None and fast_predictor is None:
            raise ValueError("a ModelService needs a predictor")
        self.predictor = predictor                           # PyTorch: explanations need its gradients
        self.fast_predictor = fast_predictor or predictor    # predictions: ONNX Runtime when exported
        self.limits = limits or Limits()
        self.predictions = Capacity("prediction", self.limits.predict_slots, self.limits.predict_queue,
                                    wait_seconds=self.limits.queue_timeout)
        self.explanations = WorkerPool("explanation", self.limits.explain_slots, self.limits.explain_queue,
                                       time_limit=self.limits.explain_timeout)
        # Every request that may decode can wait for a decode slot (bounded by the server's threads).
        self.decoding = Capacity("image decoding", self.limits.decode_slots, self.limits.server_threads,
                                 wait_seconds=self.limits.queue_timeout)
        self._import_lock = threading.Lock()   # one import of the explanation module, one Explainer
        self._explain_module = explain_module
        self._explain_api: ModuleType | None = None
        self._explain_error: str | None = None
        self._explainer = None
        self._usable_methods: tuple[str, ...] | None = None
        self.info = describe_model(self.predictor or self.fast_predictor)
        self.info["inference_engine"] = self.fast_predictor.runtime
        model_file = self.fast_predictor.metadata.get("onnx_model") if predictor is None else None
        self.info["model_file"] = Path(model_file).name if model_file else self.info["checkpoint"]

    @classmethod
    def from_model_file(cls, path: str | Path, runtime: str = "auto", threads: int | None = None,
                        **kwargs) -> "ModelService":
        """A checkpoint (`.ckpt`): predictions through the runtime `load_predictor` picks (for "auto":
        ONNX Runtime on the export beside it or on one cached per user), explanations through PyTorch.
        An exported model (`.onnx`) alone: predictions only, and no PyTorch at all."""
        from ..inference.load import answering_and_pytorch, load_predictor

        if is_onnx_file(path):
            return cls(None, fast_predictor=load_predictor(path, runtime=runtime, threads=threads), **kwargs)
        fast, pytorch = answering_and_pytorch(path, runtime=runtime, threads=threads)
        return cls(pytorch, fast_predictor=fast, **kwargs)

    @property
    def classes(self) -> tuple[str, ...]:
        """The served model's class codes, in output order (saved with the model)."""
        return tuple(self.fast_predictor.classes)

    def class_code(self, code: str | None) -> str | None:
        """A lower-case class code of this model, None for 'the predicted class'; ValueError naming its classes."""
        if code is None or not code.strip():
            return None
        return self.classes[class_index(code, self.classes)]

    def decode(self, data: bytes, filename: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
        """`uploads.decode_upload` in one of the few decode slots (Overloaded when none frees in time)."""
        with self.decoding.slot():
            return decode_upload(data, filename, max_pixels=max_pixels)

    def predict(self, image: np.ndarray, source: str) -> "Prediction":
        from ..inference.prediction import as_prediction, image_caution  # torch-free, unlike inference.predictor

        with self.predictions.slot():
            started = time.perf_counter()
            probabilities = self.fast_predictor.predict_arrays([image])[0]
        log.debug("predicted %s in %.1f ms", source, (time.perf_counter() - started) * 1e3)
        # The class answered is the model's decision rule's (fitted biases, melanoma operating point), as in
        # `dermalens predict`; the most probable class goes beside it.
        return as_prediction(source, probabilities, self.classes, getattr(self.fast_predictor, "decision", None),
                             image_caution(image, getattr(self.fast_predictor, "preprocessing", None)))

    # --- explanations -------------------------------------------------
    def explain_api(self) -> ModuleType:
        """The explanation module, imported on first use; ExplainUnavailable if it cannot be."""
        if self.predictor is None:
            raise ExplainUnavailable(
                f"explanations are not available on this server: it serves the exported model "
                f"{self.info['model_file']} alone, and explanations need the PyTorch checkpoint's gradients "
                f"(start `dermalens serve --model <checkpoint>.ckpt` to have both)")
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
        """The explanation methods this model can be explained with: the API's, less those its explainer refuses
        (Ablation-CAM of an ensemble), so the page, /api/model and the OpenAPI document offer no method that
        answers every request with a 400."""
        try:
            methods = tuple(self.explain_api().METHODS)
        except ExplainUnavailable:
            return ()
        if self._usable_methods is None:
            refusals = getattr(self.explainer(), "refusals", None)
            refused = refusals(methods) if refusals else {}
            self._usable_methods = tuple(method for method in methods if method not in refused)
        return self._usable_methods

    def explainer(self):
        """The API's Explainer on the PyTorch model, made once; it is safe to share between threads."""
        api = self.explain_api()
        with self._import_lock:
            if self._explainer is None:
                self._explainer = make_explainer(api, self.predictor)
            return self._explainer

    def explain(self, image: np.ndarray, method: str, target_class: str | None,
                probabilities: Mapping[str, float] | None = None, render: Callable[..., T] | None = None):
        """An explanation (heatmap, overlay, ...) from the explanation API, on an explanation worker.

        probabilities: what `predict` answered for this image; the explanation (and its caption)
        reports these. render(explanation): what is made of it (a PNG, a JSON body, a report), run
        on the same worker inside the same slot and time limit; its result is returned instead.
        ValueError for bad names; Overloaded when every explanation slot and queue place is taken;
        TimeLimitExceeded when it is not ready within `limits.explain_timeout` (see capacity.py).
        """
        explainer = self.explainer()
        options = {"probabilities": dict(probabilities)} if probabilities is not None else {}

        def work():
            started = time.perf_counter()
            explanation = explainer.explain(image, method=method, target_class=target_class, **options)
            result = render(explanation) if render is not None else explanation
            log.info("%s explanation in %.0f ms", method, (time.perf_counter() - started) * 1e3)
            return result

        return self.explanations.run(work)

    def overlay_png(self, explanation) -> bytes:
        return self.explain_api().overlay_png_bytes(explanation)

    def close(self) -> None:
        """Drop queued explanations (a stopping server); a running one finishes in its thread."""
        self.explanations.shutdown()


def make_explainer(api: ModuleType, predictor: "Predictor"):
    """The API's Explainer on the predictor's model, with its calibration and class set."""
    return api.Explainer.from_predictor(predictor)


def describe_model(predictor) -> dict:
    """What /api/model and the page show: the model, its classes, input and validation metrics.
    Works for any predictor with `metadata`, `preprocessing`, `temperature` and `tta`."""
    meta = predictor.metadata
    model_config = dict(meta.get("model_config", {}))
    pre = predictor.preprocessing
    metrics = {key.removeprefix("val/"): float(value) for key, value in (meta.get("val_metrics") or {}).items()}
    checkpoint = meta.get("checkpoint")
    return {
        "name": model_name(meta),
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
        "classes": [{"index": index, "code": code, "name": class_name(code)}
                    for index, code in enumerate(predictor.classes)],
        "disclaimer": RESEARCH_DISCLAIMER,
    }
