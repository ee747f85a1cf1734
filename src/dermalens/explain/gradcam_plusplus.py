"""Grad-CAM++ (Chattopadhyay et al., WACV 2018): second-order gradient weights,
better when several regions of the image support the class."""
from __future__ import annotations

from pytorch_grad_cam import GradCAMPlusPlus

from .cam import CamMethod, RawMapCapture


class _GradCAMPlusPlus(RawMapCapture, GradCAMPlusPlus):
    pass


class GradCamPlusPlusExplainer(CamMethod):
    name = "gradcam++"
    uses_gradients = True
    cam_class = _GradCAMPlusPlus
