"""What every explanation method shares: the model view it works on and what it returns.

A method with maths of its own lives in its own file (`ablation_cam.py`,
`shap_partition.py`); Grad-CAM and Grad-CAM++, whose maths is
pytorch-grad-cam's, are bindings in `cam.py`. Each differs from the others
only where it truly differs, as in pytorch-grad-cam. `names.REGISTRY` lists them;
`api.Explainer` builds and calls every one of them the same way.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.preprocess import Preprocessing


@dataclass
class Attribution:
    """One method's answer for one image and one class, before it is drawn.

    `raw_map` is signed and at the method's own resolution: the target layer's
    grid for CAMs (before ReLU, normalisation and upsampling), the model's
    input grid for SHAP. `class_maps` holds one such map per class when the
    method produces all of them at no extra cost (SHAP).
    """

    raw_map: np.ndarray
    class_maps: dict[int, np.ndarray] | None = None   # output index -> map (the Explainer names the classes)


class AttributionMethod:
    """Base of all methods: built once per `Explainer`, then `attribute(...)` for one image and one class.

    Every method is built from the same settings, `cls(model, preprocessing,
    temperature=..., cam_layer=...)`, so the Explainer needs no case for any
    method. This base keeps the last three; a subclass keeps the model the way
    it runs it (`private_module_tree`: CAMs hook their copy, SHAP only runs
    forward passes), never the caller's model object itself.
    """

    name: str = ""                 # the method's name in names.REGISTRY
    uses_gradients: bool = False

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, *, temperature: float = 1.0,
                 cam_layer: str = "final"):
        self.preprocessing = preprocessing
        self.temperature = float(temperature)   # the model's calibration: softmax(logits / temperature)
        self.cam_layer = cam_layer               # names.CAM_LAYERS; methods that read no layer ignore it

    @property
    def layer_used(self) -> str | None:
        """The layer (names.CAM_LAYERS) this method's maps come from; None for a method that reads no layer.
        What a record of an explanation names: the layer asked for is not always the one used."""
        return None

    def attribute(self, image: np.ndarray, input_tensor: torch.Tensor, class_index: int, *,
                  max_evals: int | None = None) -> Attribution:
        """image: RGB uint8 at the model's input size; input_tensor: that image preprocessed, (1, 3, S, S).

        max_evals: a budget of model evaluations, for the methods whose cost it sets
        (SHAP; None: the method's default); methods of fixed cost ignore it.
        """
        raise NotImplementedError


def private_module_tree(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module objects that shares its parameters and buffers.

    CAM methods register hooks on the target layer (and pytorch-grad-cam's
    AblationCAM even swaps layers); doing that on a private tree means code
    that runs the original model at the same time (a web server's predictor)
    never passes through our hooks, and our `eval()` call leaves the original
    model's train/eval state alone. No weights are copied.

    The view's parameters are frozen aliases of the model's (the same
    storage, `requires_grad=False`): Grad-CAM's backward pass then stops at
    the activations and never accumulates into the shared `.grad` fields.
    Two threads explaining at once through two views would otherwise write
    the same gradient tensors concurrently (and one free them while the
    other accumulates), a race inside autograd that can crash the process.
    """
    shared: dict[int, torch.Tensor] = {id(b): b for b in model.buffers()}
    shared.update({id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()})
    # Tensors kept as plain attributes (CBAM's last spatial map) are shared too:
    # a non-leaf one could not be deep-copied at all.
    for module in model.modules():
        shared.update({id(v): v for v in vars(module).values() if isinstance(v, torch.Tensor)})
    view = copy.deepcopy(model, memo=shared)
    return view.eval()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
