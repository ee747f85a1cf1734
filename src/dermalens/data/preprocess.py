"""An image as the model's input, in numpy only: geometry, then normalisation.

`preprocess_array` is the one preprocessing of a single image for inference:
`transforms.preprocess_image` (PyTorch predictor, explanations) wraps it in a
tensor, and the ONNX predictor uses it as it is, so an .onnx model is served
without torch or albumentations. Training's augmentation pipelines end in
albumentations' `Normalize`; tests/test_onnx.py checks that both give the
same numbers.
"""
from __future__ import annotations

import numpy as np

from ..models.preprocessing import Preprocessing
from .geometry import fit_to_square

MAX_PIXEL_VALUE = 255.0


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
    tables = normalisation_tables(pre)
    return np.stack([tables[c][image[..., c]] for c in range(3)])
