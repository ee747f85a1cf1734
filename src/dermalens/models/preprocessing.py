"""The preprocessing record saved with every model (checkpoint, package, ONNX metadata).

A plain record without torch, so that code which only reads a model's
settings (the ONNX predictor, the web app serving an .onnx file) never loads
PyTorch. `classifier.py` re-exports it; the functions that apply it are in
data/preprocess.py (numpy) and data/transforms.py (training augmentation).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Preprocessing:
    """What an image must go through before the model: one record, saved with the model."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    geometry: str = "center_square"   # a policy of data/geometry.py: center_square | squash

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "geometry": self.geometry}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        # Records written before the policy existed belong to models trained on
        # squashed images: keep serving them the way they were trained.
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), str(d.get("geometry", "squash")))
