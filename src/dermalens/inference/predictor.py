"""Inference with the PyTorch model: batches of arrays (evaluation) and image files (predict).

`Predictor` is the PyTorch `base.ImagePredictor`; explanations need it (they
read the model's gradients). What does not depend on torch (`Prediction`,
`read_rgb_image`, `predict_files`) lives in prediction.py and is imported
from here as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.preprocess import Preprocessing
from ..data.transforms import flip_tta_views, preprocess_image
from ..models.checkpoint import load_classifier, read_calibration
from .prediction import Prediction, predict_files, predict_sources, read_rgb_image

__all__ = ["Prediction", "Predictor", "predict_files", "predict_logits", "read_rgb_image"]


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: np.ndarray, pre: Preprocessing, batch_size: int = 128,
                   tta: bool = False, progress: bool = True, description: str = "predict") -> np.ndarray:
    """Logits for uint8 images already at the model's size, (N, S, S, 3) -> (N, C).

    With tta the logits of four flipped views are averaged.
    """
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, disable=not progress, unit="batch"):
        chunk = images[start:start + batch_size]
        batch = torch.stack([preprocess_image(img, pre) for img in chunk]).to(device)
        views = flip_tta_views(batch) if tta else [batch]
        outputs.append(torch.stack([model(v).float() for v in views]).mean(0).cpu())
    if not outputs:
        return np.zeros((0, model.config.num_classes), dtype=np.float32)
    return torch.cat(outputs).numpy()


class Predictor:
    """A trained model plus its preprocessing; `predict` takes files or RGB arrays."""

    runtime = "pytorch"  # what runs the model (OnnxPredictor: onnxruntime, openvino, openvino-bf16)

    def __init__(self, model: torch.nn.Module, metadata: dict, temperature: float = 1.0, tta: bool = False):
        self.model = model.eval()
        self.metadata = metadata
        self.preprocessing: Preprocessing = metadata["preprocessing"]
        self.classes: tuple[str, ...] = tuple(metadata["classes"])
        self.temperature = temperature
        self.tta = tta

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", tta: bool | None = None) -> "Predictor":
        """A checkpoint (.ckpt) or a model package folder (`dermalens package`, loaded without unpickling).

        tta None: as calibrated (the temperature was fitted for one predictor, with or without flips).
        """
        from ..models.package import is_package, load_package

        if is_package(path):
            model, meta = load_package(path, device)
            calibration = meta["calibration"]      # config.json carries the checkpoint's calibration record
        else:
            model, meta = load_classifier(path, device)
            calibration = read_calibration(path)   # fitted on the run's validation split by training
        return cls(model, meta, temperature=calibration["temperature"],
                   tta=calibration["tta"] if tta is None else bool(tta))

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays of any size -> probabilities (N, C)."""
        device = next(self.model.parameters()).device
        batch = torch.stack([preprocess_image(img, self.preprocessing) for img in images]).to(device)
        views = flip_tta_views(batch) if self.tta else [batch]
        logits = torch.stack([self.model(v).float() for v in views]).mean(0)
        return torch.softmax(logits / self.temperature, dim=1).cpu().numpy()

    def predict(self, sources: Iterable[str | Path | np.ndarray], batch_size: int = 16) -> list[Prediction]:
        return predict_sources(self, sources, batch_size)
