"""The one place that defines preprocessing and augmentation.

Training, evaluation, prediction and serving all go through these functions,
with the `Preprocessing` record saved in the checkpoint (size, mean, std and
the geometry policy of `geometry.py`), so
an image is never normalised one way in training and another in serving.
One image for inference goes through `preprocess.preprocess_array` (numpy,
what the ONNX predictor uses without torch); `preprocess_image` is that
array as a tensor.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ..config import AugmentationSection
from .color import NO_COLOR_CORRECTION, apply_color_policy, check_color_policy
from .preprocess import Preprocessing, preprocess_array


class ColorPolicy(A.ImageOnlyTransform):
    """The preprocessing record's colour policy (data/color.py) as the first step of a pipeline."""

    def __init__(self, policy: str):
        super().__init__(p=1.0)
        self.policy = check_color_policy(policy)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return apply_color_policy(img, self.policy)


def _color_steps(pre: Preprocessing) -> list:
    return [] if pre.color == NO_COLOR_CORRECTION else [ColorPolicy(pre.color)]


def build_train_transform(pre: Preprocessing, aug: AugmentationSection, seed: int | None = None) -> A.Compose:
    """Augment, then normalise; input is an image already resized to pre.image_size.

    albumentations 2.x draws from the Compose's own generators, seeded from the
    OS unless given a seed (not from numpy/random's global state), so the seed
    is passed here and reset every epoch (`LesionDataModule.reseed_augmentation`).
    """
    steps: list = _color_steps(pre)
    if aug.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if aug.vflip:
        steps.append(A.VerticalFlip(p=0.5))
    if aug.rotate or aug.zoom or aug.shift:
        steps.append(A.Affine(
            rotate=(-aug.rotate, aug.rotate), scale=(1 - aug.zoom, 1 + aug.zoom),
            translate_percent=(-aug.shift, aug.shift),
            # Reflect rather than fill black: a black wedge is a shortcut the
            # model could learn (real dermoscopy vignettes are black too).
            border_mode=cv2.BORDER_REFLECT_101, p=aug.probability,
        ))
    if aug.brightness or aug.contrast:
        steps.append(A.RandomBrightnessContrast(
            brightness_limit=aug.brightness, contrast_limit=aug.contrast, p=aug.probability))
    if aug.hue or aug.saturation:
        # albumentations' limits: hue in OpenCV units (half degrees), saturation on 0-255.
        steps.append(A.HueSaturationValue(hue_shift_limit=aug.hue / 2, sat_shift_limit=aug.saturation * 255,
                                          val_shift_limit=0, p=aug.probability))
    if aug.gamma:
        steps.append(A.RandomGamma(gamma_limit=(100 * (1 - aug.gamma), 100 * (1 + aug.gamma)), p=aug.probability))
    steps += [A.Normalize(mean=pre.mean, std=pre.std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, seed=seed)


def build_eval_transform(pre: Preprocessing) -> A.Compose:
    return A.Compose([*_color_steps(pre), A.Normalize(mean=pre.mean, std=pre.std, max_pixel_value=255.0),
                      ToTensorV2()])


def preprocess_image(image: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """RGB uint8 image of any size -> normalised (3, S, S) float tensor for the model."""
    return torch.from_numpy(preprocess_array(image, pre))


def flip_tta_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """Test-time augmentation views: identity, horizontal, vertical, both flips."""
    return [batch, batch.flip(-1), batch.flip(-2), batch.flip(-1).flip(-2)]
