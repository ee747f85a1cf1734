"""The shared base of the CAM methods: pytorch-grad-cam on the map the head sees.

The target layer is `model.attention`: CBAM's output, i.e. exactly the
features that are pooled into the classifier head (`forward_features`). For a
model built without CBAM `attention` is an `nn.Identity`, whose output is the
backbone's last feature map, so the same code explains both.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..data.preprocess import Preprocessing
from .base import Attribution, AttributionMethod, private_module_tree
from .names import CAM_LAYERS


class RawMapCapture:
    """Mixin for a pytorch-grad-cam class: keeps the signed map before ReLU and upsampling.

    pytorch-grad-cam only returns the map min-max scaled and resized to the
    input; the raw one (at the target layer's grid) is what we save and what
    we upsample once, straight to the original image size.
    """

    raw_maps: np.ndarray | None = None
    _raw_layers: list

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        # One call per target layer (an ensemble has one per member, on one grid): their mean, as
        # pytorch-grad-cam averages the layers' maps itself.
        layers = getattr(self, "_raw_layers", None)
        if layers is None or self.raw_maps is None:
            self._raw_layers = layers = []
        layers.append(np.asarray(cam, dtype=np.float32))
        self.raw_maps = np.mean(layers, axis=0)
        return cam


def target_layers(model: nn.Module, layer: str = "final") -> list[nn.Module]:
    """The layers CAMs look at: one per classifier (an ensemble's members each give theirs; their maps are averaged)."""
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList):
        return [target_layer(member, layer) for member in members]
    return [target_layer(model, layer)]


def target_layer(model: nn.Module, layer: str = "final") -> nn.Module:
    """The layer CAMs look at in a LesionClassifier: `attention` (CBAM or Identity), or a finer stage."""
    if layer not in CAM_LAYERS:
        raise ValueError(f"unknown CAM layer {layer!r}; use one of {', '.join(CAM_LAYERS)}")
    attention = getattr(model, "attention", None)
    if not isinstance(attention, nn.Module):
        raise TypeError(f"{type(model).__name__} has no `attention` module to explain; expected a LesionClassifier")
    if layer == "final":
        return attention
    # timm's feature_info names each stage with its stride: take the last one at 16.
    stages = [info for info in model.backbone.feature_info if info["reduction"] == 16]
    if not stages:
        raise ValueError(f"{type(model.backbone).__name__} has no stride-16 stage")
    return model.backbone.get_submodule(stages[-1]["module"])


class CamMethod(AttributionMethod):
    """A pytorch-grad-cam method run on a private, weight-sharing view of the model.

    Hooks are registered on the view only while one explanation runs
    (`with cam_class(...) as cam`), under a lock, so one CamMethod can serve
    several threads.
    """

    cam_class: type[BaseCAM]

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, *, temperature: float = 1.0,
                 cam_layer: str = "final"):
        super().__init__(model, preprocessing, temperature=temperature, cam_layer=cam_layer)
        self.view = private_module_tree(model)
        self.lock = threading.Lock()
        target_layers(self.view, cam_layer)   # an unknown layer fails here, not at the first request

    @property
    def layer_used(self) -> str:
        return self.cam_layer   # Ablation-CAM sets "final", whatever was asked for

    def build_cam(self) -> BaseCAM:
        return self.cam_class(model=self.view, target_layers=target_layers(self.view, self.cam_layer))

    def attribute(self, image: np.ndarray, input_tensor: torch.Tensor, class_index: int, *,
                  max_evals: int | None = None) -> Attribution:
        """One pass (Grad-CAM, Grad-CAM++) or one pass plus head evaluations (Ablation-CAM):
        the cost is fixed, so `max_evals` is ignored."""
        with self.lock, torch.inference_mode(False), torch.enable_grad():
            # The input needs a gradient path even when the model's weights are frozen.
            x = input_tensor.detach().clone().requires_grad_(self.uses_gradients)
            try:
                with self.build_cam() as cam:
                    cam.raw_maps = None
                    cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
                    raw = cam.raw_maps
            finally:
                # Parameter gradients are a by-product of the backward pass; free them.
                self.view.zero_grad(set_to_none=True)
        if raw is None:
            raise RuntimeError(f"{self.name}: pytorch-grad-cam produced no map")
        return Attribution(raw_map=raw[0])


# Grad-CAM and Grad-CAM++ differ from each other only in pytorch-grad-cam's maths, which is theirs: here
# each is a binding of its class to the shared base (no file of its own holds maths of ours).
class _GradCAM(RawMapCapture, GradCAM):
    pass


class _GradCAMPlusPlus(RawMapCapture, GradCAMPlusPlus):
    pass


class GradCamExplainer(CamMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): channels weighted by their mean gradient."""

    name = "gradcam"
    uses_gradients = True
    cam_class = _GradCAM


class GradCamPlusPlusExplainer(CamMethod):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018): second-order gradient weights, better when several
    regions of the image support the class."""

    name = "gradcam++"
    uses_gradients = True
    cam_class = _GradCAMPlusPlus
