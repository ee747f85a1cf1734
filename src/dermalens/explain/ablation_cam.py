"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): the gradient-free CAM.

A channel's weight is how much the target class score drops when that channel
of the target layer is set to zero. Only the classifier head follows our
target layer, so each ablation needs the head alone: one backbone pass per
image, then C cheap head evaluations (C = 1280 or 1536 channels; milliseconds).
pytorch-grad-cam's `AblationCAM` computes the same ablations but runs the
whole network on C copies of the image (its ablation layer then throws the
backbone's output away), and ScoreCAM also needs C full forward passes: for
EfficientNet-B3 at 300 px on a 2-core CPU that is minutes per image. EigenCAM
is cheap but ignores the class asked for. benchmarks/explain_cost.py measures
these costs.

Two deliberate differences from the paper's formula, both documented in
docs/explanations.md: the ablated value is always 0 (pytorch-grad-cam uses
`min - 1e7` when activations can be negative, as EfficientNet's SiLU makes
them, which measures a different perturbation), and the score drop is not
divided by the class score: the map is min-max normalised anyway, and a
negative logit would flip the sign of every weight.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from pytorch_grad_cam.base_cam import BaseCAM

from ..data.preprocess import Preprocessing
from .cam import CamMethod, RawMapCapture, target_layer


class HeadAblationCAM(RawMapCapture, BaseCAM):
    """Ablation-CAM for a target layer that is followed only by `head`."""

    def __init__(self, model: torch.nn.Module, target_layers: list, head: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int = 64):
        super().__init__(model, target_layers, uses_gradients=False)
        self.head = head
        self.batch_size = batch_size

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        activations = torch.as_tensor(activations, device=self.device)
        n_images, n_channels = activations.shape[:2]
        weights = np.zeros((n_images, n_channels), dtype=np.float32)
        with torch.no_grad():
            for i, (target, features) in enumerate(zip(targets, activations)):
                original = float(target(self.head(features[None]))[0])
                for start in range(0, n_channels, self.batch_size):
                    channels = torch.arange(start, min(start + self.batch_size, n_channels), device=self.device)
                    ablated = features.repeat(len(channels), 1, 1, 1)
                    ablated[torch.arange(len(channels), device=self.device), channels] = 0
                    scores = target(self.head(ablated))
                    weights[i, start:start + len(channels)] = original - scores.float().cpu().numpy()
        return weights


class AblationCamExplainer(CamMethod):
    name = "ablationcam"
    uses_gradients = False

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, **settings):
        # Only the head may follow the ablated layer (see HeadAblationCAM): always the
        # final map, whatever cam_layer the explainer was given for Grad-CAM.
        if hasattr(model, "members"):
            raise ValueError(f"Ablation-CAM ablates the channels that feed one classifier head; this model is an "
                             f"ensemble of {len(model.members)} classifiers: use gradcam, gradcam++ or shap")
        super().__init__(model, preprocessing, **{**settings, "cam_layer": "final"})

    def build_cam(self) -> BaseCAM:
        return HeadAblationCAM(self.view, [target_layer(self.view)], head=self.view.forward_head)
