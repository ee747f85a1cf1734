"""The explanation methods by name: what the command line, the API and the web app offer.

`REGISTRY` is the one list of methods, as pytorch-grad-cam dispatches through
one dict: adding a method is a subclass of `base.AttributionMethod` (in a file
of its own when it holds maths of its own, as Ablation-CAM and SHAP do; in
cam.py when it only binds a pytorch-grad-cam class) and one `MethodEntry`
line below; `Explainer`
builds any registered method the same way, and the command line, the web
app and the tests that are parametrised over `METHODS` pick it up.

An entry names its class as "module:Class" and the module is imported only
when the method is first used (`MethodEntry.load`), because this module must
stay free of heavy imports: the command-line parser and the web app read the
names and labels without loading torch, pytorch-grad-cam or shap. For the
same reason the display label is written here, in the entry, and not on the
class.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodEntry:
    name: str            # what --method, the API and the web app take (the class's `name`)
    label: str           # what captions, --help and the web page show
    target: str | type   # "module:Class" (a module of dermalens.explain, or a dotted module path), or the class

    def load(self) -> type:
        """The method's class, importing its module on first use."""
        if not isinstance(self.target, str):
            return self.target
        module, _, class_name = self.target.partition(":")
        module = module if "." in module else f"{__package__}.{module}"
        return getattr(importlib.import_module(module), class_name)


REGISTRY: dict[str, MethodEntry] = {entry.name: entry for entry in (
    MethodEntry("gradcam", "Grad-CAM", "cam:GradCamExplainer"),
    MethodEntry("gradcam++", "Grad-CAM++", "cam:GradCamPlusPlusExplainer"),
    MethodEntry("ablationcam", "Ablation-CAM (gradient-free)", "ablation_cam:AblationCamExplainer"),
    MethodEntry("shap", "SHAP (partition, blur masker)", "shap_partition:ShapPartitionExplainer"),
)}

# The registered methods in the order they are offered, and their labels (as read at import:
# a method registered later by a test or a plugin is explained, but not listed here).
METHODS = tuple(REGISTRY)
METHOD_LABELS = {name: entry.label for name, entry in REGISTRY.items()}
DEFAULT_SHAP_MAX_EVALS = 300
MIN_SHAP_MAX_EVALS = 10   # shap's partition explainer needs this many evaluations for a map at all


def check_method(method: str) -> str:
    """The method's canonical name; ValueError naming the known ones."""
    name = str(method).strip().lower()
    if name not in REGISTRY:
        raise ValueError(f"unknown explanation method {method!r}; known methods: {', '.join(REGISTRY)}")
    return name


def method_label(method: str) -> str:
    return REGISTRY[check_method(method)].label


# Where Grad-CAM / Grad-CAM++ look. "final": the map the head pools (7x7 at
# 224 px: one cell is 32 pixels, coarse for a small lesion). "stride16": the
# backbone's last stride-16 stage (14x14 at 224 px): finer, one step further
# from the head.
CAM_LAYERS = ("final", "stride16")
