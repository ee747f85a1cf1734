"""SHAP for images: shap's Partition explainer with a blurring image masker.

DeepExplainer cannot follow EfficientNet's blocks (SiLU, squeeze-excitation,
in-place ops), GradientExplainer needs a background set of images. The
Partition explainer only calls the model: it hides nested groups of pixels
(hidden = blurred) and spreads the change of every class probability over
them as Owen values. Every model evaluation serves all seven classes, so one
budget (`max_evals`) gives the maps of every class; the budget, not the
image size, fixes the cost (`max_evals` forward passes, batched).

The attribution is computed on the image at the model's input size: that is
the only resolution the model ever sees.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from ..data.preprocess import Preprocessing
from ..data.transforms import preprocess_image
from .base import Attribution, AttributionMethod, model_device, private_module_tree
from .names import DEFAULT_SHAP_MAX_EVALS, MIN_SHAP_MAX_EVALS

BLUR_FRACTION = 0.25   # the blur kernel's side as a fraction of the image side
BATCH_SIZE = 50        # masked images per forward pass


class ShapPartitionExplainer(AttributionMethod):
    name = "shap"
    uses_gradients = False

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, *, temperature: float = 1.0,
                 cam_layer: str = "final"):
        super().__init__(model, preprocessing, temperature=temperature, cam_layer=cam_layer)
        self.model = private_module_tree(model)   # forward passes only, in eval mode, on the shared weights
        self.max_evals = DEFAULT_SHAP_MAX_EVALS   # the budget when `attribute` is given none
        self.batch_size = BATCH_SIZE
        self._explainer = None
        # The explainer keeps per-call state, and its masker caches the blurred
        # image under id(image) -- ids are reused once an image is freed: one
        # image at a time, and the cache is cleared before each.
        self.lock = threading.Lock()

    def partition_explainer(self):
        """Built once and reused: the masker's pixel hierarchy and the explainer's
        mask matrix take seconds to build (numba compiles on first use)."""
        if self._explainer is None:
            import shap

            size = self.preprocessing.image_size
            kernel = max(3, int(round(size * BLUR_FRACTION)))
            masker = shap.maskers.Image(f"blur({kernel},{kernel})", (size, size, 3))
            self._explainer = shap.PartitionExplainer(self.predict_probabilities, masker)
        return self._explainer

    def predict_probabilities(self, images: np.ndarray) -> np.ndarray:
        """What SHAP calls: (N, S, S, 3) masked images -> (N, C) class probabilities."""
        images = np.clip(np.rint(np.asarray(images, dtype=np.float32)), 0, 255).astype(np.uint8)
        device = model_device(self.model)
        with torch.inference_mode():
            batch = torch.stack([preprocess_image(img, self.preprocessing) for img in images]).to(device)
            return torch.softmax(self.model(batch).float() / self.temperature, dim=1).cpu().numpy()

    def attribute(self, image: np.ndarray, input_tensor: torch.Tensor, class_index: int, *,
                  max_evals: int | None = None) -> Attribution:
        max_evals = int(max_evals or self.max_evals)
        if max_evals < MIN_SHAP_MAX_EVALS:
            raise ValueError(f"shap_max_evals must be at least {MIN_SHAP_MAX_EVALS}, got {max_evals}")
        with self.lock:
            explainer = self.partition_explainer()
            explainer.masker.last_xid = None
            result = explainer(image[None], max_evals=max_evals, batch_size=self.batch_size, silent=True)
            explainer.masker.last_xid = None
        # (1, S, S, 3, C) -> (C, S, S): a pixel's attribution is the sum over its colour channels.
        values = np.asarray(result.values, dtype=np.float32)[0].sum(axis=2).transpose(2, 0, 1)
        class_maps = {k: values[k] for k in range(len(values))}
        return Attribution(raw_map=values[class_index], class_maps=class_maps)
