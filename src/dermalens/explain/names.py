"""The explanation methods by name: what the command line, the API and the web app offer.

Kept free of heavy imports so that building the command-line parser stays fast.
"""
from __future__ import annotations

METHODS = ("gradcam", "gradcam++", "ablationcam", "shap")
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "ablationcam": "Ablation-CAM (gradient-free)",
    "shap": "SHAP (partition, blur masker)",
}
DEFAULT_SHAP_MAX_EVALS = 300


def check_method(method: str) -> str:
    """The method's canonical name; ValueError naming the known ones."""
    name = str(method).strip().lower()
    if name not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; known methods: {', '.join(METHODS)}")
    return name
