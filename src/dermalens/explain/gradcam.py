"""Grad-CAM (Selvaraju et al., ICCV 2017): channels weighted by their mean gradient."""
from __future__ import annotations

from pytorch_grad_cam import GradCAM

from .cam import CamMethod, RawMapCapture


class _GradCAM(RawMapCapture, GradCAM):
    pass


class GradCamExplainer(CamMethod):
    name = "gradcam"
    uses_gradients = True
    cam_class = _GradCAM
