"""An image as the model's input, in numpy only: the `Preprocessing` record, and how it is applied.

`Preprocessing` is the record saved with every model (checkpoint, package,
ONNX metadata): input size, normalisation, the geometry policy
(data/geometry.py) and the colour policy (data/color.py). It lives here,
with the code that applies it and without torch, so that data, models and a
server running an .onnx file all read the same record (as `timm.data`
resolves its own data config).

`preprocess_array` is the one preprocessing of a single image for inference:
`transforms.preprocess_image` (PyTorch predictor, explanations) wraps it in a
tensor, and the ONNX predictor uses it as it is, so an .onnx model is served
without torch or albumentations. Training's augmentation pipelines end in
albumentations' `Normalize`; tests/test_onnx.py checks that both give the
same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .color import NO_COLOR_CORRECTION, apply_color_policy
from .geometry import fit_to_square

MAX_PIXEL_VALUE = 255.0


@dataclass
class Preprocessing:
    """What an image must go through before the model: one record, saved with the model."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    geometry: str = "center_square"        # data/geometry.py: center_square | squash
    color: str = NO_COLOR_CORRECTION        # data/color.py: none | shades_of_gray

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "geometry": self.geometry, "color": self.color}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        # Records written before the geometry policy existed belong to models trained on
        # squashed images, and before the colour policy to models without colour correction.
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), str(d.get("geometry", "squash")),
                   str(d.get("color", NO_COLOR_CORRECTION)))


def normalisation_tables(pre: Preprocessing) -> np.ndarray:
    """(3, 256) float32: the normalised value of every uint8 level, per channel.

    Computed exactly as albumentations' Normalize does for uint8 images
    (a lookup table of (level - mean * 255) * (1 / (std * 255)) in float32),
    so the numbers match training's to the last bit, not just to rounding.
    """
    mean = np.asarray(pre.mean, dtype=np.float32) * MAX_PIXEL_VALUE
    reciprocal_std = np.reciprocal(np.asarray(pre.std, dtype=np.float32) * MAX_PIXEL_VALUE)
    levels = np.arange(256, dtype=np.float32)
    return ((levels - mean[:, None]) * reciprocal_std[:, None]).astype(np.float32)


def preprocess_array(image: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """RGB uint8 image of any size -> normalised (3, S, S) float32 array for the model."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[:2] != (pre.image_size, pre.image_size):
        image = fit_to_square(image, pre.image_size, pre.geometry)
    image = apply_color_policy(image, pre.color)
    tables = normalisation_tables(pre)
    return np.stack([tables[c][image[..., c]] for c in range(3)])
