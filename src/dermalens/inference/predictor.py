"""Inference with a trained classifier: batches of arrays (evaluation) and image files (predict)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..classes import CLASS_CODES, RESEARCH_DISCLAIMER, class_name
from ..data.sources import UnreadableImageError, decode_image_file
from ..data.transforms import build_eval_transform, flip_tta_views, preprocess_image
from ..models.checkpoint import load_classifier
from ..models.classifier import Preprocessing


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: np.ndarray, pre: Preprocessing, batch_size: int = 128,
                   tta: bool = False, progress: bool = True, description: str = "predict") -> np.ndarray:
    """Logits for uint8 images already at the model's size, (N, S, S, 3) -> (N, C).

    With tta the logits of four flipped views are averaged.
    """
    model.eval()
    transform = build_eval_transform(pre)
    device = next(model.parameters()).device
    outputs = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, disable=not progress, unit="batch"):
        chunk = images[start:start + batch_size]
        batch = torch.stack([transform(image=np.ascontiguousarray(img))["image"] for img in chunk]).to(device)
        views = flip_tta_views(batch) if tta else [batch]
        outputs.append(torch.stack([model(v).float() for v in views]).mean(0).cpu())
    if not outputs:
        return np.zeros((0, len(CLASS_CODES)), dtype=np.float32)
    return torch.cat(outputs).numpy()


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Decode an image file upright (EXIF orientation applied) as RGB uint8.

    The same decoder as training data; errors are ValueErrors naming the file.
    """
    try:
        return decode_image_file(path)
    except UnreadableImageError as error:
        raise ValueError(str(error)) from None


@dataclass
class Prediction:
    source: str
    probabilities: dict[str, float]      # class code -> probability, in class order

    @property
    def top_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, k: int | None = None) -> dict:
        top = self.top_k(k or len(self.probabilities))
        return {
            "image": self.source,
            "top_class": self.top_class,
            "top_class_name": class_name(self.top_class),
            "probabilities": self.probabilities,
            "top_k": [{"class": c, "name": class_name(c), "probability": p} for c, p in top],
            "disclaimer": RESEARCH_DISCLAIMER,
        }


class Predictor:
    """A trained model plus its preprocessing; `predict` takes files or RGB arrays."""

    runtime = "pytorch"  # what runs the model (OnnxPredictor: onnxruntime, openvino, openvino-bf16)

    def __init__(self, model: torch.nn.Module, metadata: dict, temperature: float = 1.0, tta: bool = False):
        self.model = model.eval()
        self.metadata = metadata
        self.preprocessing: Preprocessing = metadata["preprocessing"]
        self.temperature = temperature
        self.tta = tta

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", tta: bool = False) -> "Predictor":
        model, meta = load_classifier(path, device)
        # Temperature fitted on validation by `evaluate`, kept beside the checkpoint.
        sidecar = Path(path).with_suffix(".calibration.json")
        temperature = float(json.loads(sidecar.read_text())["temperature"]) if sidecar.is_file() else 1.0
        return cls(model, meta, temperature=temperature, tta=tta)

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays of any size -> probabilities (N, C)."""
        device = next(self.model.parameters()).device
        batch = torch.stack([preprocess_image(img, self.preprocessing) for img in images]).to(device)
        views = flip_tta_views(batch) if self.tta else [batch]
        logits = torch.stack([self.model(v).float() for v in views]).mean(0)
        return torch.softmax(logits / self.temperature, dim=1).cpu().numpy()

    def predict(self, sources: Iterable[str | Path | np.ndarray], batch_size: int = 16) -> list[Prediction]:
        sources = list(sources)
        results: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            arrays = [s if isinstance(s, np.ndarray) else read_rgb_image(s) for s in chunk]
            probs = self.predict_arrays(arrays)
            for source, row in zip(chunk, probs):
                name = "<array>" if isinstance(source, np.ndarray) else str(source)
                results.append(Prediction(name, {c: float(p) for c, p in zip(CLASS_CODES, row)}))
        return results
