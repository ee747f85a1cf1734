"""Colour constancy: the same lesion photographed under another dermatoscope's light.

Clinics differ in illumination and camera colour response, and a model that
learns one device's colour cast fails on another's. `shades_of_gray`
(Finlayson and Trezzi 2004; p = 6, as Barata et al., IEEE JBHI 2015 used it
for dermoscopy) estimates the illuminant per image as the Minkowski p-norm
mean of each channel and divides it out, so every image is shown to the
model as if lit by neutral light. It is a named policy of the preprocessing
record (`Preprocessing.color`), applied in training and at inference alike,
like the geometry policy. No library offers it as a plain numpy function
(OpenCV's xphoto white-balancers are in opencv-contrib, which we do not
install), and it is four lines.
"""
from __future__ import annotations

import numpy as np

NO_COLOR_CORRECTION = "none"
SHADES_OF_GRAY = "shades_of_gray"
COLOR_POLICIES = (NO_COLOR_CORRECTION, SHADES_OF_GRAY)
SHADES_OF_GRAY_POWER = 6


def check_color_policy(policy: str) -> str:
    if policy not in COLOR_POLICIES:
        raise ValueError(f"unknown colour policy {policy!r}; use one of {', '.join(COLOR_POLICIES)}")
    return policy


def shades_of_gray(image: np.ndarray, power: int = SHADES_OF_GRAY_POWER) -> np.ndarray:
    """RGB uint8 -> RGB uint8 under a neutral illuminant estimate (channel gains, mean gain 1 in norm)."""
    pixels = np.asarray(image, dtype=np.float32)
    illuminant = np.power(np.mean(np.power(pixels, power), axis=(0, 1)), 1.0 / power)
    norm = float(np.sqrt(np.sum(illuminant ** 2)))
    if norm <= 0:                      # a black image: nothing to correct
        return np.asarray(image, dtype=np.uint8).copy()
    gains = norm / (illuminant * np.sqrt(3.0) + 1e-6)
    return np.clip(pixels * gains, 0, 255).round().astype(np.uint8)


def apply_color_policy(image: np.ndarray, policy: str) -> np.ndarray:
    if check_color_policy(policy) == SHADES_OF_GRAY:
        return shades_of_gray(image)
    return image
