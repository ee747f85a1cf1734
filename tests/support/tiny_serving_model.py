"""The tiny checkpoint of the web-app tests, and a stand-in for the explanation module.

The checkpoint (tests/conftest.py trains it once a session) is a 64-px model
trained for two batches on generated images: its numbers mean nothing, the
plumbing around it is what the HTTP and browser tests check.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from dermalens.classes import CLASS_CODES, class_index

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_OVERRIDES = [
    "data.format=synthetic", "data.synthetic_per_class=10", "training.max_epochs=1",
    "training.limit_train_batches=2", "training.batch_size=8", "model.image_size=64", "model.pretrained=none",
    "evaluation.after_training=false", "training.progress_bar=false", "data.cache_dir=null",
]


def train_tiny_checkpoint(run_dir: Path) -> Path:
    """Trains the tiny model into run_dir; returns its best checkpoint (its last where none was chosen)."""
    from dermalens.config import load_config
    from dermalens.training.run import train

    result = train(load_config(REPO_ROOT / "configs" / "demo.yaml", TINY_MODEL_OVERRIDES), run_dir, progress=False)
    return result.best_checkpoint if result.best_checkpoint.is_file() else result.last_checkpoint


@dataclass
class FakeExplanation:
    heatmap: np.ndarray
    overlay: np.ndarray
    target_class: str
    probabilities: dict[str, float]
    method: str


def fake_explain_api() -> SimpleNamespace:
    """Stands in for dermalens.explain.api, same contract, where the server's side of it is under test."""
    from dermalens.data.transforms import preprocess_image

    methods = ("gradcam", "gradcam++", "occlusion", "shap")

    class Explainer:
        def __init__(self, model, preprocessing):
            self.model, self.preprocessing = model, preprocessing

        @classmethod
        def from_predictor(cls, predictor):
            return cls(predictor.model, predictor.preprocessing)

        def explain(self, image, method="gradcam", target_class=None, probabilities=None):
            if method not in methods:
                raise ValueError(f"unknown method {method!r}; known: {', '.join(methods)}")
            if probabilities is None:   # the served predictor's, when the server hands them in
                with torch.no_grad():
                    logits = self.model(preprocess_image(image, self.preprocessing)[None])
                probabilities = dict(zip(CLASS_CODES, torch.softmax(logits, 1)[0].tolist()))
            target = CLASS_CODES[class_index(target_class)] if target_class else max(probabilities, key=probabilities.get)
            height, width = image.shape[:2]
            yy, xx = np.mgrid[0:height, 0:width]
            heatmap = np.exp(-(((yy - height / 2) / height) ** 2 + ((xx - width / 2) / width) ** 2) * 8)
            heatmap = heatmap.astype(np.float32)
            red = np.zeros_like(image)
            red[..., 0] = 255
            overlay = (image * (1 - 0.5 * heatmap[..., None]) + red * 0.5 * heatmap[..., None]).astype(np.uint8)
            return FakeExplanation(heatmap, overlay, target, probabilities, method)

    def overlay_png_bytes(explanation) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(explanation.overlay).save(buffer, format="PNG")
        return buffer.getvalue()

    return SimpleNamespace(Explainer=Explainer, METHODS=methods, overlay_png_bytes=overlay_png_bytes)


def sample_images(sample_dir: Path) -> list[Path]:
    images = sorted(sample_dir.glob("ISIC_*.jpg"))
    assert images, f"no ISIC_*.jpg sample images in {sample_dir}"
    return images
